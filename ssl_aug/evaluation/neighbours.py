"""Nearest-neighbour grids: query images and their top-k neighbours in the kNN bank (cosine similarity of
L2-normalised features), wrong-class neighbours framed in red. Drawn with PIL."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ssl_aug.data.image_store import pixels
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, register_evaluator

WRONG, QUERY, PAD, CELL = (220, 30, 30), (40, 90, 220), 3, 48


def nearest(bank_features: torch.Tensor, query_features: torch.Tensor, k: int = 8):
    """(sims (M, k), bank ids (M, k)) of the k most cosine-similar bank rows per query."""
    b = F.normalize(torch.as_tensor(bank_features).float(), dim=1)
    q = F.normalize(torch.as_tensor(query_features).float(), dim=1)
    return torch.topk(q @ b.T, min(k, b.shape[0]), dim=1)


def pick_queries(labels: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n query rows, classes taken in turn (one image per class before any class repeats), seeded."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    pools = {int(c): (labels == c).nonzero().squeeze(1) for c in labels.unique()}
    pools = {c: p[torch.randperm(len(p), generator=g)] for c, p in pools.items()}
    out, depth = [], 0
    while len(out) < n and any(depth < len(p) for p in pools.values()):
        out += [int(p[depth]) for p in pools.values() if depth < len(p)]
        depth += 1
    return torch.tensor(out[:n], dtype=torch.long)


def _cell(img_uint8: torch.Tensor, frame=None):
    from PIL import Image, ImageDraw

    im = Image.fromarray(img_uint8.permute(1, 2, 0).cpu().numpy(), "RGB").resize((CELL, CELL), Image.NEAREST)
    if frame is not None:
        ImageDraw.Draw(im).rectangle([0, 0, CELL - 1, CELL - 1], outline=frame, width=PAD)
    return im


def neighbour_grid(bank_images, bank_labels, bank_features, query_images, query_labels, query_features,
                   n_queries: int = 8, k: int = 8, seed: int = 0, classes=None):
    """PIL image: one row per query (query framed blue, then its k nearest bank images, wrong-class ones framed
    red, each labelled with its cosine similarity). Returns (image, fraction of neighbours of the query's class)."""
    from PIL import Image, ImageDraw

    rows = pick_queries(query_labels, n_queries, seed)
    sims, ids = nearest(bank_features, torch.as_tensor(query_features)[rows], k)
    label_w, gap, text_h = 90, 10, 12
    width = label_w + CELL + gap + ids.shape[1] * (CELL + 2)
    grid = Image.new("RGB", (width, len(rows) * (CELL + text_h + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    bank_labels, query_labels = torch.as_tensor(bank_labels), torch.as_tensor(query_labels)
    query_cells = pixels(query_images[rows])  # only the images drawn are decoded (an ImageStore decodes on demand)
    bank_cells = pixels(bank_images[ids.reshape(-1)]).unflatten(0, tuple(ids.shape))
    same = 0
    for r, (q, row_ids, row_sims) in enumerate(zip(rows.tolist(), ids, sims)):
        y = 2 + r * (CELL + text_h + 4)
        qy = int(query_labels[q])
        draw.text((2, y + CELL // 2 - 6), str(classes[qy] if classes else qy)[:14], fill="black")
        grid.paste(_cell(query_cells[r], QUERY), (label_w, y))
        for j, (b, s) in enumerate(zip(row_ids.tolist(), row_sims.tolist())):
            ok = int(bank_labels[b]) == qy
            same += ok
            x = label_w + CELL + gap + j * (CELL + 2)
            grid.paste(_cell(bank_cells[r, j], None if ok else WRONG), (x, y))
            draw.text((x + 2, y + CELL), f"{s:.2f}", fill="black" if ok else WRONG)
    return grid, same / max(1, ids.numel())


def write_neighbour_grid(path, *args, **kw) -> tuple[Path, float]:
    """neighbour_grid(*args, **kw) written atomically as PNG; returns (path, same-class fraction)."""
    from ssl_aug.io import atomic_write

    grid, purity = neighbour_grid(*args, **kw)
    return atomic_write(Path(path), lambda f: grid.save(f, format="PNG"), what="image"), purity


@register_evaluator("neighbours")
class NeighboursEvaluator(Evaluator):
    """Nearest-neighbour grid: queries and their top-k bank neighbours (wrong class framed red) in
    <run>/neighbours.png, and the fraction of those neighbours that share the query's class."""

    @dataclass
    class Config(EvaluatorConfig):
        queries: int = 8
        k: int = 8
        file: str = "neighbours.png"

        def __post_init__(self):
            if self.queries < 1 or self.k < 1:
                raise SslAugError(f"eval.neighbours needs queries >= 1 and k >= 1, got {self.queries} and {self.k}")

    def run(self, ctx) -> dict:
        c = self.config
        args = (ctx.train[0], ctx.train[1], ctx.features("train"), ctx.test[0], ctx.test[1], ctx.features("test"))
        kw = dict(n_queries=c.queries, k=c.k, seed=ctx.seed, classes=ctx.classes)
        if ctx.run_dir is None:
            return {"path": None, "same_class": neighbour_grid(*args, **kw)[1], "queries": c.queries, "k": c.k}
        path, purity = write_neighbour_grid(Path(ctx.run_dir) / c.file, *args, **kw)
        return {"path": path.name, "same_class": purity, "queries": c.queries, "k": c.k}

    def section(self, r: dict) -> str:
        where = f" ({r['path']})" if r.get("path") else ""
        return (f"Nearest neighbours{where}: {100 * r['same_class']:.1f}% of the top-{r['k']} bank neighbours of "
                f"{r['queries']} queries share the query's class.")

    def flat(self, r: dict) -> dict:
        return {"neighbours_same_class": r["same_class"]}
