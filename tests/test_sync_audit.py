"""The sync audit sees every transfer, and no training step, view call, loss call or data-source batch
stalls a device: for every registered method, preset, augmentation op, mixing mode and batch source."""

import numpy as np
import pytest
import torch

from ssl_aug.augment import OPS, MultiView, get_preset
from ssl_aug.augment.mix import MIX_MODES, mix_batch, mix_view, parse_mix
from ssl_aug.augment.presets import PRESETS
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.data import BatchSource, ImageDataset, ShardStream
from ssl_aug.errors import SslAugError
from ssl_aug.methods import METHODS, method_options
from ssl_aug.train.sync_audit import AUDIT_DEVICE as D
from ssl_aug.train.sync_audit import SyncAudit
from ssl_aug.train.sync_checks import (audit_call, audit_method_step, audit_source, audit_trainer_step,
                                       audit_views)


def test_detector_sees_every_kind_of_transfer_and_names_the_line():
    x = torch.ones(4, device=D)
    with SyncAudit() as audit:
        torch.tensor([0, 1], device=D)        # Python data onto the device (invisible to a dispatch mode)
        x.new_tensor(1.0)                     # same, via new_tensor
        x.sum().item()                        # scalar read
        bool(x.any())                         # implicit read by an `if`
        x.tolist()
        x.cpu()                               # device->host copy
        x.nonzero()                           # data-dependent shape
        x[x > 0]                              # boolean-mask indexing
        x[[0, 1]]                             # Python list index: an upload
        x.index_select(0, torch.tensor([0]))  # CPU index set into a device op
        torch.ones(2).to(D)                   # blocking upload
        torch.ones(2).to(D, non_blocking=True)  # allowed
    kinds = [e.kind for e in audit.events]
    assert kinds == ["h2d_blocking", "h2d_blocking", "d2h", "d2h", "d2h", "d2h", "sync", "sync", "h2d_blocking",
                     "h2d_blocking", "h2d_blocking", "h2d_async"]
    assert all(e.where.startswith("?") for e in audit.events)  # no ssl_aug frame in this test
    with pytest.raises(SslAugError, match="11 host<->device stall"):
        audit.check("test")


def test_detector_sees_a_python_scalar_written_at_tensor_indices():
    """`used[idx] = True` uploads the Python value (it synced SwAV's step on an H200); a slice fill does not."""
    used, idx = torch.zeros(5, device=D), torch.zeros(3, dtype=torch.long, device=D)
    with SyncAudit() as audit:
        used[idx] = True                      # index_put_ of a host scalar: an upload
        used[1:3] = 0.0                       # a fill: nothing crosses
        used.scatter_(0, idx, 1.0)            # the scalar is a kernel argument: nothing crosses
    assert [e.kind for e in audit.events] == ["h2d_blocking"]
    assert "Python scalar written" in audit.events[0].what


def test_detector_names_the_library_line():
    from ssl_aug.augment.mix import _beta  # noqa: F401  (any library function that uploads will do)
    from ssl_aug.device import upload

    with SyncAudit() as audit:
        upload(torch.ones(2), D)
    assert audit.counts() == {"h2d_async": 1}
    assert audit.events[0].where.startswith("ssl_aug/device.py:")
    audit.check("upload", max_async_copies=1)
    with pytest.raises(SslAugError, match="allowed 0"):
        audit.check("upload", max_async_copies=0)


def test_cpu_tensors_are_not_transfers():
    with SyncAudit() as audit:
        t = torch.tensor([1.0, 2.0])
        t.item() if t.numel() == 1 else t.sum().item()
        bool(t.any())
        t.nonzero()
    assert audit.events == []


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_step_has_no_stall(name):
    audit_method_step(name).check(f"method {name} training step", max_async_copies=1)


def _queue_options(name):
    opts = method_options(name)
    return {k: v for k, v in (("queue_length", 64), ("queue_start_epoch", 0)) if k in opts}


@pytest.mark.parametrize("name", sorted(n for n in METHODS if "queue_length" in method_options(n)))
def test_queue_methods_step_with_the_queue_on_has_no_stall(name):
    audit_method_step(name, **_queue_options(name)).check(f"method {name} with a queue", max_async_copies=1)


@pytest.mark.parametrize("name", sorted(n for n in METHODS if "mix" in method_options(n)))
@pytest.mark.parametrize("mode", ["mixup", "cutmix", "gridmix", "saliency_cutmix"])
def test_imix_steps_have_no_stall(name, mode):
    audit_method_step(name, mix={"mode": mode}).check(f"method {name} i-Mix {mode}")


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_view_call_has_no_stall_and_one_copy(name):
    audit_views(MultiView(*get_preset(name)), side=64).check(f"preset {name}", max_async_copies=1)


# ops whose generic probe needs a choice (kornia: the class to run)
EXPLICIT_PROBES = {"kornia": {"kornia": [{"op": "RandomErasing", "p": 0.5}, {"op": "RandomSharpness", "p": 0.5}]}}


