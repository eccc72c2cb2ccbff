"""Tests of ssl_aug.evaluation: features, linear probe, TTA, invariance probe, evaluate_encoder (kNN: test_knn.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import (KnnMonitor, compare_invariance, evaluate_encoder, expected_calibration_error,
                                extract_features, format_report, invariance_probe, knn_evaluate, linear_probe,
                                linear_probe_augmented, tta_evaluate, tta_predict, tta_views)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def cifar_subset(n_train, n_test):
    root = os.environ.get("SSL_AUG_DATA")
    if not root:
        pytest.skip("SSL_AUG_DATA is not set (folder holding cifar10/ npz shards)")
    folder = Path(root) / "cifar10"
    if not (folder / "cifar10_train_1.npz").exists():
        pytest.skip(f"no CIFAR-10 shards in {folder}")
    tr, te = np.load(folder / "cifar10_train_1.npz"), np.load(folder / "cifar10_test.npz")
    to_t = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
    return (to_t(tr["x"][:n_train]), torch.from_numpy(tr["y"][:n_train]).long(),
            to_t(te["x"][:n_test]), torch.from_numpy(te["y"][:n_test]).long())


class SmallCNN(nn.Module):
    def __init__(self, dim=32, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(16, dim, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())

    def forward(self, x):
        return self.net(x)


# ------------------------------------------------------------------------------------------------ features
def test_extract_features_matches_manual_and_restores_mode(tmp_path):
    enc = SmallCNN()
    enc.train()
    x = torch.randint(0, 256, (37, 3, 16, 16), dtype=torch.uint8)
    f = extract_features(enc, x, MEAN, STD, batch_size=10, progress=False)
    assert enc.training and f.shape == (37, 128) and f.dtype == torch.float32
    enc.eval()
    with torch.no_grad():
        ref = F.normalize(enc((x.float() / 255 - 0.5) / 0.25), dim=1)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)
    raw = extract_features(enc, x, MEAN, STD, progress=False, normalize=False)
    torch.testing.assert_close(F.normalize(raw, dim=1), f, rtol=1e-5, atol=1e-5)
    c1 = extract_features(enc, x, MEAN, STD, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 1
    torch.testing.assert_close(extract_features(enc, x, MEAN, STD, progress=False, cache_dir=tmp_path), c1)
    with torch.no_grad():
        enc.net[0].weight.add_(0.1)                  # new weights -> new cache entry
    extract_features(enc, x, MEAN, STD, progress=False, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("features-*.pt"))) == 2
    with pytest.raises(SslAugError):
        extract_features(enc, x.float(), MEAN, STD)
    with pytest.raises(SslAugError):
        extract_features(enc, x, (125.3, 123.0, 113.9), STD)


# ------------------------------------------------------------------------------------------------ linear probe
def test_linear_probe_separable_toy():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 4, generator=g)
    x = torch.randn(3000, 20, generator=g) * 3 + 5
    y = (x @ w).argmax(1)
    r = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:], epochs=100, weight_decays=(0.0, 1e-4))
    assert r["top1"] >= 0.95 and r["top5"] == 1.0 and set(r["sweep"]) == {0.0, 1e-4}
    assert len(r["per_class"]) == 4
    with torch.no_grad():
        logits = r["classifier"](x[2000:])
    assert (logits.argmax(1) == y[2000:]).double().mean().item() == pytest.approx(r["top1"])
    assert r["ece"] == pytest.approx(expected_calibration_error(logits.softmax(1), y[2000:]))


def test_linear_probe_random_encoder_on_cifar_beats_chance():
    xtr, ytr, xte, yte = cifar_subset(2000, 500)
    enc = SmallCNN(dim=32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    tf = extract_features(enc, xtr, mean, std, progress=False)
    qf = extract_features(enc, xte, mean, std, progress=False)
    r = linear_probe(tf, ytr, qf, yte, epochs=60)
    assert r["top1"] > 0.2                   # chance 0.1


def test_ece_matches_plain_loop():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(500, 5, generator=g) * 2, 1)
    labels = torch.randint(0, 5, (500,), generator=g)
    conf, pred = probs.max(1)
    ece = 0.0
    for b in range(15):
        lo, hi = b / 15, (b + 1) / 15
        m = [(lo < c <= hi) for c in conf.tolist()]
        idx = [i for i, v in enumerate(m) if v]
        if idx:
            acc = sum(int(pred[i] == labels[i]) for i in idx) / len(idx)
            cf = sum(conf[i].item() for i in idx) / len(idx)
            ece += len(idx) / 500 * abs(acc - cf)
    assert expected_calibration_error(probs, labels) == pytest.approx(ece, abs=1e-9)


def test_linear_probe_errors():
    x, y = torch.randn(20, 4), torch.randint(0, 2, (20,))
    with pytest.raises(SslAugError):
        linear_probe(x, y, torch.randn(5, 3), y[:5])
    with pytest.raises(SslAugError):
        linear_probe(x, y[:-1], x, y)


def test_linear_probe_augmented_runs_and_learns():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (300,), generator=g)
    x = torch.randint(0, 100, (300, 3, 8, 8), generator=g, dtype=torch.uint8)
    x[y == 1, 0] += 120                      # class 1: red images
    calls = []

    def augment(imgs, gen):
        calls.append(imgs.shape[0])
        flip = torch.rand(imgs.shape[0], generator=gen) < 0.5
        out = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
        return (out.float() / 255 - 0.5) / 0.25

    r = linear_probe_augmented(SmallCNN(8), MEAN, STD, x[:200], y[:200], x[200:], y[200:], augment, epochs=5,
                               batch_size=64)
    assert len(calls) == r["epochs"] and r["top1"] > 0.9


# ------------------------------------------------------------------------------------------------ TTA
class FlipInvariant(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = SmallCNN(8)

    def forward(self, x):
        return self.inner(x) + self.inner(x.flip(-1))


def test_tta_equals_plain_for_flip_invariant_model():
    enc = FlipInvariant()
    head = nn.Linear(32, 4)
    x = torch.randint(0, 256, (20, 3, 16, 16), dtype=torch.uint8)
    plain, tta = tta_predict(enc, head, x, MEAN, STD, views="flip")
    torch.testing.assert_close(plain, tta, rtol=1e-5, atol=1e-6)
    r = tta_evaluate(enc, head, x, torch.randint(0, 4, (20,)), MEAN, STD, views="flip")
    assert r["top1"] == r["top1_tta"] and r["delta"] == 0
    # a flip-sensitive model does change under the same TTA
    plain2, tta2 = tta_predict(SmallCNN(8), nn.Linear(32, 4), x, MEAN, STD, views="flip")
    assert (plain2 - tta2).abs().max() > 1e-4


def test_ten_crop_views_match_torchvision_per_image():
    x = torch.rand(3, 3, 32, 32)
    views = tta_views(x, "ten_crop", 0.875)
    assert len(views) == 10
    for i in range(3):
        ref = TF.ten_crop(x[i], [28, 28])          # 5 crops, then the 5 crops of the flipped image
        for v, r in zip(views, ref):
            torch.testing.assert_close(v[i], TF.resize(r, [32, 32], antialias=True))
    uniform = torch.full((4, 3, 16, 16), 100, dtype=torch.uint8)
    plain, tta = tta_predict(SmallCNN(8), nn.Linear(32, 3), uniform, MEAN, STD)
    torch.testing.assert_close(plain, tta)


# ------------------------------------------------------------------------------------------------ invariance
class GrayEncoder(nn.Module):
    """Sees only luma: invariant to grayscale/saturation by construction (mean=std equal per channel)."""

    def __init__(self):
        super().__init__()
        self.inner = SmallCNN(16)

    def forward(self, x):
        gray = (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]
        return self.inner(gray.expand(-1, 3, -1, -1))


def test_invariance_identity_one_and_strong_transform_lower():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), generator=g, dtype=torch.uint8)
    x = TF.gaussian_blur(x, [5, 5], [2.0, 2.0])          # smooth images: structured, not pure noise
    r = invariance_probe(SmallCNN(16), x, MEAN, STD)
    fam = r["families"]
    assert fam["identity"]["score"] == pytest.approx(1.0, abs=1e-5)
    assert fam["solarize"]["score"] < 0.9 and fam["crop_scale"]["score"] < 0.99
    assert set(fam) >= {"crop_scale", "flip", "color_jitter", "brightness", "contrast", "saturation", "hue",
                        "grayscale", "blur", "solarize"}
    results, table = compare_invariance({"gray": GrayEncoder(), "random": SmallCNN(16)}, x, MEAN, STD)
    assert results["gray"]["families"]["grayscale"]["score"] > 0.99
    assert results["gray"]["families"]["grayscale"]["score"] > results["random"]["families"]["grayscale"]["score"]
    assert table.count("\n") == 2 + len(fam) and "| grayscale |" in table


# ------------------------------------------------------------------------------------------------ evaluate + monitor
def test_evaluate_encoder_and_report():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (240,), generator=g)
    x = torch.randint(0, 80, (240, 3, 12, 12), generator=g, dtype=torch.uint8)
    x[torch.arange(240), y] += 150                      # class = dominant colour channel
    enc = SmallCNN(8)
    res = evaluate_encoder(enc, MEAN, STD, (x[:160], y[:160]), (x[160:], y[160:]), knn=True, linear=True, tta=True,
                           invariance=True, ks=(20, 5), progress=False, linear_kw={"epochs": 30},
                           invariance_images=40)
    assert res["knn"]["top1"] > 0.8 and res["linear"]["top1"] > 0.8
    assert res["tta"]["head"] == "linear" and 0 <= res["tta"]["top1_tta"] <= 1
    json.dumps(res)                                   # JSON-friendly
    text = format_report(res)
    assert "kNN (k=20" in text and "kNN (k=5" in text and "linear probe" in text and "| solarize |" in text
    with pytest.raises(SslAugError):
        evaluate_encoder(enc, MEAN, STD, (x, y[:-1]), (x, y))


def test_knn_monitor(tmp_path):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=g)
    x = torch.randint(0, 80, (300, 3, 12, 12), generator=g, dtype=torch.uint8)
    x[torch.arange(300), y] += 150
    enc = SmallCNN(8)
    enc.train()
    log = tmp_path / "m.jsonl"
    mon = KnnMonitor.from_split(x, y, n_bank=200, n_query=100, k=20, mean=MEAN, std=STD, log_path=log)
    out = mon(enc, epoch=3)
    assert enc.training and out["knn_top1"] > 0.8
    bank = extract_features(enc, mon.bank_images, MEAN, STD, progress=False)
    query = extract_features(enc, mon.query_images, MEAN, STD, progress=False)
    assert out["knn_top1"] == knn_evaluate(bank, mon.bank_labels, query, mon.query_labels, ks=(20,))["top1"]
    assert json.loads(log.read_text().splitlines()[0])["epoch"] == 3
