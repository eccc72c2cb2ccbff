"""Launchers: bad input in one line, local worker processes, and a search on a local Ray instance
(started by the test, no network)."""

import json
import os

import pytest

from ssl_aug.errors import SslAugError
from ssl_aug.workflows.launchers import check_ray_address, launch
from test_search_resume import tiny_spec


def square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


ABLATION = """base = "quickstart"
mode = "cells"
output_dir = "{out}"
[base_overrides]
"data.subset" = 160
"train.epochs" = 1
"train.batch_size" = 64
"eval.knn_k" = 20
"model.backbone_args" = {{ widths = [8, 16, 16] }}
[cells.full]
[cells.no_color]
"augment.color_jitter.p" = 0.0
"""


def test_bad_launcher_input_is_one_line():
    for kwargs, words in [({"launcher": "slurm"}, "local, ray"), ({"workers": 0}, "workers = 0"),
                          ({"address": "10.0.0.1:6379"}, "--launcher ray")]:
        with pytest.raises(SslAugError) as exc:
            launch(square, [(1,)], **kwargs)
        assert words in str(exc.value) and "\n" not in str(exc.value)


def test_unreachable_ray_address_is_one_line():
    pytest.importorskip("ray")
    with pytest.raises(SslAugError) as exc:
        check_ray_address("127.0.0.1:1")  # nothing listens on port 1
    text = str(exc.value)
    assert "unreachable" in text and "127.0.0.1:1" in text and "\n" not in text
    with pytest.raises(SslAugError) as exc:
        check_ray_address("no-port-here")
    assert "host:port" in str(exc.value)


def test_local_workers_run_in_separate_processes_in_order():
    assert [r for r, _ in launch(square, [(i,) for i in range(4)])] == [0, 1, 4, 9]
    results = launch(square, [(i,) for i in range(4)], workers=2)
    assert [r for r, _ in results] == [0, 1, 4, 9]
    assert os.getpid() not in {pid for _, pid in results}


def _check_search(out, trials: int) -> list[dict]:
    rows = [json.loads((d / "eval.json").read_text()) for d in sorted((out / "trials").glob("trial_*"))]
    assert trials <= len(rows) <= trials + 1  # workers may each start one last trial at the same moment
    assert all(0.0 <= r["knn_val"] <= 1.0 and r["epochs"] == 2 for r in rows)
    return rows


def test_search_with_two_local_workers(tmp_path):
    pytest.importorskip("optuna")
    from ssl_aug.cli import main

    spec, out = tiny_spec(tmp_path, trials=3, epochs=2)
    assert main(["search", str(spec), "--workers", "2", "--launcher", "local", "--no-progress"]) == 0
    _check_search(out, 3)
    assert (out / "trials.md").is_file() and (out / "history.png").is_file()


def test_search_on_a_local_ray_instance(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'ssl_aug[ray]'")
    pytest.importorskip("optuna")
    from ssl_aug.workflows.search import run_search

    spec, out = tiny_spec(tmp_path, trials=2, epochs=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    try:
        run_search(spec, launcher="ray", workers=2, progress=False)
    finally:
        ray.shutdown()
    _check_search(out, 2)


def test_ablation_cells_through_local_workers(tmp_path):
    from ssl_aug.workflows.ablation import run_ablation

    out = tmp_path / "abl"
    spec = tmp_path / "abl.toml"
    spec.write_text(ABLATION.format(out=out.as_posix()))
    runs = run_ablation(spec, progress=False, launcher="local", workers=2)
    assert [r.cell for r in runs] == ["full", "no_color"] and all(r.error is None for r in runs)
    for r in runs:
        saved = json.loads((r.run_dir / "eval.json").read_text())
        assert saved == r.results and 0.0 <= saved["knn_top1"] <= 1.0
    assert "no_color" in (out / "results.md").read_text()


def test_ray_workers_respect_a_busy_run_folder(tmp_path):
    """A Ray task whose cell folder is held by another live run is refused (one line naming that process) and
    writes nothing there; the other cell trains."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'ssl_aug[ray]'")
    import subprocess
    import sys

    from ssl_aug.workflows.ablation import run_ablation

    spec = tmp_path / "abl.toml"
    spec.write_text(ABLATION.format(out=(tmp_path / "abl").as_posix()))
    busy = {r.cell: r for r in run_ablation(spec, dry_run=True)}["no_color"].run_dir
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ssl_aug.runlock import hold_run_folder\n"
                               "with hold_run_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(300)",
                               str(busy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        try:
            runs = {r.cell: r for r in run_ablation(spec, progress=False, launcher="ray", workers=2)}
        finally:
            ray.shutdown()
        assert runs["full"].error is None and (runs["full"].run_dir / "eval.json").is_file()
        assert f"pid {holder.pid}" in runs["no_color"].error
        assert not [p.name for p in busy.iterdir() if p.name in ("metrics.jsonl", "config.json", "checkpoints")]
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("flags, words", [
    (["--launcher", "ray", "--address", "127.0.0.1:1"], "unreachable"),
    (["--workers", "0"], "workers = 0"),
    (["--address", "127.0.0.1:1"], "needs --launcher ray"),
    (["--report-only"], "no search in"),
])
def test_search_cli_refuses_in_one_line_before_writing(tmp_path, capsys, flags, words):
    pytest.importorskip("optuna")
    if "ray" in flags:
        pytest.importorskip("ray")
    from ssl_aug.cli import main

    spec, out = tiny_spec(tmp_path)
    assert main(["search", str(spec), *flags, "--no-progress"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("ssl-aug: error: ") and words in err[0], err
    assert not out.exists()


def test_local_workers_honour_the_callers_thread_count(monkeypatch):
    """Workers split the cores but never use more threads than the caller (OMP_NUM_THREADS=1 stays 1): a
    search run in this process must not raise its thread count (and change the numerics of later runs)."""
    import torch

    from ssl_aug.workflows.launchers import threads_per_worker

    monkeypatch.setattr("os.cpu_count", lambda: 8)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert threads_per_worker(1) == 1 and threads_per_worker(4) == 1
        torch.set_num_threads(4)
        assert [threads_per_worker(w) for w in (1, 2, 4, 16)] == [4, 4, 2, 1]
    finally:
        torch.set_num_threads(before)
