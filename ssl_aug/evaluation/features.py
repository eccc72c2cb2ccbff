"""Feature extraction: uint8 images (N,3,H,W) -> encoder features (N,D) float32, batched, no-grad,
optional AMP, progress bar and an on-disk cache keyed by a hash of the encoder weights + the data.
The images may be an ImageStore (ssl_aug.data.image_store): then they are decoded chunk by chunk."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.data.image_store import ImageStore, image_batches
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_torch_save


def check_images(images: torch.Tensor, name: str = "images") -> None:
    """Raise SslAugError unless `images` is a uint8 (N,3,H,W) tensor (or an ImageStore standing for one)."""
    if isinstance(images, ImageStore):
        return
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        got = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, torch.Tensor) else type(images).__name__)
        raise SslAugError(f"{name} must be a uint8 tensor of shape (N, 3, H, W), got {got}")


def _mean_std(mean: Sequence[float], std: Sequence[float], device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.as_tensor(mean, dtype=torch.float32).flatten()
    s = torch.as_tensor(std, dtype=torch.float32).flatten()
    if m.numel() != 3 or s.numel() != 3:
        raise SslAugError(f"mean/std must have 3 values (RGB), got mean={list(mean)} std={list(std)}")
    if (m.abs() > 1).any() or (s <= 0).any() or (s > 1).any():
        raise SslAugError(f"mean/std are in [0, 1] pixel units with std > 0, got mean={m.tolist()} std={s.tolist()}")
    return m.view(1, 3, 1, 1).to(device), s.view(1, 3, 1, 1).to(device)


def normalize_images(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float32 (N,3,H,W) = (x/255 - mean) / std."""
    m, s = _mean_std(mean, std, images_uint8.device)
    return (images_uint8.float().div_(255.0) - m) / s


def module_device(module: nn.Module) -> torch.device:
    """Device of the first parameter/buffer of `module` (CPU if it has none)."""
    for t in list(module.parameters()) + list(module.buffers()):
        return t.device
    return torch.device("cpu")


def encoder_hash(encoder: nn.Module) -> str:
    """sha256 over the class name and every state_dict tensor (name, dtype, shape, bytes)."""
    h = hashlib.sha256(type(encoder).__qualname__.encode())
    for name, t in sorted(encoder.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tensor_hash(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes."""
    t = t.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}".encode())
    h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def _run(encoder: nn.Module, n: int, get_batch, batch_size: int, amp: bool, normalize: bool, progress: bool,
         desc: str = "features") -> torch.Tensor:
    """Shared loop: get_batch(start, stop, device) -> normalised float batch; returns (n, D) float32 on CPU.
    Eval mode during the loop, the encoder's previous mode restored afterwards."""
    from tqdm.auto import tqdm

    device = module_device(encoder)
    was_training = encoder.training
    encoder.eval()
    out = []
    try:
        for i in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            x = get_batch(i, min(i + batch_size, n), device)
            with torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                                enabled=amp):
                f = encoder(x)
            f = f.float().flatten(1)
            out.append((F.normalize(f, dim=1) if normalize else f).cpu())
    finally:
        encoder.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, 0)


def encode(encoder: nn.Module, images_float: torch.Tensor, batch_size: int = 512, amp: bool = False,
           normalize: bool = True, progress: bool = False) -> torch.Tensor:
    """Already-normalised float images (N,3,H,W) -> features (N,D) float32 on CPU (L2-normalised unless
    normalize=False). Used for augmented / test-time views."""
    return _run(encoder, images_float.shape[0], lambda i, j, dev: images_float[i:j].to(dev, non_blocking=True),
                batch_size, amp, normalize, progress)


def extract_features(encoder: nn.Module, images_uint8: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                     batch_size: int = 512, device=None, amp: bool = False, progress: bool = True,
                     normalize: bool = True, cache_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """Encoder features of uint8 images.

    images_uint8: (N,3,H,W) uint8 (any device) or an ImageStore; mean/std: RGB in [0,1] units.
    Returns (N,D) float32 on CPU, L2-normalised per row unless normalize=False.
    device: where to run the encoder (default: where its parameters are; the encoder is moved there).
    amp: autocast (bfloat16 on CPU, float16 on CUDA). For projector features pass a module that
    includes the projector. cache_dir: if given, features are stored in / loaded from
    `cache_dir/features-<hash>.pt`, the hash covering the encoder's state_dict, the images, mean/std
    and the `normalize`/`amp` flags.
    """
    check_images(images_uint8, "images_uint8")
    if batch_size < 1:
        raise SslAugError(f"batch_size must be >= 1, got {batch_size}")
    _mean_std(mean, std, "cpu")
    if device is not None:
        encoder = encoder.to(device)
    cache_path = None
    if cache_dir is not None:
        data_key = images_uint8.fingerprint() if isinstance(images_uint8, ImageStore) else tensor_hash(images_uint8)
        key = hashlib.sha256("|".join([encoder_hash(encoder), data_key, str(list(map(float, mean))),
                                       str(list(map(float, std))), str(normalize), str(amp)]).encode()).hexdigest()
        cache_path = Path(cache_dir) / f"features-{key[:32]}.pt"
        if cache_path.exists():
            return torch.load(cache_path, map_location="cpu", weights_only=True)
    batches = image_batches(images_uint8, batch_size)  # an ImageStore decodes the next batch while this one runs

    def get_batch(i, j, dev):
        return normalize_images(next(batches).to(dev, non_blocking=True), mean, std)

    feats = _run(encoder, images_uint8.shape[0], get_batch, batch_size, amp, normalize, progress)
    if cache_path is not None:
        atomic_torch_save(feats, cache_path)
    return feats
