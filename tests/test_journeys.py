"""New-user journeys through the CLI, each as README describes it: own image folder -> train -> evaluate ->
export; pack once and train on the pack; the image cache; the views grid before training."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from cli_helpers import RECIPE, assert_one_error, run_cli

pytest.importorskip("ssl_aug.models.small_cnn")


def _tree(root, classes=("circle", "square", "stripes"), per_class=8):
    """A class-per-folder tree of small PNGs whose classes differ visibly (so the pipeline has signal)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (20, 24, 3), dtype=np.uint8)
            img[..., k] += 150
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "PNG")
            (root / c / f"{i:02d}.png").write_bytes(buf.getvalue())
    return root


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return tmp_path, recipe


def _ok(argv, capsys):
    code, lines, out = run_cli(argv, capsys)
    assert code == 0, "\n".join(lines)
    return lines, out


def test_own_image_folder_train_evaluate_export(home, capsys):
    tmp, recipe = home
    tree = _tree(tmp / "my_images")
    run = tmp / "run"
    lines, _ = _ok(["train", recipe, "data.name=imagefolder", f"data.root={json.dumps(str(tree))}",
                    "data.options={size=16}", 'eval.test_split="train"', "train.max_steps=2",
                    f"output_dir={json.dumps(str(run))}", "--no-progress"], capsys)
    assert any("24 images at 16x16 px" in line for line in lines), lines  # the size, said once
    # eval with no flags: the run's own folder and split, a seeded stratified hold-out (no self-matches)
    _, out = _ok(["eval", run, "--k", "5", "--no-progress"], capsys)
    assert "hold-out of split 'train': 18 bank / 6 query images" in out
    result = json.loads((run / "eval_cli.json").read_text())
    assert result["data"] == "imagefolder" and 0.0 <= result["knn"]["top1"] <= 1.0
    assert (run / "views.png").stat().st_size > 0  # the views grid, next to the run
    _ok(["export", run, "--out", tmp / "export"], capsys)
    _, out = _ok(["eval", tmp / "export", "--k", "5", "--no-progress", "--json", tmp / "e.json"], capsys)
    assert "18 bank / 6 query" in out
    assert json.loads((tmp / "e.json").read_text())["knn"] == result["knn"]  # same encoder, same split
    program = torch.export.load(str(tmp / "export" / "encoder.pt2")).module()
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    from ssl_aug.export import load_encoder
    encoder = load_encoder(tmp / "export")
    with torch.no_grad():
        torch.testing.assert_close(program(images.float() / 255), encoder(images), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        encoder(images.float())  # 0-255 floats would give garbage features: refused


def test_pack_once_then_train_on_the_pack(home, capsys):
    tmp, recipe = home
    tree = _tree(tmp / "my_images")
    _, out = _ok(["data", "pack", tree, tmp / "packed", "--size", "16", "--quiet"], capsys)
    assert "24 images, 3 classes" in out and "data.name=npz" in out  # the next command is printed
    run = tmp / "run"
    _ok(["train", recipe, "data.name=npz", f"data.root={json.dumps(str(tmp / 'packed'))}", "data.options={}",
         'eval.test_split="train"', "eval.final_knn=true", "eval.knn_k=5", "train.max_steps=2",
         f"output_dir={json.dumps(str(run))}", "--no-progress"], capsys)
    assert json.loads((run / "eval.json").read_text())["steps"] == 2


def test_pack_with_split_folders_then_train_and_test(home, capsys):
    tmp, recipe = home
    _tree(tmp / "src" / "train")
    _tree(tmp / "src" / "val", per_class=2)
    _, out = _ok(["data", "pack", tmp / "src", tmp / "packed", "--size", "16", "--quiet"], capsys)
    assert "24 images" in out and "6 images" in out
    _, out = _ok(["data", "info", "npz", "--root", tmp / "packed", "--split", "val"], capsys)
    assert "6 images" in out


def test_image_cache_list_and_clear(home, capsys):
    tmp, _ = home
    tree = _tree(tmp / "my_images")
    _ok(["data", "info", "imagefolder", "--root", tree], capsys)
    _, out = _ok(["data", "cache", "list"], capsys)
    assert "1 pack(s)" in out and "24 images at 20 px" in out and str(tree) in out
    name = out.splitlines()[1].split(":")[0].strip()
    assert_one_error(["data", "cache", "clear", "nope"], capsys, "nope", name)
    _, out = _ok(["data", "cache", "clear"], capsys)
    assert "cleared 1 pack(s)" in out and not any((tmp / "cache" / "imagefolder").iterdir())


def test_views_grid_before_training(home, capsys):
    tmp, recipe = home
    from PIL import Image

    _, out = _ok(["views", recipe, "augment.multicrop.local_views=2", "augment.multicrop.size=8",
                  "--out", tmp / "views.png", "--images", "3"], capsys)
    assert "views.png" in out
    grid = Image.open(tmp / "views.png")
    cell = 64 + 2  # views are upscaled to at least 64 px, 2 px apart
    assert grid.size[0] == 120 + 3 * cell and grid.size[1] == 18 + (1 + 2 + 2) * cell  # source + 2 + 2 rows
    assert_one_error(["views", recipe, "--out", tmp], capsys, "is a folder")


def test_ablation_report_through_the_cli(home, capsys):
    tmp, _ = home
    from test_ablation import SPEC

    spec = tmp / "spec.toml"
    spec.write_text(SPEC.format(out=(tmp / "abl").as_posix()).replace("seeds = 2", "seeds = 1"))
    _, out = _ok(["ablate", spec, "--no-progress"], capsys)
    for name in ("results.md", "results.csv", "accuracy.png", "invariance.png"):
        assert str(tmp / "abl" / name) in out, name  # the console names every file written
    table = (tmp / "abl" / "results.md").read_text()
    assert "Base recipe: `quickstart`" in table and "Budget: 2 epochs, batch 64" in table
    assert "- no_color_jitter: `augment.color_jitter.p=0.0`" in table and "- full: (the base recipe)" in table
    assert "±" not in table and "identity" not in table
    code, lines, _ = run_cli(["ablate", spec, "base.train.epochs=1", "--no-progress"], capsys)
    assert code == 2 and "--rerun-changed" in lines[-1] and "train.epochs: 2 -> 1" in lines[-1]
