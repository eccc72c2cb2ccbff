"""Data-source contract: a toy source registered in one line trains and evaluates through the CLI;
the built-in sets are registered sources; unknown names and options are one line."""

import json

import pytest

import toy_source  # noqa: F401  (registers "toy_blobs")
from cli_helpers import RECIPE, run_cli
from ssl_aug.data import BatchSource, DataSource, get_source, list_sources, load_dataset
from ssl_aug.errors import SslAugError


def test_builtin_sources_are_registered_and_batch_sources_follow_the_contract():
    assert {"cifar10", "cifar100", "stl10", "imagefolder", "npz", "embedded", "toy_blobs"} <= set(list_sources())
    ds = load_dataset("toy_blobs", "train", n_per_class=4)
    assert len(ds) == 8 and ds.classes == ["dark", "bright"]
    from ssl_aug.config import DataConfig

    batches = get_source("toy_blobs").batches(DataConfig(name="toy_blobs"), ds, split="train", batch_size=4,
                                              seed=0, rank=0, world_size=1, device="cpu")
    assert isinstance(batches, BatchSource) and isinstance(batches, DataSource) and len(batches) == 2
    seen = [idx for idx, images in batches]
    assert sorted(int(i) for idx in seen for i in idx) == list(range(8))


def test_unknown_source_option_and_stream_are_one_line():
    with pytest.raises(SslAugError, match=r"data.options key 'size' is not an option of data set 'toy_blobs'; "
                                          r"allowed: n_per_class"):
        load_dataset("toy_blobs", "train", size=3)
    with pytest.raises(SslAugError, match="did you mean 'toy_blobs'"):
        load_dataset("toy_blob", "train")
    from ssl_aug.config import DataConfig

    with pytest.raises(SslAugError, match="data.stream = true is not supported for data.name = 'toy_blobs'"):
        get_source("toy_blobs").batches(DataConfig(name="toy_blobs", stream=True), None, split="train",
                                        batch_size=4, seed=0, rank=0, world_size=1, device="cpu")


def test_toy_source_through_ssl_aug_train_and_eval(tmp_path, capsys):
    recipe = tmp_path / "r.toml"
    recipe.write_text(RECIPE.replace('name = "embedded"\noptions = {n_per_class = 4, size = 16}',
                                     'name = "toy_blobs"'))
    run = tmp_path / "run"
    code, err, _ = run_cli(["train", recipe, f"output_dir={run}", "eval.final_knn=true", "eval.knn_k=5"], capsys)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    assert 0.0 <= result["knn_top1"] <= 1.0 and result["steps"] == 4
    code, err, out = run_cli(["eval", run, "--k", "5"], capsys)
    assert code == 0, err
    assert "kNN (k=5" in out
