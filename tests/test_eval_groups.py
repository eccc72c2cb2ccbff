"""`ssl-aug eval RUN` on a run trained on data with subgroups reports accuracy per (class, group)."""

import json

from cli_helpers import RECIPE, run_cli


def test_eval_command_reports_subgroups(tmp_path, capsys):
    recipe = tmp_path / "spurious.toml"
    recipe.write_text(RECIPE.replace("options = {n_per_class = 4, size = 16}",
                                     "options = {n_per_class = 12, size = 16, spurious = 0.9}"))
    run = tmp_path / "run"
    code, lines, _ = run_cli(["train", recipe, f"output_dir={run}", "--no-progress"], capsys)
    assert code == 0, lines
    out = tmp_path / "eval.json"
    code, lines, stdout = run_cli(["eval", run, "--knn", "--k", "5", "--json", out, "--no-progress"], capsys)
    assert code == 0, lines
    results = json.loads(out.read_text())
    groups = results["knn"]["groups"]
    assert 0.0 <= groups["worst_group_acc"] <= results["knn"]["top1"] <= 1.0
    assert "Subgroups" in stdout
