"""Which part of a fine-tuned encoder trains: all of it, its last resolution stage, or only the head; and
BatchNorm layers that stay frozen (statistics and affine parameters kept as pretrained)."""

from __future__ import annotations

from torch import nn

__all__ = ["TRAINABLE", "last_stage_modules", "set_trainable", "train_mode"]

TRAINABLE = ("all", "last_stage", "head")


def _downsamples(m: nn.Module) -> bool:
    if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
        return True
    return isinstance(m, nn.Conv2d) and max(m.stride) > 1


def last_stage_modules(encoder: nn.Module) -> list[nn.Module]:
    """The last resolution stage: the smallest named container (below the root) holding the last
    downsampling layer that is not the whole network (ResNet: layer4), else every module registered
    after that layer (small_cnn: the last conv + BN). No downsampling layer: the whole encoder."""
    named = list(encoder.named_modules())
    last = max((i for i, (_, m) in enumerate(named) if _downsamples(m)), default=None)
    if last is None:
        return [encoder]
    all_params = {id(p) for p in encoder.parameters()}
    parts = named[last][0].split(".")
    for k in range(1, len(parts)):
        container = encoder.get_submodule(".".join(parts[:k]))
        params = {id(p) for p in container.parameters()}
        if params and params != all_params:
            return [container]
    return [m for _, m in named[last + 1:] if not list(m.children())]


def set_trainable(model: nn.Module, cfg) -> list[nn.Parameter]:
    if cfg.trainable == "all":
        modules = [model.encoder]
    elif cfg.trainable == "last_stage":
        modules = last_stage_modules(model.encoder)
    else:
        modules = []
    model.encoder.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)
    if cfg.freeze_bn:
        for m in model.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._NormBase):
                m.requires_grad_(False)
    return [p for p in model.parameters() if p.requires_grad]


def train_mode(model: nn.Module, cfg) -> None:
    """BatchNorm layers that are frozen (freeze_bn, or outside the trained part) stay in eval mode."""
    model.train()
    for m in model.encoder.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and (cfg.freeze_bn or not any(
                p.requires_grad for p in m.parameters(recurse=False))):
            m.eval()
