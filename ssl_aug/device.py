"""Recipe device names -> torch devices."""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError

__all__ = ["resolve_device"]


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available else cpu; "cuda[:i]" refused in one line when CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SslAugError(f"device {name!r} was asked for but CUDA is not available; use device=cpu or auto")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SslAugError(f"device {name!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
