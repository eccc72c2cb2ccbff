"""Bad-input corpus, part 2: paths that exist but are the wrong kind of thing, file names that are not
valid UTF-8, and size/count keys checked against the data they apply to. Each case goes through the
CLI: exit 2 and one `ssl-aug: error:` line naming the value, or a counted, reported skip/note."""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
import pytest

from cli_helpers import RECIPE, assert_one_error, run_cli

pytest.importorskip("ssl_aug.models.small_cnn")


@pytest.fixture
def env(tmp_path, monkeypatch):
    """(recipe path, a plain file, a folder, run args for a fresh output dir)."""
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    return recipe, afile, folder, tmp_path


def _train(recipe, *overrides, out):
    return ["train", recipe, *overrides, f"output_dir={json.dumps(str(out))}", "--no-progress"]


def _png(seed: int, size=(12, 10)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _tree(root, classes=("a", "b"), per_class=3):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_png(hash((c, i)) % 1000))
    return root


# ------------------------------------------------------------------------------------ paths
def test_output_dir_is_a_file(env, capsys):
    recipe, afile, _, _ = env
    assert_one_error(_train(recipe, out=afile), capsys, str(afile), "is a file")


def test_resume_into_an_output_dir_that_is_a_file(env, capsys):
    recipe, afile, _, _ = env
    assert_one_error(_train(recipe, out=afile) + ["--resume"], capsys, str(afile), "is a file")


def test_export_out_is_a_file(env, capsys):
    _, afile, folder, _ = env
    assert_one_error(["export", folder, "--out", afile], capsys, str(afile), "is a file")


def test_ablate_output_dir_is_a_file(env, capsys):
    _, afile, _, _ = env
    assert_one_error(["ablate", "ablate_quickstart", "--output-dir", afile, "--no-progress"], capsys,
                     str(afile), "is a file")


def test_eval_json_is_a_folder(env, capsys):
    _, _, folder, _ = env
    assert_one_error(["eval", "random:small_cnn", "--data", "embedded", "--json", folder, "--no-progress"], capsys,
                     "--json", "is a folder")


@pytest.mark.parametrize("name", ["cifar10", "npz", "imagefolder", "stl10"])
def test_data_root_is_a_file(env, capsys, name):
    _, afile, _, _ = env
    assert_one_error(["data", "info", name, "--root", afile], capsys, str(afile), "is a file")


def test_image_folder_cache_is_a_file(env, capsys, monkeypatch):
    _, afile, _, tmp = env
    root = _tree(tmp / "imgs")
    monkeypatch.setenv("SSL_AUG_CACHE", str(afile))
    assert_one_error(["data", "info", "imagefolder", "--root", root], capsys, "cache", "is a file")


def test_pack_destination_is_a_file(env, capsys):
    _, afile, _, tmp = env
    root = _tree(tmp / "imgs")
    assert_one_error(["data", "pack", root, afile, "--quiet"], capsys, "pack destination", "is a file")


def test_pack_source_is_a_file(env, capsys):
    _, afile, _, tmp = env
    assert_one_error(["data", "pack", afile, tmp / "out", "--quiet"], capsys, "image folder", "is a file")


@pytest.mark.skipif(sys.platform in ("darwin", "win32"), reason="needs a file system that stores raw bytes")
def test_file_and_class_names_not_valid_utf8_are_kept_and_counted(env, capsys):
    _, _, _, tmp = env
    root = _tree(tmp / "imgs")
    bad_class = os.path.join(os.fsencode(str(root)), b"caf\xe9")  # Latin-1 folder name
    os.mkdir(bad_class)
    for i in range(2):
        with open(os.path.join(bad_class, b"img\xff%d.png" % i), "wb") as f:
            f.write(_png(50 + i))
    with open(os.path.join(os.fsencode(str(root / "a")), b"\xfe\xfe.png"), "wb") as f:
        f.write(_png(60))
    code, lines, out = run_cli(["data", "pack", root, tmp / "out", "--workers", "1"], capsys)
    assert code == 0, lines
    assert "9 images, 3 classes, 0 skipped" in out
    report = json.loads((tmp / "out" / "pack_report.json").read_text())
    assert report["non_utf8_names"] == 4 and report["images"] == 9  # 1 folder + 3 files, all kept
    classes = (tmp / "out" / "classes.txt").read_text(encoding="utf-8").split()
    assert classes == ["a", "b", "caf\ufffd"]
    assert any("not valid UTF-8" in line and "4" in line for line in lines)


