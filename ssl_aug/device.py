"""Recipe device names -> torch devices."""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError

__all__ = ["resolve_device", "upload"]


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


def upload(t: torch.Tensor, device) -> torch.Tensor:
    """A host tensor on `device` without stalling it: pinned and copied non-blocking on CUDA (the pinned
    block is not reused before the copy ran), non-blocking elsewhere; already there -> itself."""
    device = torch.device(device)
    if t.device == device or (t.device.type == device.type and device.index is None):
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)
