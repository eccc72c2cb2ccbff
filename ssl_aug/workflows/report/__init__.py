"""`ssl-aug report RUN_OR_ABLATION_DIR`: one self-contained HTML page (images embedded) for a training run
(recipe, training views, curves, evaluation tables with floors, invariance heat map, corruption robustness,
embedding map, nearest neighbours) or for an ablation (its results table and plots, invariance <->
robustness, and the cells side by side)."""

from __future__ import annotations

from pathlib import Path

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.report.html import page
from ssl_aug.workflows.report.run import is_run, run_sections

__all__ = ["write_report", "is_run", "is_ablation"]


def is_ablation(folder: Path) -> bool:
    return (folder / "results.md").is_file() or any(folder.glob("*/*/ablation_cell.json"))


def write_report(folder: str | Path, out: str | Path | None = None, compute: bool = True,
                 progress: bool = False) -> Path:
    """Write the report of a run or ablation folder to `out` (default: <folder>/report.html); returns its path."""
    from ssl_aug.io import atomic_write_text

    folder = Path(folder)
    if not folder.is_dir():
        raise SslAugError(f"report: {folder} is not a folder; give a run folder (with config.json) or an "
                          "ablation folder (with results.md)")
    if is_run(folder):
        name = f"{folder.parent.name}/{folder.name}" if (folder / "ablation_cell.json").is_file() else folder.name
        sections, title = run_sections(folder, compute, progress), f"ssl_aug run: {name}"
    elif is_ablation(folder):
        from ssl_aug.workflows.report.ablation import ablation_sections

        sections, title = ablation_sections(folder, compute, progress), f"ssl_aug ablation: {folder.name}"
    else:
        raise SslAugError(f"report: {folder} is neither a run folder (config.json with eval.json, metrics.jsonl "
                          "or checkpoints/) nor an ablation folder (results.md or <cell>/<seed>/ablation_cell.json)")
    out = Path(out) if out is not None else folder / "report.html"
    if out.is_dir():
        raise SslAugError(f"--out {out} is a folder; give an HTML file path such as {out / 'report.html'}")
    return atomic_write_text(out, page(title, sections, subtitle=str(folder.resolve().name)))
