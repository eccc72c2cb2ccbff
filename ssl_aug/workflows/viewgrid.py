"""See the augmentation before training: an image grid of a batch's views.

Row 0 shows the source images, then one row per view (global crops first, then local crops), columns
are images. Views are drawn un-normalised ([0, 1], the `MultiView.apply(normalize=False)` output) and
upscaled (nearest) to one cell size. Built with PIL (no matplotlib needed).
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["view_grid", "write_view_grid"]

LABEL_WIDTH = 120
PAD = 2


def _cell(img: torch.Tensor, size: int):
    """(3, h, w) float [0, 1] -> PIL image size x size (nearest, so pixels stay visible)."""
    from PIL import Image

    arr = (img.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr, "RGB").resize((size, size), Image.NEAREST)


def view_grid(images: torch.Tensor, views: list[torch.Tensor], labels: list[str], title: str = ""):
    """PIL image: images (N, 3, H, W) uint8 in row 0, then views[i] (N, 3, s, s) float [0, 1] in row i+1,
    each row named by labels[i] ("source" for row 0)."""
    from PIL import Image, ImageDraw

    n = images.shape[0]
    cell = max(64, images.shape[-1], *(v.shape[-1] for v in views))
    rows = [images.float() / 255.0] + list(views)
    names = ["source"] + list(labels)
    top = 18 if title else 0
    grid = Image.new("RGB", (LABEL_WIDTH + n * (cell + PAD), top + len(rows) * (cell + PAD)), "white")
    draw = ImageDraw.Draw(grid)
    if title:
        draw.text((4, 3), title, fill="black")
    for r, (row, name) in enumerate(zip(rows, names)):
        y = top + r * (cell + PAD)
        draw.text((4, y + cell // 2 - 6), name, fill="black")
        for c in range(n):
            grid.paste(_cell(row[c], cell), (LABEL_WIDTH + c * (cell + PAD), y))
    return grid


def write_view_grid(cfg, path, n: int = 8, seed: int = 0, data=None) -> Path:
    """Draw `n` class-balanced images of the recipe's training data (or `data`, an ImageDataset) and their
    views (the recipe's [augment], seeded by `seed`) into the PNG `path` (written atomically)."""
    from ssl_aug.augment.recipe import views_of
    from ssl_aug.data import balanced_subset, load_dataset
    from ssl_aug.data.image_store import pixels
    from ssl_aug.errors import SslAugError
    from ssl_aug.io import atomic_write

    if n < 1:
        raise SslAugError(f"--images {n} is not allowed: draw at least 1 image")
    if data is None:
        data = load_dataset(cfg.data.name, split=cfg.data.split, root=cfg.data.root, download=cfg.data.download,
                            **cfg.data.options)
    if n > len(data.labels):
        raise SslAugError(f"--images {n} is larger than the data set ({len(data.labels)} images)")
    labelled = bool((data.labels >= 0).all())
    idx = balanced_subset(data.labels, n, seed) if labelled else torch.randperm(len(data.labels))[:n]
    images = pixels(data.images[idx])
    parsed = views_of(cfg)
    multiview = parsed.build()
    generator = torch.Generator().manual_seed(seed)
    views = multiview.apply(images, multiview.sample(images, generator), normalize=False)
    specs, counts = parsed.specs, parsed.counts
    kinds = ["global", "local"] + [f"family {i}" for i in range(2, len(specs))]
    labels = [f"{kinds[f]} view {k + 1} ({specs[f].size}px)" for f, count in enumerate(counts) for k in range(count)]
    title = f"{cfg.data.name}: {len(views)} views of {n} images ({images.shape[-1]}px source), seed {seed}"
    grid = view_grid(images, views, labels, title)
    out = Path(path)
    if out.is_dir():
        raise SslAugError(f"--out {out} is a folder; give a PNG file path such as {out / 'views.png'}")
    return atomic_write(out, lambda f: grid.save(f, format="PNG"), what="image")
