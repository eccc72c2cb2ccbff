"""What size the images of a class-per-folder tree really are, read from file headers (no decoding):
the default packing size of an image folder and the facts behind the small-image warnings."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")  # what an image folder counts as an image

__all__ = ["ImageSizes", "sample_image_sizes", "AUTO_SIZE_MAX"]

AUTO_SIZE_MAX = 256  # an image folder packed at its own size is packed at most this large (data.options.size)
SAMPLE = 2000  # headers read per tree (files chosen with a fixed seed when there are more)


@dataclass
class ImageSizes:
    """Shorter sides (px) of `sampled` images out of `total` in the tree; `smallest`: (w, h, relative path)."""

    sides: list[int]
    total: int
    smallest: tuple[int, int, str] | None

    @property
    def sampled(self) -> int:
        return len(self.sides)

    @property
    def median(self) -> int:
        return sorted(self.sides)[len(self.sides) // 2] if self.sides else 0

    def below(self, side: int) -> int:
        """How many sampled images have a shorter side under `side` px."""
        return sum(s < side for s in self.sides)

    def auto_size(self) -> int:
        """The packing size when data.options.size is not given: the median shorter side, at most AUTO_SIZE_MAX."""
        return max(1, min(self.median, AUTO_SIZE_MAX))


def sample_image_sizes(tree: str | Path, limit: int = SAMPLE) -> ImageSizes:
    """Header-only sizes of up to `limit` images of SRC/<class>/**/<image> (unreadable files are left out)."""
    from PIL import Image


    tree = Path(tree)
    files = sorted(os.path.join(d, f) for d, _, names in os.walk(tree) for f in names
                   if f.lower().endswith(IMAGE_EXTS) and Path(d) != tree)
    chosen = files if len(files) <= limit else random.Random(0).sample(files, limit)
    sides, smallest = [], None
    for path in chosen:
        try:
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # corrupt files are counted and skipped by the packer, not here
            continue
        sides.append(min(w, h))
        if smallest is None or min(w, h) < min(smallest[:2]):
            smallest = (w, h, os.path.relpath(path, tree))
    return ImageSizes(sides, len(files), smallest)
