"""Ablation runner end to end on the embedded data set (tiny budget), resume, and spec errors."""

import csv
import json

import pytest

from ssl_aug.workflows.ablation import load_spec, plan_runs, run_ablation
from ssl_aug.errors import SslAugError

pytest.importorskip("ssl_aug.models.small_cnn")

SPEC = """
description = "tiny colour ablation"
base = "quickstart"
mode = "cells"
seeds = 2
output_dir = "{out}"

[base_overrides]
"data.options" = {{ n_per_class = 24, cache = false }}
"train.batch_size" = 64
"train.epochs" = 2
"train.log_every" = 1
"eval.knn_k" = 20
"eval.invariance" = true
"model.backbone_args" = {{ widths = [8, 16] }}
"method.proj_hidden_dim" = 32
"method.proj_dim" = 16

[cells.full]

[cells.no_color_jitter]
"augment.color_jitter.p" = 0.0
"""


def write_spec(tmp_path, text=SPEC):
    path = tmp_path / "spec.toml"
    path.write_text(text.format(out=(tmp_path / "out").as_posix()))
    return path


def test_two_cell_ablation_runs_reports_and_resumes(tmp_path, capsys):
    spec = write_spec(tmp_path)
    runs = run_ablation(spec, progress=False)
    assert [(r.cell, r.seed) for r in runs] == [("full", 0), ("full", 1), ("no_color_jitter", 0), ("no_color_jitter", 1)]
    assert all(r.error is None and 0.0 <= r.results["knn_top1"] <= 1.0 for r in runs)
    # each run in its own directory with the resolved recipe, metrics, checkpoint and eval
    for r in runs:
        cfg = json.loads((r.run_dir / "config.json").read_text())
        assert cfg["seed"] == r.seed
        assert cfg["augment"]["color_jitter"]["p"] == (0.0 if r.cell == "no_color_jitter" else 0.8)
        assert (r.run_dir / "metrics.jsonl").is_file() and (r.run_dir / "checkpoints" / "last.pt").is_file()
        assert json.loads((r.run_dir / "eval.json").read_text())["knn_top1"] == r.results["knn_top1"]
    out = tmp_path / "out"
    table = (out / "results.md").read_text()
    assert "| full | 2 |" in table and "| no_color_jitter | 2 |" in table and "±" in table
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and rows[0]["knn_top1"] and "invariance_color_jitter" in rows[0]
    assert (out / "accuracy.png").stat().st_size > 0 and (out / "invariance.png").stat().st_size > 0

    # a second call skips every finished run and rebuilds the same table
    capsys.readouterr()
    again = run_ablation(spec, progress=False)
    assert all(r.skipped for r in again)
    assert capsys.readouterr().out.count("done earlier, skipped") == 4
    assert (out / "results.md").read_text() == table


def test_interrupted_run_resumes_and_failed_run_is_recorded(tmp_path):
    spec = write_spec(tmp_path)
    runs = run_ablation(spec, ["seeds=1"], progress=False)
    done = runs[0].run_dir
    (done / "eval.json").unlink()  # as if the run died after its last checkpoint
    # make the other cell fail: a corrupted checkpoint is refused, recorded, and the others go on
    bad = runs[1].run_dir
    (bad / "eval.json").unlink()
    (bad / "checkpoints" / "last.pt").write_bytes(b"garbage")
    again = run_ablation(spec, ["seeds=1"], progress=False)
    assert again[0].error is None and not again[0].skipped
    assert again[0].results["steps"] == runs[0].results["steps"]  # resumed at the end: no extra steps
    assert again[1].error is not None and "corrupted" in again[1].error
    assert "Failed runs" in (tmp_path / "out" / "results.md").read_text()
    assert (bad / "error.txt").is_file()


def test_bad_axis_key_lists_valid_keys(tmp_path):
    text = SPEC.replace('mode = "cells"', 'mode = "one_at_a_time"') + '\n[axes]\n"train.epoch" = [1, 2]\n'
    spec = write_spec(tmp_path, text)
    data, path = load_spec(spec)
    with pytest.raises(SslAugError, match="'train.epoch' is not a recipe key; valid keys under train: .*epochs"):
        plan_runs(data, path)


def test_grid_and_one_at_a_time_plans(tmp_path):
    axes = '\n[axes]\n"augment.grayscale_p" = [0.0, 0.2]\n"augment.color_jitter.p" = [0.0, 0.8]\n'
    grid = write_spec(tmp_path, SPEC.replace('mode = "cells"', 'mode = "grid"').replace("seeds = 2", "seeds = 1") + axes)
    runs = plan_runs(*load_spec(grid))
    assert len(runs) == 4 and len({r.cell for r in runs}) == 4
    one = write_spec(tmp_path, SPEC.replace('mode = "cells"', 'mode = "one_at_a_time"').replace("seeds = 2", "seeds = 1") + axes)
    runs = plan_runs(*load_spec(one))
    assert [r.cell for r in runs][0] == "base" and len(runs) == 5


