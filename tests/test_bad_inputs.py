"""Bad-input corpus: every case goes through the CLI and must give exit code 2 and exactly one stderr
line `ssl-aug: error: ...` naming the problem, never a traceback; or, for image files inside a folder
being packed, a counted skip.

Cases: recipes, CLI arguments, npz shards, image folders, checkpoints, exported encoders.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_helpers import RECIPE, assert_one_error, run_cli


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE.replace('name = "embedded"', f'name = "embedded"\nroot = "{tmp_path / "data"}"'))
    return path


# ----------------------------------------------------------------------------- recipes + CLI arguments
RECIPE_CASES = {
    "unknown key": (["train.epochz=3"], ["train.epochz", "allowed"]),
    "bad choice": (["train.optimizer=rmsprop"], ["rmsprop", "sgd"]),
    "bad type": (["train.epochs=ten"], ["train.epochs", "int"]),
    "non-positive value": (["train.lr=-1"], ["train.lr", "> 0"]),
    "unknown method": (["method.name=mocov9"], ["mocov9", "simclr"]),
    "unknown method option": (["method.foo=1"], ["foo", "simclr"]),
    "unknown backbone": (["model.backbone=vgg"], ["vgg", "small_cnn"]),
    "unknown augment key": (["augment.colour_jitter=1"], ["colour_jitter"]),
    "override without =": (["trainepochs5"], ["trainepochs5", "key=value"]),
    "override into a value": (["train.epochs.x=1"], ["train.epochs.x"]),
    "unknown dataset": (["data.name=imagenet21k"], ["imagenet21k", "cifar10"]),
    "batch larger than data": (["train.batch_size=4096"], ["4096"]),
    "NaN learning rate": (["train.lr=nan"], ["train.lr", "finite"]),
    "infinite learning rate": (["train.lr=inf"], ["train.lr", "finite"]),
    "NaN momentum": (["train.momentum=nan"], ["train.momentum", "finite"]),
    "momentum above 1": (["train.momentum=1.5"], ["train.momentum", "<= 1"]),
    "negative weight decay": (["train.weight_decay=-0.1"], ["train.weight_decay", ">= 0"]),
    "negative threads": (["train.threads=-2"], ["train.threads", ">= 0"]),
    "negative max_steps": (["train.max_steps=-1"], ["train.max_steps", ">= 0"]),
    "seed too large": (["seed=99999999999999999"], ["seed", "<= 4294967295"]),
    "negative seed": (["seed=-1"], ["seed", ">= 0"]),
    "huge epochs": (["train.epochs=9223372036854775807"], ["train.epochs", "<= 2147483647"]),
    "NaN inside a method option": (["method.temperature=nan"], ["method.temperature", "finite"]),
    "inf inside an augment list": (["augment.scale=[0.2, inf]"], ["augment.scale[1]", "finite"]),
    "NUL in a path": (['data.root="a\\u0000b"'], ["data.root", "NUL"]),
}


@pytest.mark.parametrize("case", sorted(RECIPE_CASES))
def test_bad_recipe_values(case, recipe, tmp_path, capsys):
    overrides, words = RECIPE_CASES[case]
    if case.startswith("unknown method"):  # the backbone is built first
        pytest.importorskip("ssl_aug.models.small_cnn")
    assert_one_error(["train", recipe, *overrides, f"output_dir={json.dumps(str(tmp_path / 'run'))}",
                      "--no-progress"], capsys, *words)


def test_bad_toml_syntax(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("seed = 0\n[train\nepochs = 1\n")
    assert_one_error(["train", bad], capsys, "bad.toml", "not valid TOML")


def test_recipe_not_utf8(tmp_path, capsys):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes('description = "caf\u00e9"\n'.encode("latin-1"))
    assert_one_error(["train", bad], capsys, "latin1.toml", "not UTF-8")


def test_override_not_utf8(recipe, tmp_path, capsys):
    """A command-line argument with bytes that are not UTF-8 (Python keeps them as surrogates)."""
    bad = b"caf\xe9".decode("utf-8", "surrogateescape")
    assert_one_error(["train", recipe, f"description={bad}", f"output_dir={json.dumps(str(tmp_path / 'run'))}"],
                     capsys, "description", "UTF-8")
    assert not (tmp_path / "run").exists()


def test_missing_recipe_file(tmp_path, capsys):
    assert_one_error(["train", tmp_path / "nope.toml"], capsys, "nope.toml", "not found")


ARGPARSE_CASES = {
    "no recipe": (["train"], ["recipe"]),
    "unknown command": (["frobnicate"], ["frobnicate"]),
    "unknown option": (["train", "x.toml", "--bogus"], ["--bogus"]),
}


@pytest.mark.parametrize("case", sorted(ARGPARSE_CASES))
def test_bad_cli_arguments(case, capsys):
    argv, words = ARGPARSE_CASES[case]
    assert_one_error(argv, capsys, *words)


def test_bad_cli_arguments_never_traceback(capsys):
    """Whatever the formatting, argparse failures exit 2 with an 'error:' line and no traceback."""
    for argv, words in ARGPARSE_CASES.values():
        code, lines, _ = run_cli(argv, capsys)
        assert code == 2 and "Traceback" not in "\n".join(lines)
        assert any("error:" in line and all(w in line for w in words) for line in lines), lines


# ----------------------------------------------------------------------------- npz shards
def _write_npz(path: Path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)


def _good(n=6, size=8):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), np.arange(n) % 3


NPZ_CASES = {
    "grayscale shape": (lambda d: _write_npz(d / "train.npz", x=np.zeros((4, 8, 8), np.uint8), y=np.zeros(4)),
                        ["shape", "(N,H,W,3) uint8"]),
    "float images": (lambda d: _write_npz(d / "train.npz", x=np.zeros((4, 8, 8, 3), np.float32),
                                          y=np.zeros(4, np.int64)), ["float32", "uint8"]),
    "label count": (lambda d: _write_npz(d / "train.npz", x=_good()[0], y=np.zeros(5, np.int64)), ["y has shape"]),
    "label range": (lambda d: _write_npz(d / "train.npz", x=_good()[0], y=np.full(6, -7)), ["labels span"]),
    "float labels": (lambda d: _write_npz(d / "train.npz", x=_good()[0], y=np.zeros(6, np.float32)),
                     ["integer"]),
    "no x array": (lambda d: _write_npz(d / "train.npz", images=_good()[0], y=_good()[1]), ["'x'"]),
    "not a zip": (lambda d: (d.mkdir(parents=True), (d / "train.npz").write_bytes(b"\x00garbage" * 10)),
                  ["not a readable npz"]),
    "mixed sizes": (lambda d: (_write_npz(d / "train" / "a.npz", x=_good(size=8)[0], y=_good()[1]),
                               _write_npz(d / "train" / "b.npz", x=_good(size=16)[0], y=_good()[1])),
                    ["16x16", "8x8"]),
    "no shards": (lambda d: d.mkdir(parents=True), ["no .npz shards"]),
    "zero images": (lambda d: _write_npz(d / "train.npz", x=np.zeros((0, 8, 8, 3), np.uint8), y=np.zeros(0, np.int64)),
                    ["hold no images", "(0, 8, 8, 3)"]),
    "missing folder": (lambda d: None, ["does not exist"]),
}


@pytest.mark.parametrize("case", sorted(NPZ_CASES))
def test_bad_npz_shards(case, tmp_path, capsys):
    make, words = NPZ_CASES[case]
    folder = tmp_path / "shards"
    make(folder)
    assert_one_error(["data", "info", "npz", "--root", folder], capsys, *words)


def test_training_on_an_npz_shard_with_zero_images(recipe, tmp_path, capsys):
    folder = tmp_path / "shards"
    _write_npz(folder / "train.npz", x=np.zeros((0, 16, 16, 3), np.uint8), y=np.zeros(0, np.int64))
    line = assert_one_error(["train", recipe, "data.name=npz", f"data.root={json.dumps(str(folder))}", "data.options={}",
                             f"output_dir={json.dumps(str(tmp_path / 'run'))}", "--no-progress"], capsys,
                            "hold no images")
    assert "no labels" not in line


# ----------------------------------------------------------------------------- image folders
def _image_bytes(mode="RGB", fmt="JPEG", size=(12, 10)):
    from PIL import Image

    buf = io.BytesIO()
    color = {"RGB": (200, 30, 30), "CMYK": (0, 200, 200, 0), "L": 128, "RGBA": (0, 0, 255, 128)}[mode]
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


def test_bad_image_files_are_counted_skips(tmp_path, capsys, monkeypatch):
    """Corrupt, 0-byte, truncated and mislabelled-extension files are skipped and counted; CMYK,
    grayscale and RGBA images are converted to RGB and kept."""
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "good.jpg").write_bytes(_image_bytes())
    (root / "a" / "cmyk.jpg").write_bytes(_image_bytes("CMYK"))
    (root / "a" / "gray.png").write_bytes(_image_bytes("L", "PNG"))
    (root / "b" / "alpha.png").write_bytes(_image_bytes("RGBA", "PNG"))
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 3)
    (root / "b" / "truncated.png").write_bytes(_image_bytes("RGB", "PNG", (64, 64))[:60])
    (root / "b" / "text.jpg").write_text("hello")
    code, lines, out = run_cli(["data", "info", "imagefolder", "--root", root], capsys)
    assert code == 0 and "Traceback" not in "\n".join(lines)
    assert ": 5 images" in out, out
    report = json.loads(next((tmp_path / "cache").rglob("pack_report.json")).read_text())
    assert report["images"] == 5
    assert sum(len(v) for v in report["skipped"].values()) == 4  # empty, corrupt, truncated, text.jpg


def test_odd_files_in_an_image_folder_are_counted_listed_skips(tmp_path, capsys, monkeypatch):
    """Dangling and self-referencing symlinks, a file that cannot be read, a file that changes while it is
    read: each a counted skip listed under its reason; a name that is not UTF-8 is packed and counted."""
    import os

    import PIL.Image

    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        (root / cls / "good.jpg").write_bytes(_image_bytes())
    (root / "a" / "moved.jpg").symlink_to(tmp_path / "gone.jpg")  # dangling: its target was moved
    (root / "a" / "loop.jpg").symlink_to(root / "a" / "loop.jpg")  # refers to itself
    (root / "b" / "locked.jpg").write_bytes(_image_bytes())
    (root / "b" / "growing.jpg").write_bytes(_image_bytes())
    (root / "b").joinpath(os.fsdecode(b"caf\xe9.jpg")).write_bytes(_image_bytes())  # Latin-1 name
    (root / "b" / "loop_dir").symlink_to(root / "b")  # a folder link back up (not followed)
    real_open = PIL.Image.open

    def user_open(path, *args, **kwargs):
        name = os.path.basename(str(path))
        if name == "locked.jpg":  # root reads any file: a permission error stands in for chmod 000
            raise PermissionError(13, "Permission denied", str(path))
        if name == "growing.jpg":  # another program appends to the file while it is decoded
            with open(path, "ab") as f:
                f.write(b"\0" * 16)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(PIL.Image, "open", user_open)
    code, lines, out = run_cli(["data", "info", "imagefolder", "--root", root], capsys)
    assert code == 0 and "Traceback" not in "\n".join(lines), lines
    assert ": 3 images" in out, out  # good.jpg x2 + the Latin-1 name
    report = json.loads(next((tmp_path / "cache").rglob("pack_report.json")).read_text())
    skipped = {reason: sorted(x.split(":")[0] for x in items) for reason, items in report["skipped"].items()}
    assert skipped["broken_link"] == ["a/loop.jpg", "a/moved.jpg"]
    assert skipped["unreadable"] == ["b/locked.jpg"]
    assert skipped["changed_while_packing"] == ["b/growing.jpg"]
    assert report["non_utf8_names"] == 1 and report["images"] == 3


def test_tree_fingerprint_survives_broken_links_and_sees_them_fixed(tmp_path):
    from ssl_aug.data.imagefolder import tree_fingerprint

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.jpg").symlink_to(tmp_path / "target.jpg")
    (tmp_path / "a" / "self.jpg").symlink_to(tmp_path / "a" / "self.jpg")
    broken = tree_fingerprint(tmp_path / "a", 32)
    (tmp_path / "target.jpg").write_bytes(_image_bytes())
    assert tree_fingerprint(tmp_path / "a", 32) != broken  # the link now resolves: the pack is redone


def test_image_folder_without_decodable_images(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "imgs"
    (root / "a").mkdir(parents=True)
    (root / "a" / "empty.jpg").write_bytes(b"")
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG nonsense")
    assert_one_error(["data", "info", "imagefolder", "--root", root], capsys, "no decodable images")


def test_image_folder_missing(tmp_path, capsys):
    assert_one_error(["data", "info", "imagefolder", "--root", tmp_path / "nowhere"], capsys, "does not exist")


# ----------------------------------------------------------------------------- checkpoints and exports
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real 2-step run (small_cnn) and its export: (run_dir, export_dir)."""
    pytest.importorskip("ssl_aug.models.small_cnn")
    from ssl_aug.config import load_recipe
    from ssl_aug.export import export_encoder
    from ssl_aug.train import Trainer

    tmp = tmp_path_factory.mktemp("trained")
    (tmp / "recipe.toml").write_text(RECIPE.replace('name = "embedded"', f'name = "embedded"\nroot = "{tmp / "data"}"'))
    cfg = load_recipe(tmp / "recipe.toml", [f"output_dir={json.dumps(str(tmp / 'run'))}", "train.max_steps=2"])
    Trainer(cfg, progress=False).fit()
    export_encoder(tmp / "run", tmp / "export")
    return tmp / "run", tmp / "export", tmp / "recipe.toml"


