"""eval/method_tables.py: colour x method rows (mean ± std, paired cost) and kNN at equal training time,
checked on hand-made run folders against values computed by hand."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "method_tables.py"
spec = importlib.util.spec_from_file_location("method_tables", SCRIPT)
tables = importlib.util.module_from_spec(spec)
spec.loader.exec_module(tables)


def make_run(root: Path, cell: str, seed: int, knn: float, epoch_s: float = 0.0, monitor: dict | None = None):
    """A finished run folder; monitor {epoch: kNN} logs one epoch line per epoch of epoch_s seconds."""
    run = root / cell / "seed0"
    run.mkdir(parents=True)
    (run / "eval.json").write_text(json.dumps({"knn_top1": knn, "train_time_s": 15 * epoch_s}))
    (run / "config.json").write_text(json.dumps({"seed": seed}))
    (run / "ablation_cell.json").write_text(json.dumps({"cell": cell, "seed": 0}))
    lines = [{"type": "step", "step": 1, "loss": 1.0}]
    for epoch in range(1, 16 if monitor else 1):
        rec = {"type": "epoch", "epoch": epoch, "epoch_time_s": epoch_s}
        rec.update({"knn_top1": monitor[epoch]} if epoch in monitor else {})
        lines.append(rec)
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_colour_rows_pair_seeds_and_recorded_runs_fill_in(tmp_path):
    make_run(tmp_path / "s0", "simclr", 0, 0.50)
    make_run(tmp_path / "s0", "simclr_no_color", 0, 0.40)
    make_run(tmp_path / "s1", "simclr", 1, 0.60)
    make_run(tmp_path / "s1", "simclr_no_color", 1, 0.30)
    recorded = tmp_path / "results.csv"
    recorded.write_text("cell,seed,knn_top1,train_time_s,error\nsimclr,0,0.99,1,\nbyol,0,0.45,,\n"
                        "byol_no_color,0,0.41,,\nbyol,1,0.1,,boom\n")
    runs = tables.collect([tmp_path / "s0", tmp_path / "s1"], [recorded])
    assert len(runs) == 6  # the folder of (simclr, 0) wins over its recorded row; the failed row is left out
    table = tables.colour_table(runs)
    # simclr: full 0.50, 0.60 -> 0.550 ± 0.071; no colour 0.40, 0.30 -> 0.350 ± 0.071; cost 10 and 30 points
    assert "| simclr | 2 / 2 | 0.550 ± 0.071 | 0.350 ± 0.071 | 20.0 ± 14.1 |" in table
    assert "| byol | 1 / 1 | 0.450 | 0.410 | 4.0 | - / - |" in table
    assert table.index("| simclr |") < table.index("| byol |")  # registration order


def test_knn_at_equal_time_interpolates_between_monitor_epochs(tmp_path):
    make_run(tmp_path, "simclr", 1, 0.55, epoch_s=60.0, monitor={3: 0.40, 6: 0.46, 9: 0.49, 12: 0.50, 15: 0.52})
    make_run(tmp_path, "byol", 1, 0.45, epoch_s=120.0, monitor={3: 0.30, 6: 0.36, 9: 0.40, 12: 0.42, 15: 0.43})
    runs = tables.collect([tmp_path])
    simclr = next(r for r in runs if r["cell"] == "simclr")
    assert simclr["curve"][0] == (3, 180.0, 0.40)
    assert tables.at_time(simclr["curve"], 150.0) is None  # before the first monitor point
    epochs, knn = tables.at_time(simclr["curve"], 450.0)  # halfway from epoch 6 (360 s) to 9 (540 s)
    assert epochs == pytest.approx(7.5) and knn == pytest.approx(0.475)
    assert tables.at_time(simclr["curve"], 901.0) is None  # past the run
    table = tables.minutes_table(runs, [12.0])
    # 12 min = 720 s: simclr at epoch 12 (0.50); byol at epoch 6 (720 s, 0.36)
    assert "| simclr | 1 | 15.0 | 12.0 | 0.500 | 0.520 | 0.550 |" in table
    assert "| byol | 1 | 30.0 | 6.0 | 0.360 | 0.430 | 0.450 |" in table


def test_main_prints_both_tables_without_touching_benchmarks(tmp_path, capsys):
    make_run(tmp_path, "simclr", 0, 0.55, epoch_s=60.0, monitor={3: 0.40, 15: 0.52})
    make_run(tmp_path, "simclr_no_color", 0, 0.40)
    assert tables.main([str(tmp_path), "--no-floors", "--no-write", "--minutes", "6"]) == 0
    out = capsys.readouterr().out
    assert "### Colour distortion x method" in out and "monitor kNN at 6 min" in out
    assert tables.main([str(tmp_path / "empty"), "--no-floors", "--no-write"]) == 1


def test_saved_records_rebuild_both_tables_without_the_run_folders(tmp_path):
    make_run(tmp_path / "runs", "simclr", 1, 0.55, epoch_s=60.0, monitor={3: 0.40, 6: 0.46, 15: 0.52})
    make_run(tmp_path / "runs", "simclr_no_color", 1, 0.41)
    old = tmp_path / "old.csv"
    old.write_text("cell,seed,knn_top1,train_time_s,curve,note\n"
                   "simclr,0,0.5,700,2:100:0.3;15:800:0.45,kept by hand\nsimclr_no_color,0,0.38,,,\n")
    runs = tables.collect([tmp_path / "runs"], [old])
    assert next(r for r in runs if r["seed"] == 0 and r["cell"] == "simclr")["curve"] == [(2, 100, 0.3), (15, 800, 0.45)]
    saved = tmp_path / "records.csv"
    tables.save_records(runs, saved)
    again = tables.collect([], [saved])
    key = lambda r: (r["cell"], r["seed"])  # noqa: E731
    assert sorted(map(key, again)) == sorted(map(key, runs))
    assert tables.colour_table(again) == tables.colour_table(runs)
    assert tables.minutes_table(again, [5.0]) == tables.minutes_table(runs, [5.0])
    assert "kept by hand" in saved.read_text() and "run folder runs/simclr/seed0" in saved.read_text()
    # 5 min = 300 s: seed 1 lies 2/3 of the way from epoch 3 (180 s, 0.40) to 6 (360 s, 0.46) -> epoch 5, 0.44;
    # seed 0 lies 200/700 of the way from epoch 2 (100 s, 0.30) to 15 (800 s, 0.45) -> epoch 5.7, 0.343
    table = tables.minutes_table(again, [5.0])
    assert "| simclr | 1 | 15.0 | 5.0 | 0.440 |" in table and "| simclr | 0 | 13.3 | 5.7 | 0.343 |" in table
    assert tables.main(["--recorded", str(saved), "--no-floors", "--no-write"]) == 0
