"""A first-in-first-out queue of embeddings (MoCo's negatives, NNCLR's support set), one per rank.

Each rank keeps its own ``length // world_size`` rows and pushes only its own rows, so no
communication is needed; the method must declare ``rank_local_buffers = True`` so DDP does not
overwrite it with rank 0's copy. The queue starts as random unit vectors (as MoCo's reference code
does); ``queue`` and ``pointer`` are buffers, so checkpoints resume it exactly.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ssl_aug import distributed as dist_utils
from ssl_aug.errors import SslAugError

__all__ = ["EmbeddingQueue"]


class EmbeddingQueue(nn.Module):
    """Ring buffer of unit vectors: ``queue`` (L, D) with L = length // world_size, ``pointer`` () long.

    push_(rows (n, D)) writes the L2-normalised rows at positions pointer .. pointer + n - 1 (mod L) and
    advances the pointer, on the device, without a host read. ``name`` is the recipe key used in errors.
    """

    def __init__(self, length: int, dim: int, name: str = "queue_length"):
        super().__init__()
        world = dist_utils.world_size()
        if not (isinstance(length, int) and length >= world):
            raise SslAugError(f"{name}={length!r} is not allowed: use an integer >= the number of ranks "
                              f"({world}) and >= the batch size per rank")
        self.name = name
        self.length = length // world
        self.register_buffer("queue", F.normalize(torch.randn(self.length, dim), dim=1))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def push_(self, rows: torch.Tensor) -> None:
        """Enqueue this rank's rows (n, D), n <= L (the oldest rows are overwritten)."""
        n = rows.shape[0]
        if n > self.length:
            world = dist_utils.world_size()
            raise SslAugError(f"{self.name}={self.length * world} is not allowed with {n} images per rank "
                              f"and {world} rank(s): use at least batch size x number of views")
        index = (self.pointer + torch.arange(n, device=rows.device)) % self.length
        self.queue.index_copy_(0, index, F.normalize(rows.detach().to(self.queue.dtype), dim=1))
        self.pointer.copy_((self.pointer + n) % self.length)
