"""Fine-tuning evaluator: learns, mixes, freezes what it should, resumes exactly, writes its run files."""

import json

import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.finetune import FinetuneConfig, finetune, last_stage_modules
from ssl_aug.models import build_backbone

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def quadrant_data(n, seed, size=16):
    """4 flip-invariant classes on noise: a bright top band, bottom band, centre square, or side bars."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 90, (n, 3, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % 4
    q = size // 4
    for i in range(n):
        k = int(y[i])
        if k == 0:
            x[i, :, :q] = 230
        elif k == 1:
            x[i, :, -q:] = 230
        elif k == 2:
            x[i, :, q:-q, q:-q] = 230
        else:
            x[i, :, :, :q] = 230
            x[i, :, :, -q:] = 230
    return x, y


def encoder(seed=0):
    torch.manual_seed(seed)
    return build_backbone("small_cnn", widths=[8, 16])


def small_cfg(**kw):
    base = dict(epochs=4, batch_size=32, lr=1e-2, patience=10, seed=0)
    base.update(kw)
    return FinetuneConfig(**base)


def test_finetune_learns_and_writes_its_run_files(tmp_path):
    train, test = quadrant_data(240, 0), quadrant_data(80, 1)
    enc = encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    report = finetune(enc, MEAN, STD, train, test, small_cfg(tta=True, tta_views="flip"), run_dir=tmp_path,
                      progress=False)
    assert report["top1"] > 0.9 and report["top5"] == 1.0
    assert len(report["per_class"]) == 4 and 0 <= report["ece"] <= 1 and report["nll"] > 0
    assert sum(report["reliability"]["count"]) == 80
    assert "tta" in report and abs(report["tta"]["delta_top1"] - (report["tta"]["top1"] - report["top1"])) < 1e-12
    assert report["num_labelled"] == 240
    for key, value in enc.state_dict().items():  # the caller's encoder is not modified
        assert torch.equal(value, before[key])
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, report["epochs_run"] + 1))
    assert json.loads((tmp_path / "finetune.json").read_text())["top1"] == report["top1"]
    assert json.loads((tmp_path / "config.json").read_text())["finetune"]["epochs"] == 4
    assert (tmp_path / "reliability.png").stat().st_size > 1000


def test_resume_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    train, test = quadrant_data(160, 0), quadrant_data(40, 1)
    cfg = small_cfg(epochs=3, mix="cutmix")
    full = finetune(encoder(), MEAN, STD, train, test, cfg, run_dir=tmp_path / "a", progress=False)
    import ssl_aug.evaluation.finetune as ft

    calls = {"n": 0}
    real = ft._soft_ce

    def dying(*a):
        calls["n"] += 1
        if calls["n"] > 7:  # 5 batches per epoch: dies inside epoch 2
            raise KeyboardInterrupt
        return real(*a)

    monkeypatch.setattr(ft, "_soft_ce", dying)
    with pytest.raises(KeyboardInterrupt):
        finetune(encoder(), MEAN, STD, train, test, cfg, run_dir=tmp_path / "b", progress=False)
    monkeypatch.setattr(ft, "_soft_ce", real)
    resumed = finetune(encoder(), MEAN, STD, train, test, cfg, run_dir=tmp_path / "b", progress=False)
    assert resumed["top1"] == full["top1"] and resumed["nll"] == full["nll"]
    assert (tmp_path / "a" / "metrics.jsonl").read_text() == (tmp_path / "b" / "metrics.jsonl").read_text()
    with pytest.raises(SslAugError, match="other fine-tuning settings"):
        finetune(encoder(), MEAN, STD, train, test, small_cfg(epochs=5), run_dir=tmp_path / "b", progress=False)


@pytest.mark.parametrize("mix", ["mixup", "cutout", "gridmix", "saliency_cutmix", "snapmix"])
def test_every_mix_mode_trains(mix):
    train, test = quadrant_data(96, 0), quadrant_data(32, 1)
    report = finetune(encoder(), MEAN, STD, train, test, small_cfg(epochs=2, mix=mix, label_smoothing=0.1),
                      progress=False)
    assert report["epochs_run"] == 2 and report["val_loss"] < 10 and report["top1"] >= 0.25


def test_trainable_parts_and_frozen_batchnorm():
    train, test = quadrant_data(96, 0), quadrant_data(32, 1)
    enc = encoder()
    assert [type(m).__name__ for m in last_stage_modules(enc)] [:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    resnet = build_backbone("resnet18")
    stage = last_stage_modules(resnet)
    assert len(stage) == 1 and {id(p) for p in stage[0].parameters()} == {
        id(p) for n, p in resnet.named_parameters() if ".layer4." in f".{n}" or n.startswith("layer4")}
    import ssl_aug.evaluation.finetune as ft

    seen = {}
    real = ft._Classifier

    class Spy(real):
        def __init__(self, *a):
            super().__init__(*a)
            seen["model"] = self

    ft._Classifier = Spy
    try:
        for trainable, freeze_bn in (("head", False), ("last_stage", True)):
            before = {k: v.clone() for k, v in enc.state_dict().items()}
            finetune(enc, MEAN, STD, train, test, small_cfg(epochs=1, trainable=trainable, freeze_bn=freeze_bn),
                     progress=False)
            after = seen["model"].encoder.state_dict()
            changed = {k for k in before if not torch.equal(before[k], after[k])}
            if trainable == "head":
                assert changed == set()
            else:  # only the last conv changes; BN statistics and affine parameters stay frozen
                assert changed == {"features.4.weight"}
    finally:
        ft._Classifier = real


def test_bad_inputs_are_one_line_errors():
    train, test = quadrant_data(40, 0), quadrant_data(8, 1)
    cases = [(dict(label_fraction=0.0), "label_fraction"), (dict(label_fraction=1.5), "label_fraction"),
             (dict(mix="blend"), "mix='blend'"), (dict(mix_alpha=0.0), "alpha"), (dict(mix_p=1.2), "p=1.2"),
             (dict(trainable="middle"), "trainable"), (dict(tta_views="five"), "tta_views"),
             (dict(lr="fast"), "lr='fast'"), (dict(tta="yes"), "tta='yes'")]
    for kw, word in cases:
        with pytest.raises(SslAugError, match=word) as info:
            small_cfg(**kw)
        assert "\n" not in str(info.value)
    with pytest.raises(SslAugError, match="fewer than the 4 classes"):
        finetune(encoder(), MEAN, STD, train, test, small_cfg(label_fraction=0.05), progress=False)
    with pytest.raises(SslAugError, match="unknown finetune key 'lr_max'"):
        FinetuneConfig.from_dict({"lr_max": 1})
    torch.manual_seed(0)
    gray = build_backbone("small_cnn", widths=[8], in_channels=1)
    with pytest.raises(SslAugError, match="1-channel"):
        finetune(gray, MEAN, STD, train, test, small_cfg(), progress=False)
    with pytest.raises(SslAugError, match="expects 32 px"):
        finetune(encoder(), MEAN, STD, train, test, small_cfg(), input_size=32, progress=False)


def test_cli_on_a_random_encoder(tmp_path, capsys):
    from ssl_aug.cli import main

    out = tmp_path / "ft"
    rc = main(["finetune", "random:small_cnn", "epochs=1", "label_fraction=0.01", "batch_size=32", "tta=true",
               "tta_views=flip", "--data", "embedded", "--test-subset", "100", "--output-dir", str(out),
               "--no-progress"])
    assert rc == 0
    report = json.loads((out / "none" / "seed0" / "finetune.json").read_text())
    assert report["num_labelled"] == 50 and "tta" in report
    assert "| none | 1 |" in (out / "results.md").read_text()
    assert main(["finetune", "random:small_cnn", "mix=blend", "--data", "embedded"]) == 2
    assert "mix='blend' is not allowed" in capsys.readouterr().err


def test_eval_finetune_flag(tmp_path, monkeypatch, capsys):
    import ssl_aug.evaluation.finetune as ft
    from ssl_aug.cli import main

    real = ft.finetune
    monkeypatch.setattr(ft, "finetune", lambda *a, **kw: real(*a[:5], {**a[5], "epochs": 1, "label_fraction": 0.01},
                                                             **kw))
    out = tmp_path / "e.json"
    assert main(["eval", "random:small_cnn", "--data", "embedded", "--finetune", "--test-subset", "60", "--json",
                 str(out), "--no-progress"]) == 0
    results = json.loads(out.read_text())
    assert "finetune" in results and "knn" not in results and results["finetune"]["num_labelled"] == 50
    assert "fine-tuned (mix=none, 50 labels)" in capsys.readouterr().out
    assert (tmp_path / "e_finetune" / "finetune.json").is_file()


def test_a_nonfinite_epoch_never_reaches_the_saved_state(tmp_path, monkeypatch):
    import ssl_aug.evaluation.finetune as ft
    from ssl_aug.checkpoint import load_weights_only

    train, test = quadrant_data(160, 0), quadrant_data(40, 1)
    real, calls = ft._soft_ce, {"n": 0}

    def poisoned(*a):
        calls["n"] += 1  # 5 batches per epoch: NaN from the second batch of epoch 2 on
        return real(*a) * (float("nan") if calls["n"] > 6 else 1.0)

    monkeypatch.setattr(ft, "_soft_ce", poisoned)
    with pytest.raises(SslAugError, match=r"non-finite .* in epoch 2; the state after epoch 1 is kept"):
        finetune(encoder(), MEAN, STD, train, test, small_cfg(epochs=3), run_dir=tmp_path, progress=False)
    saved = load_weights_only(tmp_path / "finetune_state.pt")
    assert saved["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    with pytest.raises(SslAugError, match="lr=nan is not allowed"):
        small_cfg(lr=float("nan"))


def test_a_finetuning_into_a_busy_folder_is_refused(tmp_path):
    import subprocess
    import sys

    from ssl_aug.runlock import RunFolderBusy

    train, test = quadrant_data(64, 0), quadrant_data(16, 1)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ssl_aug.runlock import hold_run_folder\n"
                               "with hold_run_folder(sys.argv[1]):\n    print('held', flush=True); time.sleep(60)",
                               str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"  # another live run holds the folder
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            finetune(encoder(), MEAN, STD, train, test, small_cfg(epochs=1), run_dir=tmp_path, progress=False)
        assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
    report = finetune(encoder(), MEAN, STD, train, test, small_cfg(epochs=1), run_dir=tmp_path, progress=False)
    assert report["epochs_run"] == 1  # a lock left by a killed process is taken over