def _probe(name):
    return EXPLICIT_PROBES[name] if name in EXPLICIT_PROBES else OPS[name].probe()


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_every_op_view_call_has_no_stall(name, mode):
    views = MultiView(ViewSpec(size=32).replace(**_probe(name)), 2, mode=mode)
    audit_views(views).check(f"op {name} ({mode})", max_async_copies=1)


def test_autoaugment_view_call_has_no_stall():
    views = MultiView(ViewSpec(size=32, auto_augment="autoaugment"), 2)
    audit_views(views).check("autoaugment", max_async_copies=1)


@pytest.mark.parametrize("mode", MIX_MODES)
def test_every_mix_mode_has_no_stall(mode):
    x = torch.zeros(8, 3, 8, 8, device=D)
    kw = {}
    if mode == "snapmix":
        kw = dict(labels=torch.zeros(8, dtype=torch.long, device=D), num_classes=3, cams=torch.zeros(8, 8, 8, device=D))
    audit_call(lambda: mix_batch(mode, x, generator=torch.Generator().manual_seed(0), **kw)).check(f"mix {mode}")
    if mode in ("mixup", "cutmix", "gridmix", "saliency_cutmix"):
        audit_call(lambda: mix_view(parse_mix({"mode": mode, "p": 0.5}), x, torch.Generator().manual_seed(0))
                   ).check(f"mix_view {mode}")


def test_losses_have_no_stall():
    from ssl_aug.losses import (byol_loss, imix_byol_loss, imix_nt_xent, nt_xent, nt_xent_multiview,
                                nt_xent_per_sample, swav_loss)

    z = torch.zeros(8, 16, device=D, requires_grad=True)
    z3 = torch.zeros(2, 8, 16, device=D)
    lam, perm = torch.zeros(8, device=D), torch.zeros(8, dtype=torch.long, device=D)
    scores = [torch.zeros(8, 10, device=D) for _ in range(3)]
    calls = {"nt_xent": lambda: nt_xent(z, z), "multiview": lambda: nt_xent_multiview([z, z, z]).backward(),
             "per_sample": lambda: nt_xent_per_sample([z, z, z]), "byol": lambda: byol_loss(z3, z3),
             "imix_nt_xent": lambda: imix_nt_xent(z, z, lam, perm), "imix_byol": lambda: imix_byol_loss(z, z, lam, perm),
             "swav": lambda: swav_loss(scores, 0.1, 0.05, 3, (0, 1))}
    for name, call in calls.items():
        audit_call(call).check(f"loss {name}")


def test_resident_batches_copy_nothing():
    images = torch.zeros(64, 3, 8, 8, dtype=torch.uint8)
    audit = audit_source(lambda d: BatchSource(images, 8, device=d), batches=3)
    audit.check("BatchSource", max_async_copies=0)


def _shards(folder, n=3, rows=20):
    for i in range(n):
        np.savez(folder / f"s{i}.npz", x=np.zeros((rows, 8, 8, 3), np.uint8))
    return folder


def test_streamed_batches_copy_non_blocking_only(tmp_path):
    audit = audit_source(lambda d: ShardStream(_shards(tmp_path), 8, device=d, prefetch=False), batches=5)
    # one packed index copy per batch + one per shard opened (5 batches of 8 over shards of 20: <= 2 new shards)
    audit.check("ShardStream", max_async_copies=5 + 2)


def _cfg(tmp_path, **over):
    from ssl_aug.config import config_from_dict

    base = {"seed": 0, "device": "cpu", "output_dir": str(tmp_path / "run"),
            "model": {"backbone": "small_cnn"}, "method": {"name": "simclr"},
            "augment": {"size": 16}, "train": {"epochs": 1, "batch_size": 8, "log_every": 1000},
            "eval": {"final_knn": False}}
    for key, value in over.items():
        base[key] = {**base.get(key, {}), **value}
    return config_from_dict(base)


def _data(n=64):
    g = torch.Generator().manual_seed(0)
    return ImageDataset(images=torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g),
                        labels=torch.zeros(n, dtype=torch.long), classes=["a"], name="audit")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_trainer_step_has_no_stall(tmp_path, method):
    cfg = _cfg(tmp_path, method={"name": method})
    audit_trainer_step(cfg, _data()).check(f"trainer step ({method})", max_async_copies=2)


def test_trainer_step_with_hard_views_has_no_stall(tmp_path):
    cfg = _cfg(tmp_path, train={"view_candidates": 2})
    audit_trainer_step(cfg, _data()).check("trainer step (hard views)", max_async_copies=4)


def test_trainer_step_streaming_has_no_stall(tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"train_{i}.npz", x=np.zeros((40, 16, 16, 3), np.uint8), y=np.zeros(40, np.int64))
    cfg = _cfg(tmp_path, data={"name": "npz", "root": str(folder), "split": "train", "stream": True})
    audit_trainer_step(cfg, None).check("trainer step (streamed shards)", max_async_copies=2 * 3)