# ---------------------------------------------------------------------------- sizes and counts
SIZE_CASES = {
    "data.subset larger than the data": (["data.subset=100000"], ["data.subset", "100000", "at most"]),
    "final kNN k larger than the bank": (["eval.final_knn=true", "eval.knn_k=100000"], ["eval.knn_k", "bank"]),
    "monitor k larger than the monitor bank": (["eval.knn_every=1", "eval.monitor_train=5", "eval.knn_k=50"],
                                               ["eval.knn_k", "monitor", "at most 5"]),
    "monitor with no queries": (["eval.knn_every=1", "eval.monitor_test=0"], ["eval.monitor_test", ">= 1"]),
    "local crops not smaller than global": (["augment.multicrop.local_views=2", "augment.multicrop.size=16"],
                                            ["augment.multicrop.size", "smaller"]),
    "batch larger than the data": (["train.batch_size=4096"], ["4096"]),
    "one view per image": (["augment.views=1"], ["augment.views", "fewer than 2"]),
    "option the data set does not take": (["data.name=cifar10"], ["n_per_class", "cifar10"]),
}


@pytest.mark.parametrize("case", sorted(SIZE_CASES))
def test_size_keys_checked_against_the_data(case, env, capsys):
    recipe, _, _, tmp = env
    overrides, words = SIZE_CASES[case]
    assert_one_error(_train(recipe, *overrides, out=tmp / "run"), capsys, *words)
    assert not (tmp / "run" / "checkpoints").exists()  # refused before training


def test_crops_larger_than_the_images_are_reported(env, capsys):
    recipe, _, _, tmp = env
    code, lines, _ = run_cli(_train(recipe, "augment.size=24", "train.max_steps=1", out=tmp / "run"), capsys)
    assert code == 0, lines
    assert any("upsampled from 16x16" in line and "augment.size" in line for line in lines), lines


EVAL_CASES = {
    "train subset larger than the data": (["--train-subset", "100000"], ["--train-subset", "100000"]),
    "k larger than the bank": (["--train-subset", "20", "--k", "50"], ["--k 50", "20"]),
    "negative subset": (["--test-subset", "-5"], ["--test-subset", ">= 0"]),
    "k zero": (["--k", "0"], ["--k 0", "k >= 1"]),
}


@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_eval_counts_checked_against_the_data(case, env, capsys):
    _, _, _, tmp = env
    flags, words = EVAL_CASES[case]
    assert_one_error(["eval", "random:small_cnn", "--data", "embedded", *flags, "--json", tmp / "e.json",
                      "--no-progress"], capsys, *words)


# ------------------------------------------------------------------------- the wrong kind of file
def test_ablation_spec_given_to_train(capsys):
    assert_one_error(["train", "ablate_color"], capsys, "ablation spec", "ssl-aug ablate ablate_color")


def test_training_recipe_given_to_ablate(capsys):
    assert_one_error(["ablate", "quickstart"], capsys, "training recipe", "ssl-aug train")


def test_recipe_checked_before_an_image_folder_is_decoded(env, capsys):
    recipe, _, _, tmp = env
    root = _tree(tmp / "imgs")
    assert_one_error(_train(recipe, "data.name=imagefolder", f"data.root={json.dumps(str(root))}",
                            "data.options={size=16}", "augment.colour=1", out=tmp / "run"), capsys, "colour")
    assert not (tmp / "cache").exists()  # no cache was built for a recipe that cannot run


def test_packed_folder_has_one_split(env, capsys):
    _, _, _, tmp = env
    root = _tree(tmp / "imgs")
    run_cli(["data", "pack", root, tmp / "packed", "--size", "8", "--quiet"], capsys)
    assert_one_error(["data", "info", "npz", "--root", tmp / "packed", "--split", "test"], capsys,
                     "packed image folder", "eval.test_split")
