"""Turn what users hold into an encoder's input batch: PIL images, uint8 or float tensors, numpy arrays.

`image_batch(images, size=None)` -> float (N, 3, H, W) in [0, 1]. Accepted:

- a PIL image or a list of PIL images (any mode: converted to RGB). With `size`, each is resized so its
  shorter side is `size` (bicubic) and centre-cropped to `size` x `size`, so images of any shape stack;
  without `size` they must share one shape.
- a tensor (3, H, W) or (N, 3, H, W): uint8 in [0, 255] (divided by 255) or float in [0, 1].
- a numpy array (H, W, 3) or (N, H, W, 3) uint8 (channels last, as PIL and OpenCV give them).

Float input outside [0, 1] (0-255 floats, already-normalised images) is refused with one line: it would
give wrong features silently.
"""

from __future__ import annotations

import torch

from ssl_aug.errors import SslAugError

__all__ = ["image_batch", "FLOAT_TOLERANCE"]

FLOAT_TOLERANCE = 0.01  # float input may overshoot [0, 1] this much (bicubic resampling); more is refused


def _is_pil(obj) -> bool:
    return type(obj).__module__.startswith("PIL.") and hasattr(obj, "convert")


def _pil_to_tensor(image, size: int | None) -> torch.Tensor:
    """One PIL image -> uint8 (3, H, W); with `size`: shorter side resized to `size`, centre crop."""
    import numpy as np

    image = image.convert("RGB")
    if size is not None:
        from PIL import Image

        w, h = image.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            image = image.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        image = image.crop((left, top, left + size, top + size))
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).contiguous()


def _check_float_range(x: torch.Tensor) -> None:
    if x.numel() == 0:
        return
    low, high = float(x.min()), float(x.max())
    if low < -FLOAT_TOLERANCE or high > 1 + FLOAT_TOLERANCE:
        raise SslAugError(f"encoder float input must be in [0, 1], got values from {low:.4g} to {high:.4g}: "
                          "divide 0-255 floats by 255 (do not normalise: the encoder does), or pass uint8 images")


def image_batch(images, size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """PIL image(s), a uint8 / float [0, 1] tensor (3, H, W) or (N, 3, H, W), or a uint8 numpy array
    (H, W, 3) / (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] (see the module docstring)."""
    if _is_pil(images):
        images = [images]
    if isinstance(images, (list, tuple)):
        if not images:
            raise SslAugError("encoder got an empty list of images; give at least one image")
        if not all(_is_pil(im) for im in images):
            raise SslAugError("a list given to the encoder must hold PIL images; stack tensors into (N, 3, H, W)")
        tensors = [_pil_to_tensor(im, size) for im in images]
        if len({tuple(t.shape) for t in tensors}) > 1:
            raise SslAugError("the PIL images have different sizes "
                              f"({sorted({tuple(t.shape[1:]) for t in tensors})}); give size= to resize them")
        images = torch.stack(tensors)
    elif type(images).__module__ == "numpy":
        if images.dtype.name != "uint8" or images.ndim not in (3, 4) or images.shape[-1] != 3:
            raise SslAugError(f"numpy images must be uint8 (H, W, 3) or (N, H, W, 3), got {images.dtype.name} "
                              f"{tuple(images.shape)}")
        images = torch.from_numpy(images.copy()).movedim(-1, -3)
    if not isinstance(images, torch.Tensor):
        raise SslAugError(f"encoder input must be PIL images, a tensor or a numpy array, got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4 or images.size(1) != 3:
        raise SslAugError("encoder input must be images (N, 3, H, W) or (3, H, W), got shape "
                          + str(list(images.shape)))
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    if not images.is_floating_point():
        raise SslAugError(f"encoder input must be uint8 [0, 255] or float [0, 1] images, got {images.dtype}")
    _check_float_range(images)
    return images.to(dtype)
