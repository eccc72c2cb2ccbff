"""Subgroup evaluation (per (class, group) accuracy, worst group, per-class gap) against plain loops, its
wiring into evaluate_encoder / the report, and the patching probes and fine-tuning on toy data."""

import math

import numpy as np
import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.groups import gap_ratio, group_metrics, group_table, predictions
from ssl_aug.evaluation.patching import patched_finetune, patched_probe, subgroup_changer


def test_group_metrics_match_plain_loops():
    rng = np.random.default_rng(0)
    m, C, G = 300, 4, 3
    y, g = rng.integers(0, C, m), rng.integers(0, G, m)
    g[y == 3] = 0  # class 3 has one populated cell: gap 0
    pred = np.where(rng.random(m) < 0.7, y, rng.integers(0, C, m))
    r = group_metrics(torch.tensor(pred), torch.tensor(y), torch.tensor(g), list("abcd"), ["x", "y", "z"])
    accs = {}
    for c in range(C):
        for k in range(G):
            sel = [i for i in range(m) if y[i] == c and g[i] == k]
            if sel:
                accs[(c, k)] = sum(pred[i] == y[i] for i in sel) / len(sel)
    assert len(r["cells"]) == len(accs)
    for (c, k), a in accs.items():
        assert r["cells"][f"{'abcd'[c]}/{'xyz'[k]}"]["acc"] == pytest.approx(a)
    assert r["worst_group_acc"] == pytest.approx(min(accs.values()))
    gaps = {c: max(a for (cc, _), a in accs.items() if cc == c) - min(a for (cc, _), a in accs.items() if cc == c)
            for c in range(C)}
    assert r["per_class_gap"]["d"] == 0.0
    assert r["mean_gap"] == pytest.approx(sum(gaps.values()) / C) and r["max_gap"] == pytest.approx(max(gaps.values()))
    assert r["average"] == pytest.approx(float((pred == y).mean()))
    table = group_table({"knn": {"groups": r}})
    assert table.count("\n") == 2 and f"{100 * r['worst_group_acc']:.2f}" in table
    assert gap_ratio(0.4, 0.1) == pytest.approx(4.0) and math.isinf(gap_ratio(0.2, 0.0))


def test_predictions_break_ties_to_lower_class():
    assert predictions(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])).tolist() == [0, 1]


def test_group_metrics_bad_input_one_line():
    with pytest.raises(SslAugError, match="needs group labels"):
        group_metrics(torch.zeros(3), torch.zeros(3), None)
    with pytest.raises(SslAugError, match="one shape"):
        group_metrics(torch.zeros(3), torch.zeros(2), torch.zeros(3))


