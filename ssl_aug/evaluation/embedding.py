"""2-D maps of encoder features coloured by class: UMAP (umap-learn, the `viz` extra), else t-SNE
(scikit-learn) when installed, else a one-line error naming the extra."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, register_evaluator

EXTRA = "pip install 'ssl_aug[viz]' (umap-learn)"
METHODS = ("auto", "umap", "tsne")


def _available(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def embed_2d(features: torch.Tensor, method: str = "auto", seed: int = 0, neighbors: int = 15):
    """features (N, D) -> (coords numpy (N, 2) float32, the method used: "umap" | "tsne"). method "auto":
    UMAP if umap-learn is installed, else t-SNE from scikit-learn; cosine metric for UMAP."""
    import numpy as np

    if method not in METHODS:
        raise SslAugError(f"embedding method {method!r} is not known; choose one of: {', '.join(METHODS)}")
    x = np.ascontiguousarray(torch.as_tensor(features).float().cpu().numpy())
    if x.ndim != 2 or x.shape[0] < 4:
        raise SslAugError(f"a 2-D map needs features of shape (N >= 4, D), got {tuple(x.shape)}")
    use_umap = method == "umap" or (method == "auto" and _available("umap"))
    if use_umap:
        if not _available("umap"):
            raise SslAugError(f"the UMAP map needs umap-learn: {EXTRA}")
        import umap

        reducer = umap.UMAP(n_neighbors=min(neighbors, x.shape[0] - 1), metric="cosine", random_state=seed,
                            n_jobs=1)
        return reducer.fit_transform(x).astype(np.float32), "umap"
    if not _available("sklearn"):
        raise SslAugError(f"the embedding map needs umap-learn (or scikit-learn for t-SNE): {EXTRA}")
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, perplexity=min(30.0, (x.shape[0] - 1) / 3), init="pca", random_state=seed)
    return tsne.fit_transform(x).astype(np.float32), "tsne"


def plot_embedding(coords, labels, path, classes=None, title: str = "") -> Path | None:
    """Scatter of coords (N, 2) coloured by labels (N,) with a class legend, written atomically as PNG;
    None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ssl_aug.io import atomic_write

    labels = torch.as_tensor(labels).cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
    for c in sorted(set(labels.tolist())):
        m = labels == c
        name = classes[c] if classes is not None and c < len(classes) else str(c)
        ax.scatter(coords[m, 0], coords[m, 1], s=4, color=cmap(c % cmap.N), label=name, alpha=0.8, linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    if len(set(labels.tolist())) <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    out = atomic_write(Path(path), lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"), what="plot")
    plt.close(fig)
    return out


@register_evaluator("umap")
class UmapEvaluator(Evaluator):
    """UMAP (t-SNE without umap-learn) of the test features coloured by class, written to <run>/umap.png."""

    @dataclass
    class Config(EvaluatorConfig):
        images: int = 2000      # test images mapped (a seeded class-balanced subset; 0 = all)
        method: str = "auto"    # auto (UMAP, else t-SNE) | umap | tsne
        file: str = "umap.png"

        def __post_init__(self):
            if self.method not in METHODS:
                raise SslAugError(f"recipe key 'eval.umap.method' = {self.method!r} is not allowed; choose one of: "
                                  f"{', '.join(METHODS)}")
            if self.method == "umap" and not _available("umap"):
                raise SslAugError(f"eval.umap with method = 'umap' needs umap-learn: {EXTRA}")
            if self.method != "umap" and not (_available("umap") or _available("sklearn")):
                raise SslAugError(f"eval.umap needs umap-learn (or scikit-learn for t-SNE): {EXTRA}")

    def run(self, ctx) -> dict:
        from ssl_aug.evaluation.robustness import test_rows

        rows = test_rows(ctx.test[1], self.config.images, ctx.seed)
        coords, method = embed_2d(ctx.features("test")[rows], self.config.method, ctx.seed)
        path = None
        if ctx.run_dir is not None:
            title = f"{method.upper() if method == 'umap' else 't-SNE'} of {len(coords)} test features"
            written = plot_embedding(coords, ctx.test[1][rows], Path(ctx.run_dir) / self.config.file, ctx.classes,
                                     title)
            path = written.name if written is not None else None
        return {"method": method, "images": int(len(coords)), "path": path}

    def section(self, r: dict) -> str:
        where = f" written to {r['path']}" if r.get("path") else " (no run folder: not written)"
        return f"Embedding map: {r['method']} of {r['images']} test features, coloured by class,{where}."

    def flat(self, r: dict) -> dict:
        return {}
