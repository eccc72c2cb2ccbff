"""The sections of a run's report: recipe, training views, curves, evaluation tables with floors, invariance
heat map, corruption robustness, embedding map and nearest neighbours. Figures the run folder already has
are embedded as they are; missing ones are drawn (and saved into the run folder) when `compute` is on."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.report.html import esc, img, markdown

FIGURES = ("views.png", "curves.png", "umap.png", "neighbours.png")


def is_run(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / f).exists() for f in
                                                      ("eval.json", "metrics.jsonl", "checkpoints"))


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _figure(path: Path, alt: str, note: str = "") -> str:
    if not path.is_file():
        return ""
    return img(path, alt) + (f'<p class="note">{esc(note)}</p>' if note else "")


def _floors(run_dir: Path, cfg, compute: bool) -> dict:
    for folder in (run_dir, run_dir.parent, run_dir.parent.parent):
        stored = _json(folder / "floors.json")
        if stored.get("floors"):
            return stored["floors"]
    if not compute or cfg is None:
        return {}
    from ssl_aug.evaluation.floors import floors_for_config

    try:
        return floors_for_config(cfg, cache_dir=run_dir)
    except (SslAugError, OSError, RuntimeError, ValueError):
        return {}


def _metrics_table(flat: dict, floors: dict) -> str:
    rows = [(k, v) for k, v in flat.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and not k.startswith(("invariance_", "robustness_knn_")) or k in ("robustness_knn_mean", "robustness_knn_mce")]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    text = "\n".join(lines)
    if floors:
        text += "\n\nFloors every accuracy should be read against (kNN top-1 with the recipe's settings):\n\n"
        text += "| floor | kNN top-1 % |\n|---|---|\n" + "\n".join(f"| {k} | {100 * v:.2f} |" for k, v in floors.items())
    return markdown(text)


def _invariance(flat: dict, name: str, tmp: Path) -> str:
    from ssl_aug.evaluation.plots import plot_invariance

    inv = [k for k in flat if k.startswith("invariance_") and k != "invariance_identity"]
    if not inv:
        return ""
    png = plot_invariance([{"cell": name, **{k: (flat[k], 0.0) for k in inv}}], inv, tmp / "inv.png", name)
    return img(png, "invariance heat map") if png else ""


def _curves(run_dir: Path, tmp: Path) -> str:
    """Loss / learning-rate curves drawn from metrics.jsonl (when the run folder has no curves.png)."""
    from ssl_aug.evaluation.plots import plot_training_curves

    try:
        records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    except (OSError, ValueError):
        return ""
    png = plot_training_curves(records, tmp / "curves.png", title=run_dir.name) if records else None
    return img(png, "training curves") if png else ""


def _robustness(run_dir: Path, flat: dict) -> str:
    from ssl_aug.evaluation.robustness import robustness_table

    nested = _json(run_dir / "eval_cli.json").get("robustness")
    if nested:
        return markdown(robustness_table(nested)) + '<p class="note">from eval_cli.json (ssl-aug eval --robustness)</p>'
    per = {k[len("robustness_knn_"):]: v for k, v in flat.items() if k.startswith("robustness_knn_")}
    if not per:
        return ""
    return markdown("| corruption (kNN top-1 %, mean over severities) | value |\n|---|---|\n"
                    + "\n".join(f"| {k} | {100 * v:.1f} |" for k, v in per.items()))


def _compute_maps(run_dir: Path, progress: bool = False) -> None:
    """Draw umap.png / neighbours.png into the run folder from its checkpoint (1000 queries, 5000 bank images)."""
    import torch

    from ssl_aug.evaluation.embedding import embed_2d, plot_embedding
    from ssl_aug.evaluation.features import extract_features
    from ssl_aug.evaluation.neighbours import write_neighbour_grid
    from ssl_aug.workflows.evaluate_encoder import _subset, load_eval_data, resolve_encoder

    backbone, mean, std, data, _ = resolve_encoder(str(run_dir), torch.device("cpu"))
    (train, test), _, _, extra = load_eval_data(data, with_groups=True)
    train = _subset(*train, min(5000, len(train[1])), "bank")
    test = _subset(*test, min(1000, len(test[1])), "queries")
    tr_f, te_f = [extract_features(backbone, x, mean, std, progress=progress) for x in (train[0], test[0])]
    classes = extra.get("classes")
    if not (run_dir / "neighbours.png").exists():
        write_neighbour_grid(run_dir / "neighbours.png", train[0], train[1], tr_f, test[0], test[1], te_f,
                             classes=classes)
    if not (run_dir / "umap.png").exists():
        coords, method = embed_2d(te_f)
        label = "UMAP" if method == "umap" else "t-SNE"
        plot_embedding(coords, test[1], run_dir / "umap.png", classes, f"{label} of {len(coords)} test features")


def run_sections(run_dir: Path, compute: bool = True, progress: bool = False) -> list[tuple[str, str]]:
    """(heading, html) sections of one run's report."""
    from ssl_aug.config import config_from_dict

    config = _json(run_dir / "config.json")
    try:
        cfg = config_from_dict(config)
    except (SslAugError, TypeError, ValueError):
        cfg = None
    flat = _json(run_dir / "eval.json")
    if compute and cfg is not None and not (run_dir / "views.png").exists():
        from ssl_aug.workflows.viewgrid import write_view_grid

        try:
            write_view_grid(cfg, run_dir / "views.png", n=8, seed=cfg.seed)
        except (SslAugError, OSError):
            pass
    if compute and any(not (run_dir / f).exists() for f in ("umap.png", "neighbours.png")) \
            and (run_dir / "checkpoints").exists():
        try:
            _compute_maps(run_dir, progress)
        except (SslAugError, OSError) as exc:
            print(f"report: embedding map / neighbours skipped for {run_dir}: {exc}")
    with tempfile.TemporaryDirectory() as tmp:
        inv = _invariance(flat, run_dir.name, Path(tmp))
        curves = _figure(run_dir / "curves.png", "training curves") or _curves(run_dir, Path(tmp))
    return [
        ("Recipe", f"<pre>{esc(json.dumps(config, indent=2))}</pre>"),
        ("Training views", _figure(run_dir / "views.png", "training views",
                                   "row 0: source images; then one row per view, drawn with the recipe's augmentation")),
        ("Training curves", curves),
        ("Evaluation", _metrics_table(flat, _floors(run_dir, cfg, compute)) if flat else ""),
        ("Invariance", inv),
        ("Corruption robustness", _robustness(run_dir, flat)),
        ("Embedding map", _figure(run_dir / "umap.png", "embedding map coloured by class")),
        ("Nearest neighbours", _figure(run_dir / "neighbours.png", "nearest neighbours",
                                       "query framed blue; bank neighbours of another class framed red")),
    ]