def _toy(n, rate, seed):
    """2 classes x 2 groups; feature 0 = noisy class signal, feature 1 = the group (spurious in train)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    aligned = torch.rand(n, generator=g) < rate
    grp = torch.where(aligned, y, 1 - y)
    f = torch.stack([y.float() + 0.7 * torch.randn(n, generator=g), 2.0 * grp.float() + 0.1 * torch.randn(n, generator=g)], 1)
    return f, y, grp


def test_dro_probes_raise_worst_group_accuracy_over_erm():
    tf, ty, tg = _toy(600, 0.95, 0)
    qf, qy, qg = _toy(400, 0.5, 1)
    kw = dict(epochs=150, lr=0.05, eta=0.5)
    erm = patched_probe(tf, ty, tg, qf, qy, qg, objective="erm", **kw)
    dro = patched_probe(tf, ty, tg, qf, qy, qg, objective="group_dro", **kw)
    clamp = patched_probe(tf, ty, tg, qf, qy, qg, objective="clamp", **kw)
    assert erm["worst_group_acc"] < 0.5  # the shortcut: minority cells mostly wrong
    assert dro["worst_group_acc"] > erm["worst_group_acc"] + 0.2
    assert clamp["worst_group_acc"] > erm["worst_group_acc"] + 0.2 and clamp["mean_gap"] < erm["mean_gap"]
    with pytest.raises(SslAugError, match="needs group labels"):
        patched_probe(tf, ty, None, qf, qy, qg, objective="clamp")
    with pytest.raises(SslAugError, match="unknown patching objective 'dro'"):
        patched_probe(tf, ty, tg, qf, qy, qg, objective="dro")
    with pytest.raises(SslAugError, match="group '2' has no images in split 'train'"):
        patched_probe(tf, ty, tg, qf, qy, qg, objective="clamp", group_names=["0", "1", "2"])


def test_finetune_with_consistency_runs_and_reports_groups():
    from ssl_aug.data.embedded import load_embedded
    from ssl_aug.models import build_backbone

    tr = load_embedded("train", cache=False, size=12, n_per_class=6, spurious=0.9)
    te = load_embedded("test", cache=False, size=12, n_per_class=10, spurious=0.9)
    torch.manual_seed(0)
    enc = build_backbone("small_cnn", widths=[8, 8, 8])
    r = patched_finetune(enc, [0.5] * 3, [0.25] * 3, (tr.images, tr.labels, tr.groups),
                         (te.images, te.labels, te.groups), objective="clamp", consistency=1.0, epochs=1,
                         batch_size=32, classes=tr.classes, group_names=tr.group_names)
    assert r["consistency"] == 1.0 and len(r["cells"]) == 100 and 0 <= r["worst_group_acc"] <= r["average"] <= 1
    change = subgroup_changer()
    x = tr.images[:4].float() / 255
    y = change(x, torch.Generator().manual_seed(0))
    assert (y != x).any() and ((y != x).any(1).float().mean() < 0.2)  # only the patch changes
    with pytest.raises(SslAugError, match="consistency=-1"):
        patched_finetune(enc, [0.5] * 3, [0.25] * 3, (tr.images, tr.labels, tr.groups),
                         (te.images, te.labels, te.groups), consistency=-1)


def test_evaluate_encoder_reports_groups_for_knn_and_linear():
    from ssl_aug.data.embedded import load_embedded
    from ssl_aug.evaluation import evaluate_encoder, format_report
    from ssl_aug.workflows.experiment import flat_results
    from ssl_aug.models import build_backbone

    tr = load_embedded("train", cache=False, size=12, n_per_class=8, spurious=0.9)
    te = load_embedded("test", cache=False, size=12, n_per_class=10, spurious=0.9)
    torch.manual_seed(0)
    enc = build_backbone("small_cnn", widths=[8, 8, 8]).eval()
    r = evaluate_encoder(enc, [0.5] * 3, [0.25] * 3, (tr.images, tr.labels), (te.images, te.labels), linear=True,
                         ks=(5,), progress=False, linear_kw={"epochs": 5}, test_groups=te.groups,
                         classes=te.classes, group_names=te.group_names)
    for section in ("knn", "linear"):
        m = r[section]["groups"]
        assert m["average"] == pytest.approx(r[section]["top1"]) and len(m["cells"]) == 100
    assert "worst group" in format_report(r)
    flat = flat_results(r)
    assert flat["knn_worst_group_acc"] == r["knn"]["groups"]["worst_group_acc"] and "linear_mean_gap" in flat


def test_finetune_report_has_groups():
    from ssl_aug.data.embedded import load_embedded
    from ssl_aug.evaluation.finetune import finetune
    from ssl_aug.models import build_backbone

    tr = load_embedded("train", cache=False, size=12, n_per_class=6, spurious=0.9)
    te = load_embedded("test", cache=False, size=12, n_per_class=10, spurious=0.9)
    torch.manual_seed(0)
    enc = build_backbone("small_cnn", widths=[8, 8, 8])
    r = finetune(enc, [0.5] * 3, [0.25] * 3, (tr.images, tr.labels), (te.images, te.labels),
                 {"epochs": 1, "batch_size": 32, "val_fraction": 0.2}, progress=False, test_groups=te.groups,
                 classes=te.classes, group_names=te.group_names)
    assert r["groups"]["average"] == pytest.approx(r["top1"]) and len(r["groups"]["cells"]) == 100
