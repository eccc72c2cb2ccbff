"""`ssl-aug report RUN_OR_ABLATION_DIR`: one self-contained HTML page for a run or an ablation."""

from __future__ import annotations

from ssl_aug.cli._common import add_command


def run(args) -> int:
    from ssl_aug.workflows.report import write_report

    out = write_report(args.folder, args.out, compute=not args.no_compute, progress=not args.no_progress)
    print(f"wrote {out}")
    return 0


def register(sub) -> None:
    p = add_command(sub, "report", run, help="one self-contained HTML page (images embedded) for a run or an ablation")
    p.add_argument("folder", help="a run folder (config.json, eval.json, ...) or an ablation folder (results.md)")
    p.add_argument("--out", default=None, help="the HTML file to write (default: FOLDER/report.html)")
    p.add_argument("--no-compute", action="store_true",
                   help="only embed what the folder has (no view grid, floors, embedding map or neighbours drawn)")
    p.add_argument("--no-progress", action="store_true")
