"""The sections of an ablation's report: its results table and plots, invariance <-> robustness when the
runs have both, and every cell side by side (first seed: views, curves, invariance, robustness, embedding
map and neighbours)."""

from __future__ import annotations

import json
from pathlib import Path

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.report.html import esc, img, markdown
from ssl_aug.workflows.report.run import is_run, run_sections

SIDE_BY_SIDE = ("Training views", "Training curves", "Evaluation", "Invariance", "Corruption robustness",
                "Embedding map", "Nearest neighbours")


def _runs(folder: Path) -> dict[str, list[Path]]:
    """{cell: [run folders, by seed]} from the <cell>/<seed>/ablation_cell.json markers."""
    cells: dict[str, list[Path]] = {}
    for marker in sorted(folder.glob("*/*/ablation_cell.json")):
        run = marker.parent
        if is_run(run):
            try:
                cell = json.loads(marker.read_text()).get("cell", run.parent.name)
            except ValueError:
                cell = run.parent.name
            cells.setdefault(str(cell), []).append(run)
    return cells


def ablation_sections(folder: Path, compute: bool = True, progress: bool = False) -> list[tuple[str, str]]:
    """(heading, html) sections of an ablation folder's report."""
    sections = []
    results = folder / "results.md"
    if results.is_file():
        sections.append(("Results", markdown(results.read_text())))
    plots = "".join(img(folder / f, f) for f in ("accuracy.png", "invariance.png") if (folder / f).is_file())
    sections.append(("Accuracy and invariance per cell", plots))
    link = ""
    try:
        from ssl_aug.workflows.ablation.invariance_robustness import write_invariance_robustness

        text, written = write_invariance_robustness(folder)
        pngs = [p for p in written if p.suffix == ".png"]
        link = markdown(text) + "".join(img(p, "invariance vs robustness") for p in pngs)
    except SslAugError as exc:
        link = f'<p class="note">{esc(exc)}</p>'
    sections.append(("Invariance and robustness", link))
    cells = _runs(folder)
    if not cells:
        return sections
    columns = []
    for cell, runs in cells.items():
        parts = dict(run_sections(runs[0], compute, progress))
        body = "".join(f"<h3>{esc(h)}</h3>{parts[h]}" for h in SIDE_BY_SIDE if parts.get(h))
        seeds = f"{len(runs)} seed(s); shown: {runs[0].name}"
        columns.append(f'<div class="cell"><h3>{esc(cell)}</h3><p class="note">{esc(seeds)}</p>{body}</div>')
    sections.append(("Cells side by side", '<div class="cells">' + "".join(columns) + "</div>"))
    return sections