def _copy_run(run: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(run, dst)
    return dst


def test_truncated_checkpoint(trained, tmp_path, capsys):
    ckpt = tmp_path / "cut.pt"
    data = (trained[0] / "checkpoints" / "last.pt").read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    assert_one_error(["export", ckpt, "--out", tmp_path / "out"], capsys, "cut.pt", "truncated")


def test_text_file_as_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "notes.pt"
    ckpt.write_text("these are my notes\n")
    assert_one_error(["export", ckpt, "--out", tmp_path / "out"], capsys, "notes.pt")


def test_foreign_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ckpt)
    assert_one_error(["export", ckpt, "--out", tmp_path / "out"], capsys, "foreign.pt", "ssl_aug checkpoint")


def test_checkpoint_from_a_newer_version(trained, tmp_path, capsys):
    ckpt = torch.load(trained[0] / "checkpoints" / "last.pt", weights_only=True)
    ckpt["version"] = 99
    torch.save(ckpt, tmp_path / "future.pt")
    assert_one_error(["export", tmp_path / "future.pt", "--out", tmp_path / "out"], capsys, "version 99")


def test_checkpoint_with_wrong_architecture_weights(trained, tmp_path, capsys):
    ckpt = torch.load(trained[0] / "checkpoints" / "last.pt", weights_only=True)
    name = next(k for k in ckpt["model"] if k.startswith("backbone.") and ckpt["model"][k].dim() == 4)
    ckpt["model"][name] = torch.zeros(1, 1, 1, 1)
    torch.save(ckpt, tmp_path / "wrong.pt")
    assert_one_error(["export", tmp_path / "wrong.pt", "--out", tmp_path / "out"], capsys, "mismatch")


