"""DINO's projection head: MLP -> L2-normalised bottleneck -> weight-normalised linear layer of K outputs."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug.errors import SslAugError

__all__ = ["DINOHead"]


class DINOHead(nn.Module):
    """(N, in_dim) -> (N, out_dim) logits, as DINO's reference head.

    ``mlp``: num_layers Linear layers with GELU between them (hidden_dim wide, ending at bottleneck_dim);
    its output is L2-normalised, then ``last_layer`` maps it to out_dim with weight normalisation:
    W = g * V / |V| per output row. ``norm_last_layer`` (the reference default) fixes g = 1 (no gradient).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 num_layers: int = 3, norm_last_layer: bool = True):
        super().__init__()
        if num_layers < 1:
            raise SslAugError(f"head_layers={num_layers!r} is not allowed: use an integer >= 1")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, self.last_g * F.normalize(self.last_layer.weight, dim=1))
