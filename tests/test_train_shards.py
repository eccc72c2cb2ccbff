"""Training from a shard pack end to end: crops streamed, views finished on the device, exact resume
from a mid-epoch checkpoint, a packed shard folder accepted as an image-folder root."""

import json

import pytest
import torch

from ssl_aug.checkpoint import load_checkpoint
from ssl_aug.cli import main
from ssl_aug.data.shard_pack import pack_shards

from test_data_stream import make_tree

RECIPE = """
seed = 2
device = "cpu"
[data]
name = "{name}"
root = {root}
options = {{ workers = 2 }}
[model]
backbone = "small_cnn"
[method]
name = "simclr"
proj_hidden_dim = 16
proj_dim = 8
[augment]
views = 2
size = 24
color_jitter = {{ brightness = 0.4, contrast = 0.4, saturation = 0.4, hue = 0.1, p = 0.8 }}
grayscale_p = 0.2
multicrop = {{ local_views = 2, size = 12 }}
[train]
epochs = 2
batch_size = 16
lr = 0.1
log_every = 1
checkpoint_every = 3
keep_checkpoints = 10
threads = 1
[eval]
final_knn = true
knn_k = 5
test_split = "train"
"""


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trainshards")
    dst = tmp / "shards"
    pack_shards(make_tree(tmp / "tree", n=64), dst, shard_size=16, workers=1, verbose=False)
    return tmp, dst


def _train(recipe, run, *extra):
    return main(["train", str(recipe), f"output_dir={json.dumps(str(run))}", "--no-progress", *extra])


@pytest.mark.slow
def test_trains_from_shards_and_resumes_exactly(packed, tmp_path):
    tmp, dst = packed
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(name="shards", root=json.dumps(str(dst))))
    full = tmp_path / "full"
    assert _train(recipe, full) == 0
    last = load_checkpoint(full / "checkpoints" / "last.pt")
    assert last["step"] == 2 * (64 // 16)
    results = json.loads((full / "eval.json").read_text())
    assert 0.0 <= results["knn_top1"] <= 1.0

    resumed = tmp_path / "resumed"  # from step 3: mid-way through epoch 1
    (resumed / "checkpoints").mkdir(parents=True)
    (resumed / "checkpoints" / "step_00000003.pt").write_bytes((full / "checkpoints" / "step_00000003.pt").read_bytes())
    assert _train(recipe, resumed, "--resume") == 0
    got = load_checkpoint(resumed / "checkpoints" / "last.pt")
    for name, tensor in last["model"].items():
        assert torch.equal(tensor, got["model"][name]), name


def test_image_folder_recipe_accepts_a_shard_pack_as_root(packed, tmp_path, capsys):
    _, dst = packed
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(name="imagefolder", root=json.dumps(str(dst))).replace("epochs = 2", "epochs = 1")
                      .replace("final_knn = true", "final_knn = false"))
    assert _train(recipe, tmp_path / "run") == 0
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4


@pytest.mark.slow
def test_a_large_image_folder_streams_from_shards_it_packs_once(packed, tmp_path, monkeypatch, capsys):
    from ssl_aug.data import shard_cache, shard_pack
    from ssl_aug.train import setup

    tmp, _ = packed
    monkeypatch.setenv("SSL_AUG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(shard_cache, "STREAM_ABOVE_BYTES", 1000)  # any tree is "large"
    monkeypatch.setattr(setup, "_AUTO_SHARDS", {})
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.format(name="imagefolder", root=json.dumps(str(tmp / "tree")))
                      .replace("epochs = 2", "epochs = 1").replace("final_knn = true", "final_knn = false"))
    assert _train(recipe, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert sum("streaming crops from shards of the original images" in line for line in err.splitlines()) == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 4

    def boom(*a, **k):
        raise AssertionError("packed again")

    monkeypatch.setattr(shard_pack, "pack_shards", boom)
    monkeypatch.setattr(setup, "_AUTO_SHARDS", {})
    assert shard_cache.auto_shards(tmp / "tree", 96, verbose=False) is not None  # the finished pack is reused