def test_resume_with_another_backbone(trained, tmp_path, capsys):
    run = _copy_run(trained[0], tmp_path / "run")
    assert_one_error(["train", trained[2], f"output_dir={json.dumps(str(run))}", "model.backbone=cifar_resnet18",
                      "--resume", "--no-progress"], capsys, "backbone", "small_cnn", "cifar_resnet18")


def test_resume_from_a_corrupted_last_checkpoint(trained, tmp_path, capsys):
    run = _copy_run(trained[0], tmp_path / "run")
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.unlink()  # last.pt is a hard link: write a new, damaged file instead of editing the shared one
    last.write_bytes(data[:100])
    assert_one_error(["train", trained[2], f"output_dir={json.dumps(str(run))}", "--resume", "--no-progress"],
                     capsys, "last.pt", "truncated")


def test_training_into_a_used_run_dir_without_resume(trained, tmp_path, capsys):
    run = _copy_run(trained[0], tmp_path / "run")
    assert_one_error(["train", trained[2], f"output_dir={json.dumps(str(run))}", "--no-progress"], capsys,
                     "already has checkpoints", "--resume")


def _copy_export(export: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(export, dst)
    return dst


def test_export_with_tampered_weights(trained, tmp_path, capsys):
    folder = _copy_export(trained[1], tmp_path / "export")
    from safetensors.torch import load_file, save_file

    weights = folder / "model.safetensors"
    state = load_file(weights)
    key = next(iter(state))
    state[key] = state[key] + 1
    save_file(state, weights)
    assert_one_error(["eval", folder, "--no-progress"], capsys, "altered", "sha256")


def test_export_with_garbage_weights_and_matching_hash(trained, tmp_path, capsys):
    import hashlib
    import json

    folder = _copy_export(trained[1], tmp_path / "export")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    meta = json.loads((folder / "encoder.json").read_text())
    meta["files"]["model.safetensors"]["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    (folder / "encoder.json").write_text(json.dumps(meta))
    assert_one_error(["eval", folder, "--no-progress"], capsys, "model.safetensors", "not a readable safetensors")


def test_export_missing_encoder_json(trained, tmp_path, capsys):
    folder = _copy_export(trained[1], tmp_path / "export")
    (folder / "encoder.json").unlink()
    assert_one_error(["eval", folder / "encoder.json", "--no-progress"], capsys, "encoder.json")


def test_export_dir_without_encoder_json(trained, tmp_path, capsys):
    folder = _copy_export(trained[1], tmp_path / "export")
    (folder / "encoder.json").unlink()
    assert_one_error(["eval", folder, "--no-progress"], capsys, str(folder))


def test_export_with_broken_encoder_json(trained, tmp_path, capsys):
    folder = _copy_export(trained[1], tmp_path / "export")
    (folder / "encoder.json").write_text("{not json")
    assert_one_error(["eval", folder, "--no-progress"], capsys, "encoder.json", "not valid JSON")


def test_export_missing_weights(trained, tmp_path, capsys):
    folder = _copy_export(trained[1], tmp_path / "export")
    (folder / "model.safetensors").unlink()
    assert_one_error(["eval", folder, "--no-progress"], capsys, "missing")


def test_subprocess_prints_no_traceback(tmp_path):
    """The installed entry point (`python -m ssl_aug`) behaves like main(): exit 2, one line."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepochs = 'many'\n")
    proc = subprocess.run([sys.executable, "-m", "ssl_aug", "train", str(bad), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("ssl-aug: error: "), proc.stderr
    assert "train.epochs" in lines[0]



@pytest.mark.parametrize("seeds", ["0", "-1", str(2**63)])
def test_ablation_seeds_out_of_range_are_one_line(capsys, seeds):
    """--seeds 0 was silently the spec's default and 2**63 planned that many runs (hung)."""
    assert_one_error(["ablate", "ablate_color_cifar10", "--seeds", seeds, "--dry-run"], capsys, "seeds", "1 to 1000")
