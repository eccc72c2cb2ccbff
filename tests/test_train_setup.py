"""Trainer setup and state on paths a CPU machine cannot take for real: CUDA mocked (device choice per
rank, process-group backend, per-rank CUDA RNG, GPU memory check, CUDA-event timing), training splits
(STL-10 unlabeled), streamed npz shards, shipped CIFAR-100 / STL-10 recipes, rank-0-only monitor."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ssl_aug import distributed as dist
from ssl_aug.config import load_recipe
from ssl_aug.errors import SslAugError
from ssl_aug.train import Trainer
from ssl_aug.train import setup as setup_mod
from ssl_aug.train import state as state_mod
from ssl_aug.train.metrics import StepTimer
from trainer_fixtures import tiny_config, tiny_data

pytest.importorskip("ssl_aug.models.small_cnn")


# ------------------------------------------------------------------ device and backend (CUDA mocked)
def test_cuda_ranks_take_their_local_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "1")
    cfg = tiny_config(tmp_path)
    cfg.device = "cuda"
    assert setup_mod.training_device(cfg, world_size=2) == torch.device("cuda", 1)
    assert setup_mod.training_device(cfg, world_size=1) == torch.device("cuda")
    cfg.device = "cpu"
    assert setup_mod.training_device(cfg, world_size=2) == torch.device("cpu")


@pytest.mark.parametrize("device, backend, chosen", [("cpu", "gloo", "cpu"), ("auto", "nccl", "cuda:1"),
                                                      ("cuda", "nccl", "cuda:1")])
def test_backend_follows_the_recipe_device(monkeypatch, device, backend, chosen):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", d)))
    monkeypatch.setattr(dist.dist, "init_process_group", lambda backend, init_method: calls.append(backend))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.init_from_env(device) == torch.device(chosen)
    assert calls[-1] == backend
    assert (("set_device", torch.device("cuda", 1)) in calls) == (backend == "nccl")


# ------------------------------------------------------------------ RNG state (CUDA mocked)
class FakeCudaRng:
    """Per-device CUDA RNG states as distinct CPU byte tensors."""

    def __init__(self):
        self.states = {i: torch.full((16,), i + 1, dtype=torch.uint8) for i in range(2)}

    def get(self, device="cuda"):
        return self.states[torch.device(device).index or 0].clone()

    def set(self, state, device="cuda"):
        assert state.device.type == "cpu", "CUDA RNG states must be set from CPU tensors"
        self.states[torch.device(device).index or 0] = state.clone()


def test_each_rank_saves_and_restores_its_own_cuda_rng(monkeypatch):
    fake = FakeCudaRng()
    monkeypatch.setattr(torch.cuda, "get_rng_state", fake.get)
    monkeypatch.setattr(torch.cuda, "set_rng_state", fake.set)
    gen = torch.Generator().manual_seed(0)
    saved = state_mod.rng_state(gen, torch.device("cuda", 1))
    assert torch.equal(saved["cuda"], torch.full((16,), 2, dtype=torch.uint8))  # device 1's own state
    fake.states[1] = torch.zeros(16, dtype=torch.uint8)
    state_mod.set_rng_state(saved, gen, torch.device("cuda", 1))
    assert torch.equal(fake.states[1], torch.full((16,), 2, dtype=torch.uint8))
    assert torch.equal(fake.states[0], torch.full((16,), 1, dtype=torch.uint8))  # rank 0's untouched
    old_style = dict(saved, cuda=[torch.full((16,), 7, dtype=torch.uint8), torch.full((16,), 9, dtype=torch.uint8)])
    state_mod.set_rng_state(old_style, gen, torch.device("cuda", 1))  # a list of all devices' states
    assert torch.equal(fake.states[1], torch.full((16,), 9, dtype=torch.uint8))


def test_resume_reads_the_checkpoint_on_cpu(tmp_path, monkeypatch):
    """Checkpoints are read with map_location='cpu' (never the CUDA device): RNG states stay loadable."""
    cfg = tiny_config(tmp_path, max_steps=3)
    first = Trainer(cfg, progress=False, train_data=tiny_data())
    first.total_steps = 2  # stop early, the recipe unchanged
    first.fit()
    seen = []
    from ssl_aug.train import trainer as trainer_mod

    original = trainer_mod.load_checkpoint

    def spy(path, map_location="cpu"):
        seen.append(map_location)
        return original(path, map_location=map_location)

    monkeypatch.setattr(trainer_mod, "load_checkpoint", spy)
    cfg = tiny_config(tmp_path, max_steps=3)
    Trainer(cfg, progress=False, train_data=tiny_data()).fit(resume=True)
    assert seen == ["cpu"]


# ------------------------------------------------------------------ GPU memory check and timers (mocked)
def test_training_set_too_big_for_the_gpu_is_refused_with_its_size(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (4 * 2**30, 80 * 2**30))
    setup_mod.check_fits_device(1 * 2**30, torch.device("cuda", 0), "the training set")  # fits: no error
    with pytest.raises(SslAugError) as info:
        setup_mod.check_fits_device(3 * 2**30, torch.device("cuda", 0), "the training set (9 images)")
    message = str(info.value)
    assert "\n" not in message and "3.0 GiB" in message and "4.0 of 80.0 GiB free" in message
    assert "data.stream" in message
    setup_mod.check_fits_device(10**15, torch.device("cpu"), "x")  # CPU: no check


def test_step_timer_uses_cuda_events_on_cuda(monkeypatch):
    class FakeEvent:
        clock = 0.0

        def __init__(self, enable_timing=False):
            assert enable_timing
            self.t, self.synced = None, False

        def record(self):
            FakeEvent.clock += 1.0
            self.t = FakeEvent.clock

        def synchronize(self):
            self.synced = True

        def elapsed_time(self, other):  # milliseconds, like CUDA
            return (other.t - self.t) * 1000.0

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    timer = StepTimer(torch.device("cuda", 0))
    for _ in range(2):
        a, b = timer.mark(), timer.mark()
        c = timer.mark()
        c.t += 2.0  # the step's device work took 3 s, views 1 s
        timer.add(a, b, c)
    assert timer.totals() == (2.0, 8.0) and c.synced
    assert timer.view_share() == pytest.approx(0.25)
    cpu = StepTimer(torch.device("cpu"))
    cpu.add(0.0, 0.25, 1.0)
    assert cpu.view_share() == 0.25


# ------------------------------------------------------------------ training splits, streaming, recipes
def _write_stl(root, n_train=8, n_test=8, n_unl=40):
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for split, n in (("train", n_train), ("test", n_test), ("unlabeled", n_unl)):
        rng.integers(0, 256, n * 3 * 96 * 96, dtype=np.uint8).tofile(d / f"{split}_X.bin")
        if split != "unlabeled":
            (np.arange(n) % 2 + 1).astype(np.uint8).tofile(d / f"{split}_y.bin")
    (d / "class_names.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n")
    (d / "fold_indices.txt").write_text("\n".join("0 1 2" for _ in range(10)))


@pytest.mark.parametrize("split, n_images", [("unlabeled", 40), ("train+unlabeled", 48)])
def test_stl10_unlabeled_splits_train_and_evaluate_on_labelled_train(tmp_path, split, n_images):
    from ssl_aug.workflows.experiment import run_experiment

    _write_stl(tmp_path / "data")
    cfg = load_recipe("simclr_stl10", [f"data.root={json.dumps(str(tmp_path / 'data'))}", f"data.split={json.dumps(split)}",
                                       "device=\"cpu\"", "model.backbone=\"small_cnn\"", "augment.size=16",
                                       "augment.blur.kernel_size=3", "train.batch_size=8", "train.max_steps=2",
                                       "train.amp=\"none\"", "eval.knn_every=0", "eval.knn_k=3",
                                       f"output_dir={json.dumps(str(tmp_path / 'run'))}"])
    results = run_experiment(cfg, progress=False)
    assert results["steps"] == 2 and 0.0 <= results["knn_top1"] <= 1.0
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["batch_source"]["num_samples"] == n_images  # trained on the requested split


def test_shipped_cifar100_and_stl10_recipes_validate():
    from ssl_aug.augment.recipe import build_views

    c100, stl = load_recipe("simclr_cifar100"), load_recipe("simclr_stl10")
    assert c100.data.name == "cifar100" and stl.data.name == "stl10" and stl.data.split == "train+unlabeled"
    assert build_views(stl.augment).specs[0].size == 96


def _write_shards(folder, n_shards=3, per_shard=24, size=16):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n_shards):
        x = rng.integers(0, 256, (per_shard, size, size, 3), dtype=np.uint8)
        np.savez(folder / f"train_{i}.npz", x=x, y=np.arange(per_shard) % 4)


def test_data_stream_trains_from_shards_and_resumes_exactly(tmp_path):
    from ssl_aug.config import config_from_dict
    from ssl_aug.data import ShardStream

    _write_shards(tmp_path / "shards")

    def cfg(run, max_steps):
        base = tiny_config(tmp_path, max_steps=max_steps).to_dict()
        base["data"] = {"name": "npz", "root": str(tmp_path / "shards"), "stream": True}
        base["output_dir"] = str(tmp_path / run)
        return config_from_dict(base)

    full = Trainer(cfg("full", 0), progress=False)
    assert isinstance(full.source, ShardStream) and full.data is None and full.steps_per_epoch == 72 // 32
    full.fit()
    Trainer(cfg("part", 0), progress=False).fit()  # same run, then cut and resume from step 2
    part = tmp_path / "part" / "checkpoints"
    for p in part.glob("step_*.pt"):
        if p.name != "step_00000002.pt":
            p.unlink()
    (part / "last.pt").unlink()
    resumed = Trainer(cfg("part", 0), progress=False)
    resumed.fit(resume=True)
    for key, value in full.method.state_dict().items():
        assert torch.equal(value, resumed.method.state_dict()[key]), key
    with pytest.raises(SslAugError, match="not supported for data.name = 'embedded'"):
        bad = tiny_config(tmp_path)
        bad.data.stream = True
        Trainer(bad, progress=False)


def test_epoch_callbacks_run_on_rank_zero_only(tmp_path):
    calls = []
    cfg = tiny_config(tmp_path, epochs=1)
    cfg.eval.knn_every = 1
    trainer = Trainer(cfg, progress=False, train_data=tiny_data(), callbacks=[lambda t, e: calls.append(e) or {}])
    trainer.is_main = False  # as on rank 1 (writes nothing, runs no monitor)
    trainer.metrics.enabled = False
    trainer.fit()
    assert calls == []
    cfg = tiny_config(tmp_path / "b", epochs=1)
    cfg.eval.knn_every = 1
    Trainer(cfg, progress=False, train_data=tiny_data(), callbacks=[lambda t, e: calls.append(e) or {}]).fit()
    assert calls == [1]
