"""Quality gating: decisions against an independent numpy computation, outputs (kept shards, report,
histogram), candidate files never modified, and one-line errors for bad input."""

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn

from ssl_aug.cli.gate import gate_main
from ssl_aug.data import ImageDataset
from ssl_aug.data.npz import load_npz
from ssl_aug.errors import SslAugError
from ssl_aug.workflows.gate import fit_gate_classifier, gate, load_candidates

CLASSES = ["red", "green", "blue"]
MEAN, STD = [0.5] * 3, [0.25] * 3


def _images(labels, seed, size=8):
    """Class k = channel k bright: (N,3,size,size) uint8 with noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 90, (len(labels), 3, size, size), generator=g)
    for i, k in enumerate(labels):
        x[i, k] += 140
    return x.to(torch.uint8)


def _encoder():
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()  # features = mean colour (N, 3)


@pytest.fixture
def setup(tmp_path):
    ry = torch.arange(60) % 3
    reference = ImageDataset(_images(ry.tolist(), 0), ry, CLASSES, "ref")
    good = torch.arange(30) % 3
    wrong = (torch.arange(12) % 3 + 1) % 3  # images of class k labelled k+1
    cx = torch.cat([_images(good.tolist(), 1), _images((torch.arange(12) % 3).tolist(), 2),
                    torch.randint(0, 256, (8, 3, 8, 8), generator=torch.Generator().manual_seed(3)).to(torch.uint8)])
    cy = torch.cat([good, wrong, torch.full((8,), -1)])
    folder = tmp_path / "cands"
    folder.mkdir()
    np.savez(folder / "shard_0.npz", x=cx.permute(0, 2, 3, 1).numpy(), y=cy.numpy())
    (folder / "classes.txt").write_text("red\ngreen\nblue\n")
    return reference, folder, cx, cy


def _digest(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def test_gate_decisions_match_independent_computation(setup, tmp_path):
    pytest.importorskip("matplotlib")
    reference, folder, cx, cy = setup
    before = _digest(folder)
    x, y, classes = load_candidates(folder, size=8)
    assert torch.equal(x, cx) and torch.equal(y, cy) and classes == CLASSES
    out = tmp_path / "gated"
    rep = gate(_encoder(), MEAN, STD, reference, (x, y), 0.6, out, candidate_classes=classes, source=str(folder))
    assert _digest(folder) == before  # candidates untouched
    # independent: L2-normalised mean colours, the same classifier (deterministic fit), numpy softmax, the rule
    feats = lambda imgs: torch.nn.functional.normalize(((imgs.float() / 255 - 0.5) / 0.25).mean(dim=(2, 3)), dim=1)  # noqa: E731
    clf, _ = fit_gate_classifier(feats(reference.images), reference.labels, 3)
    with torch.no_grad():
        logits = clf(feats(cx)).double().numpy()
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    keep = [(p[i].max() >= 0.6) and (cy[i] < 0 or p[i].argmax() == cy[i]) for i in range(len(cy))]
    assert rep["kept_mask"] == keep
    assert all(keep[:30]) and not any(keep[30:42])  # correct kept, mislabelled rejected
    assert rep["rejected_disagreeing"] == 12 and rep["kept"] == sum(keep)
    assert sum(v["kept"] + v["rejected"] for v in rep["per_class"].values()) == len(cy)
    written = load_npz("all", out)
    idx = torch.tensor([i for i, k in enumerate(keep) if k])
    assert torch.equal(written.images, cx[idx]) and written.classes == CLASSES
    pseudo = torch.where(cy[idx] >= 0, cy[idx], torch.tensor(p.argmax(1))[idx])
    assert torch.equal(written.labels, pseudo)
    assert (out / "confidence_histogram.png").stat().st_size > 1000
    assert json.loads((out / "gate_report.json").read_text())["kept"] == rep["kept"]
    assert sum(rep["confidence_histogram"]["counts"]) == len(cy)
    rep2 = gate(_encoder(), MEAN, STD, reference, (x, y), 0.6, tmp_path / "both", with_reference=True)
    both = load_npz("all", tmp_path / "both")
    assert len(both.labels) == 60 + rep2["kept"] and torch.equal(both.images[:60], reference.images)


def test_confidence_one_keeps_only_certain_and_zero_keeps_all_agreeing(setup, tmp_path):
    pytest.importorskip("matplotlib")
    reference, folder, cx, cy = setup
    r0 = gate(_encoder(), MEAN, STD, reference, (cx, cy), 0.0, tmp_path / "a")
    assert r0["rejected_unconfident"] == 0 and r0["kept"] == len(cy) - r0["rejected_disagreeing"]
    r1 = gate(_encoder(), MEAN, STD, reference, (cx, cy), 1.0, tmp_path / "b")
    assert r1["kept"] <= r0["kept"]


def test_bad_input_one_line(setup, tmp_path):
    reference, folder, cx, cy = setup
    cases = [
        (lambda: gate(_encoder(), MEAN, STD, reference, (cx[:, :, :6, :6], cy), 0.5, tmp_path / "o"), "(3, 6, 6)"),
        (lambda: gate(_encoder(), MEAN, STD, reference, (cx, cy), 1.5, tmp_path / "o"), "--min-confidence 1.5"),
        (lambda: gate(nn.Sequential(nn.Flatten(), nn.Linear(5, 2)), MEAN, STD, reference, (cx, cy), 0.5,
                      tmp_path / "o"), "encoder does not match"),
        (lambda: gate(_encoder(), MEAN, STD, reference, (cx, cy), 0.5, folder / "out", source=str(folder)),
         "inside the candidates"),
        (lambda: gate(_encoder(), MEAN, STD, reference, (cx, torch.full_like(cy, 7)), 0.5, tmp_path / "o"),
         "labels reach 7"),
    ]
    for call, word in cases:
        with pytest.raises(SslAugError) as e:
            call()
        assert word in str(e.value) and "\n" not in str(e.value)
    gray = tmp_path / "gray"
    gray.mkdir()
    np.savez(gray / "g.npz", x=np.zeros((2, 8, 8, 1), np.uint8))
    with pytest.raises(SslAugError, match=r"expected \(N,H,W,3\)"):
        load_candidates(gray, size=8)
    assert not (folder / "out").exists()


def test_cli_bad_confidence_and_random_encoder(setup, tmp_path, capsys):
    _, folder, _, _ = setup
    assert gate_main([str(folder), "--encoder", "x", "--reference", "embedded", "--min-confidence", "-0.1",
                      "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--min-confidence -0.1" in err and "\n" not in err
    assert gate_main([str(folder), "--encoder", "random:small_cnn", "--reference", "embedded", "--min-confidence",
                      "0.5", "--out", str(tmp_path / "o")]) == 2
    assert "trained encoder" in capsys.readouterr().err
