"""Trainer: learning on real data, exact resume, NaN handling, refusing wrong checkpoints."""

import json

import pytest
import torch

from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint
from ssl_aug.data import ImageDataset
from ssl_aug.errors import SslAugError
from ssl_aug.train import NonFiniteLossError, Trainer, balanced_subset

pytest.importorskip("ssl_aug.models.small_cnn")

from trainer_fixtures import StopAfter, tiny_config, tiny_data  # noqa: E402


@pytest.mark.parametrize("method", ["simclr", "swav"])
@pytest.mark.parametrize("stop_at", [3, 6])
def test_resume_is_bit_identical(tmp_path, method, stop_at):
    data = tiny_data()
    full = Trainer(tiny_config(tmp_path / "a", method), progress=False, train_data=data)
    full.fit()
    assert full.step == 9  # 3 epochs x 3 batches

    interrupted = StopAfter(tiny_config(tmp_path / "b", method), progress=False, train_data=data)
    interrupted.limit = stop_at
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "b" / "run"))
    assert ckpt["step"] == (stop_at // 2) * 2  # the last checkpoint before the stop

    resumed = Trainer(tiny_config(tmp_path / "b", method), progress=False, train_data=data)
    resumed.fit(resume=True)
    assert resumed.step == 9
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics log of the resumed run matches the uninterrupted one line for line (timings aside)
    def losses(run):
        lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["type"], r["step"], r.get("loss")) for r in lines]
    assert losses(tmp_path / "a" / "run") == losses(tmp_path / "b" / "run")


def test_loss_goes_down_on_structured_data(tmp_path):
    # two-colour stripes of random orientation: contrastive learning separates them quickly
    g = torch.Generator().manual_seed(0)
    n, size = 128, 16
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    horizontal = torch.rand(n, generator=g) < 0.5
    period = torch.randint(3, 6, (n,), generator=g)
    stripes = torch.where(horizontal[:, None, None], yy, xx) // period[:, None, None] % 2
    colours = torch.randint(0, 256, (n, 2, 3), generator=g)
    images = torch.where(stripes[:, None].bool(), colours[:, 0, :, None, None], colours[:, 1, :, None, None])
    data = ImageDataset(images=images.to(torch.uint8), labels=horizontal.long(), classes=["v", "h"], name="stripes")
    cfg = tiny_config(tmp_path, epochs=12, optimizer="adam", lr=0.003, lr_scaling="none", checkpoint_every=0)
    trainer = Trainer(cfg, progress=False, train_data=data)
    trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    epochs = [r["loss"] for r in records if r["type"] == "epoch"]
    assert len(epochs) == 12
    assert epochs[-1] < epochs[0] - 0.3, epochs
    steps = [r for r in records if r["type"] == "step"]
    assert all(0.0 <= r["view_time_share"] <= 1.0 and r["img_per_s"] > 0 for r in steps)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny_config(tmp_path), progress=False, train_data=tiny_data())
    original = trainer.method.forward

    def poisoned(views, step=0, epoch=0):
        loss, stats = original(views, step=step, epoch=epoch)
        return (loss * float("nan") if step >= 5 else loss), stats

    trainer.method.forward = poisoned
    with pytest.raises(NonFiniteLossError, match="NaN/inf"):
        trainer.fit()
    ckpt = load_checkpoint(latest_checkpoint(tmp_path / "run"))
    assert ckpt["step"] == 4
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_refuses_to_overwrite_a_run_and_wrong_checkpoints(tmp_path):
    data = tiny_data()
    Trainer(tiny_config(tmp_path, epochs=1), progress=False, train_data=data).fit()
    with pytest.raises(SslAugError, match="already has checkpoints"):
        Trainer(tiny_config(tmp_path, epochs=1), progress=False, train_data=data).fit()
    other = tiny_config(tmp_path, epochs=1)
    other.model.backbone_args = {"width": 8} if "width" in _small_cnn_args() else {}
    other.model.backbone = "cifar_resnet18"
    with pytest.raises(SslAugError, match="backbone 'small_cnn'"):
        Trainer(other, progress=False, train_data=data).fit(resume=True)


def _small_cnn_args():
    import inspect

    from ssl_aug.models.small_cnn import SmallCNN

    return inspect.signature(SmallCNN).parameters


def test_batch_larger_than_data_is_a_clear_error(tmp_path):
    with pytest.raises(SslAugError, match="larger than the training set"):
        Trainer(tiny_config(tmp_path, batch_size=512), progress=False, train_data=tiny_data())


def test_balanced_subset():
    labels = torch.arange(1000) % 10
    idx = balanced_subset(labels, 200, seed=1)
    assert len(idx) == 200 and len(idx.unique()) == 200
    assert torch.bincount(labels[idx], minlength=10).tolist() == [20] * 10
    assert torch.equal(idx, balanced_subset(labels, 200, seed=1))
    assert not torch.equal(idx, balanced_subset(labels, 200, seed=2))


def test_resume_with_a_changed_setting_is_refused_and_config_kept(tmp_path):
    """A resume that would train differently (lr) is refused with the changed keys listed (more epochs
    alone would extend the run: test_first_hour); settings that cannot change the run (log interval,
    evaluation) are allowed; config.json stays the original recipe."""
    data = tiny_data()
    first = StopAfter(tiny_config(tmp_path, epochs=2), progress=False, train_data=data)
    first.limit = 2
    with pytest.raises(KeyboardInterrupt):
        first.fit()
    original = (tmp_path / "run" / "config.json").read_text()
    changed = tiny_config(tmp_path, epochs=3, lr=0.05)
    with pytest.raises(SslAugError) as info:
        Trainer(changed, progress=False, train_data=data).fit(resume=True)
    message = str(info.value)
    assert "\n" not in message and "train.lr 0.1 -> 0.05" in message and "train.epochs" not in message.split(";")[0]
    assert "train.log_every" in message  # names what may change
    allowed = tiny_config(tmp_path, epochs=2, log_every=5)
    allowed.eval.knn_k = 7
    resumed = Trainer(allowed, progress=False, train_data=data)
    resumed.fit(resume=True)
    assert resumed.step == 6
    assert (tmp_path / "run" / "config.json").read_text() == original


def test_max_steps_drives_the_schedule_and_the_results(tmp_path):
    """train.max_steps cuts a 10-epoch, 5-epoch-warm-up budget to 6 steps: warm-up shrinks with it (the lr
    peaks inside the run and then decays) and the results report the fraction of an epoch that ran."""
    from ssl_aug.workflows.experiment import run_experiment

    cfg = tiny_config(tmp_path, epochs=10, warmup_epochs=5, max_steps=7)
    cfg.data.root, cfg.data.options = str(tmp_path / "data"), {"n_per_class": 8, "size": 16}  # 80 images
    results = run_experiment(cfg, progress=False)
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["type"] == "step"]
    assert len(lrs) == 7 and results["steps"] == 7
    peak = lrs.index(max(lrs))
    assert 0 < peak < 6 and lrs[-1] < max(lrs)
    assert results["epochs"] == 3.5  # 7 steps of 2 per epoch (80 images, batch 32)