def test_policies_masked_on_devices_equal_index_sets_on_cpu():
    """The masked sub-policy path (non-CPU devices) gives the views of the CPU index-set path."""
    x = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    for probe in (OPS["policy"].probe(), {"auto_augment": "autoaugment"}, OPS["tf_sequence"].probe()):
        spec = ViewSpec(size=32).replace(**probe)
        indexed, masked = MultiView(spec, 2, masked=False), MultiView(spec, 2, masked=True)
        a = indexed(x, torch.Generator().manual_seed(3))
        b = masked(x, torch.Generator().manual_seed(3))
        assert max(float((u - v).abs().max()) for u, v in zip(a, b)) <= 1e-4, probe


def test_sync_batchnorm_auto_is_on_for_several_ranks_with_batchnorm():
    from torch import nn

    from ssl_aug.config import config_from_dict
    from ssl_aug.train.setup import sync_batchnorm_on

    bn, plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), nn.Linear(2, 2)
    cfg = config_from_dict({})
    assert cfg.model.sync_batchnorm == "auto"
    assert sync_batchnorm_on(cfg, 2, bn) and not sync_batchnorm_on(cfg, 1, bn) and not sync_batchnorm_on(cfg, 2, plain)
    cfg.model.sync_batchnorm = False
    assert not sync_batchnorm_on(cfg, 2, bn)
    cfg.model.sync_batchnorm = True
    assert sync_batchnorm_on(cfg, 2, plain)
    cfg.model.sync_batchnorm = "yes"
    with pytest.raises(SslAugError, match="sync_batchnorm = 'yes' is not allowed"):
        sync_batchnorm_on(cfg, 2, bn)


def test_run_from_before_auto_sync_batchnorm_still_resumes(tmp_path):
    """A checkpoint whose recipe said sync_batchnorm = false (the old default) resumes under "auto" on one rank."""
    from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint
    from ssl_aug.train import Trainer

    cfg = _cfg(tmp_path, train={"max_steps": 2, "checkpoint_every": 1})
    Trainer(cfg, progress=False, train_data=_data()).fit()
    path = latest_checkpoint(tmp_path / "run")
    state = load_checkpoint(path)
    state["config"]["model"]["sync_batchnorm"] = False
    torch.save(state, path)
    cfg = _cfg(tmp_path, train={"max_steps": 3, "checkpoint_every": 1})
    with pytest.raises(SslAugError, match="train.max_steps"):  # other changes are still refused
        Trainer(cfg, progress=False, train_data=_data()).fit(resume=True)
    cfg = _cfg(tmp_path, train={"max_steps": 2, "checkpoint_every": 1})
    assert Trainer(cfg, progress=False, train_data=_data()).fit(resume=True)["step"] == 2


def _registered_source_batches(name, tmp):
    """A DataSource of registered data set `name`, opened offline the way training opens it (None: it needs
    files this machine does not have, e.g. STL-10 or CIFAR without SSL_AUG_DATA)."""
    import os

    from ssl_aug.config import DataConfig
    from ssl_aug.data import get_source, load_dataset

    def batches(data, dataset=None):
        return lambda d: get_source(name).batches(data, dataset, split="train", batch_size=8, seed=0, rank=0,
                                                  world_size=1, device=d)

    if name == "embedded":
        return batches(DataConfig(name=name), load_dataset(name, "train", n_per_class=4, size=16))
    if name == "npz":
        tmp.mkdir(parents=True)
        for i in range(3):  # shards of the training split, as `ssl-aug data pack` names them
            np.savez(tmp / f"train_{i}.npz", x=np.zeros((20, 8, 8, 3), np.uint8), y=np.zeros(20, np.int64))
        return batches(DataConfig(name=name, root=str(tmp), stream=True))
    if name == "cifar10" and os.environ.get("SSL_AUG_DATA"):
        return batches(DataConfig(name=name, stream=True))
    if name == "imagefolder":
        from test_data_stream import make_tree

        root = make_tree(tmp / "tree", n=32, classes=2)
        return batches(DataConfig(name=name), load_dataset(name, "train", root=str(root), size=16,
                                                           cache=str(tmp / "cache")))
    if name == "shards":  # trains through ShardCropSource: per-view crops decoded in the workers
        from ssl_aug.data.shard_pack import pack_shards
        from ssl_aug.data.stream import ShardCropSource
        from test_data_stream import make_tree

        pack_shards(make_tree(tmp / "tree", n=32, classes=2), tmp / "packed", shard_size=8, workers=1, verbose=False)
        plan = [(16, (0.08, 1.0), (3 / 4, 4 / 3))] * 2
        return lambda d: ShardCropSource(tmp / "packed", plan, batch_size=8, workers=1, device=d, verbose=False)
    return None


def test_every_registered_data_source_batches_without_a_stall(tmp_path):
    from ssl_aug.data import list_sources

    needs_files = {"stl10", "cifar100", "cifar10"}  # opened only from local files (download needs a network)
    audited = []
    from ssl_aug.data import get_source

    for name in [n for n in list_sources() if type(get_source(n)).__module__.startswith("ssl_aug.")]:  # built in
        make = _registered_source_batches(name, tmp_path / name)
        if make is None:
            assert name in needs_files, f"registered data source {name!r} has no offline audit case here"
            continue
        audit_source(make, batches=2).check(f"data source {name}", max_async_copies=8)
        audited.append(name)
    assert {"embedded", "npz", "imagefolder", "shards"} <= set(audited)