@pytest.mark.parametrize("edit, fragment", [
    ('mode = "cells"', "mode 'cells' needs"),
    ("bogus = 1\nmode = \"cells\"", "unknown ablation key 'bogus'"),
    ('mode = "zigzag"', "choose one of: cells, one_at_a_time, grid"),
])
def test_bad_specs(tmp_path, edit, fragment):
    text = SPEC.split("[cells.full]")[0].replace('mode = "cells"', edit)
    with pytest.raises(SslAugError, match=fragment):
        plan_runs(*load_spec(write_spec(tmp_path, text)))


def test_bad_cell_value_is_reported_with_the_cell(tmp_path):
    text = SPEC + '\n[cells.broken]\n"augment.color_jitter.p" = 1.5\n'
    with pytest.raises(SslAugError, match="ablation cell 'broken'.*color_jitter.p"):
        plan_runs(*load_spec(write_spec(tmp_path, text)))


def test_changed_cell_config_is_refused_then_rerun_on_request(tmp_path, capsys):
    spec = write_spec(tmp_path)
    first = run_ablation(spec, ["seeds=1"], progress=False)
    record = json.loads((first[0].run_dir / "ablation_cell.json").read_text())
    assert record["config_sha256"] == first[0].config_hash and record["cell"] == "full"
    table = (tmp_path / "out" / "results.md").read_text()
    assert "Base recipe: `quickstart`" in table and "2 epochs" in table and "`augment.color_jitter.p=0.0`" in table
    assert "±" not in table and "invariance_identity" not in table  # one seed: no spread shown
    header = next(line for line in table.splitlines() if line.startswith("| cell"))
    assert header.index("invariance_crop_scale") < header.index("invariance_color_jitter") \
        < header.index("invariance_grayscale")
    out = capsys.readouterr().out
    assert "results.md" in out and "results.csv" in out and "accuracy.png" in out and "invariance.png" in out
    # the spec changes the budget: the finished cells no longer describe it
    changed = ["seeds=1", "base.train.epochs=1"]
    with pytest.raises(SslAugError, match=r"cell 'full' seed 0 .* another configuration.*train\.epochs: 2 -> 1"):
        run_ablation(spec, changed, progress=False)
    again = run_ablation(spec, changed, progress=False, rerun_changed=True)
    assert not any(r.skipped for r in again) and all(r.error is None for r in again)
    assert all(r.results["epochs"] == 1 for r in again)
    assert (first[0].run_dir.parent / "seed0.old" / "eval.json").is_file()  # the old run is kept aside
    assert all(r.skipped for r in run_ablation(spec, changed, progress=False))  # unchanged now: reused


def test_quickstart_output_dir_is_where_the_runs_go(tmp_path, capsys):
    from ssl_aug.cli import main

    one_seed = SPEC.replace("seeds = 2", "seeds = 1").replace('"eval.invariance" = true', '"eval.invariance" = false')
    spec = write_spec(tmp_path, one_seed)
    elsewhere = tmp_path / "chosen"
    assert main(["quickstart", "--spec", str(spec), "--output-dir", str(elsewhere), "--no-progress"]) == 0
    assert (elsewhere / "results.md").is_file() and (elsewhere / "full" / "seed0" / "eval.json").is_file()
    assert not (tmp_path / "out").exists()


def test_cells_option_runs_only_the_named_cells_and_reports_every_finished_one(tmp_path, capsys):
    spec = write_spec(tmp_path, SPEC.replace("seeds = 2", "seeds = 1"))
    ran = run_ablation(spec, progress=False, cells=["no_color_jitter"])
    assert [r.cell for r in ran] == ["no_color_jitter"] and ran[0].error is None
    out = tmp_path / "out"
    assert not (out / "full").exists()
    table = (out / "results.md").read_text()
    assert "| no_color_jitter | 1 |" in table and "| full |" not in table
    run_ablation(spec, progress=False, cells=["full"])
    table = (out / "results.md").read_text()
    assert "| no_color_jitter | 1 |" in table and "| full | 1 |" in table
    with pytest.raises(SslAugError, match="no cell 'nope'; its cells: full, no_color_jitter"):
        run_ablation(spec, progress=False, cells=["nope"])
    capsys.readouterr()
    run_ablation(spec, progress=False, dry_run=True, cells=["full"])
    assert capsys.readouterr().out.startswith("full seed 0:")
