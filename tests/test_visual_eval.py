"""Robustness, embedding map, neighbours, kNN sweep and linear-protocol evaluators on a tiny encoder, the
invariance <-> robustness table, and their one-line errors."""

import json

import pytest
import torch
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import EvalContext, build_evaluator, format_report, run_evaluators
from ssl_aug.evaluation.knn import knn_evaluate
from ssl_aug.evaluation.knn_sweep import knn_sweep
from ssl_aug.evaluation.robustness import random_init_like, robustness_eval

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _data(n, seed):
    """Two classes of 16 px images: bright left half vs bright right half, with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 16, 16, generator=g) * 200
    x[y == 0, :, :, :8] += 30
    x[y == 1, :, :, 8:] += 30
    return x.clamp(0, 255).to(torch.uint8), y


def _encoder():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten())


def _ctx(tmp_path=None):
    return EvalContext(_encoder(), MEAN, STD, _data(60, 0), _data(20, 1), progress=False, run_dir=tmp_path,
                       classes=["left", "right"])


def test_robustness_against_a_plain_loop_and_ce_definition():
    enc, train, test = _encoder(), _data(60, 0), _data(20, 1)
    r = robustness_eval(enc, MEAN, STD, train, test, ["contrast", "gaussian_noise"], [1, 5], k=5,
                        baseline=random_init_like(enc, seed=1))
    from ssl_aug.augment.corruptions import corrupt
    from ssl_aug.evaluation.features import extract_features
    from ssl_aug.evaluation.robustness import corruption_seed

    tr_f = extract_features(enc, train[0], MEAN, STD, progress=False)
    # contrast is deterministic: recompute severity 5 by hand
    f = extract_features(enc, corrupt(test[0], "contrast", 5, seed=corruption_seed(0, "contrast", 5) * 100003),
                         MEAN, STD, progress=False)
    assert r["by_corruption"]["contrast"]["knn"][1] == pytest.approx(
        knn_evaluate(tr_f, train[1], f, test[1], ks=(5,))["top1"])
    err = lambda accs: sum(1 - a for a in accs)  # noqa: E731
    for name in ("contrast", "gaussian_noise"):
        ce = err(r["by_corruption"][name]["knn"]) / err(r["baseline"]["by_corruption"][name]["knn"])
        assert r["ce"][name]["knn"] == pytest.approx(ce)
    assert r["mce"]["knn"] == pytest.approx(sum(r["ce"][n]["knn"] for n in r["ce"]) / 2)
    assert r["drop"]["linear"] == pytest.approx(r["clean"]["linear"] - r["mean"]["linear"])
    again = robustness_eval(enc, MEAN, STD, train, test, ["gaussian_noise"], [5], k=5, linear=False)
    assert again["by_corruption"]["gaussian_noise"]["knn"] == r["by_corruption"]["gaussian_noise"]["knn"][1:]


def test_evaluators_on_the_contract(tmp_path):
    ctx = _ctx(tmp_path)
    evaluators = [build_evaluator("robustness", {"corruptions": ["fog"], "severities": [2], "k": 5}),
                  build_evaluator("umap", {"method": "tsne", "images": 20}),
                  build_evaluator("neighbours", {"queries": 4, "k": 3}),
                  build_evaluator("knn_sweep", {"ks": [1, 5], "temperatures": [0.1, 0.5]}),
                  build_evaluator("linear_protocol", {"epochs": 2, "batch_size": 32})]
    out = run_evaluators(ctx, evaluators)
    assert (tmp_path / "umap.png").stat().st_size > 0 and (tmp_path / "neighbours.png").stat().st_size > 0
    assert out["umap"]["method"] == "tsne" and 0 <= out["neighbours"]["same_class"] <= 1
    assert set(out["knn_sweep"]["top1"]) == {0.1, 0.5} and out["robustness"]["severities"] == [2]
    assert 0 <= out["linear_protocol"]["top1"] <= 1
    text = format_report(json.loads(json.dumps(out)))
    assert "fog" in text and "T \\ k" in text and "linear protocol" in text and "neighbours" in text.lower()


def test_knn_sweep_matches_single_runs():
    train, test = _data(60, 0), _data(20, 1)
    tr_f, te_f = torch.randn(60, 8), torch.randn(20, 8)
    r = knn_sweep(tr_f, train[1], te_f, test[1], ks=[3, 7], temperatures=[0.07, 0.3])
    for t in (0.07, 0.3):
        for k in (3, 7):
            assert r["top1"][t][k] == knn_evaluate(tr_f, train[1], te_f, test[1], ks=(k,), temperature=t)["top1"]
    assert r["best"]["top1"] == max(a for row in r["top1"].values() for a in row.values())


@pytest.mark.parametrize("name,table,match", [
    ("robustness", {"corruptions": ["fgo"]}, "did you mean 'fog'"),
    ("robustness", {"severities": [6]}, "from 1 to 5"),
    ("robustness", {"severites": [1]}, "severities"),
    ("umap", {"method": "pca"}, "choose one of"),
    ("linear_protocol", {"epochs": 0}, "epochs >= 1"),
])
def test_bad_evaluator_keys_one_line(name, table, match):
    with pytest.raises(SslAugError, match=match) as err:
        build_evaluator(name, table)
    assert "\n" not in str(err.value)


def test_missing_umap_extra_one_line(monkeypatch):
    from ssl_aug.evaluation import embedding

    monkeypatch.setattr(embedding, "_available", lambda module: False)
    with pytest.raises(SslAugError, match=r"ssl_aug\[viz\]") as err:
        build_evaluator("umap", {"method": "umap"})
    assert "\n" not in str(err.value)
    with pytest.raises(SslAugError, match="umap-learn"):
        embedding.embed_2d(torch.randn(10, 4))


def test_invariance_robustness_table(tmp_path):
    from ssl_aug.workflows.ablation.invariance_robustness import correlation, write_invariance_robustness

    for cell, inv, acc in (("full", 0.9, 0.7), ("no_color", 0.5, 0.4), ("mid", 0.7, 0.6)):
        run = tmp_path / cell / "seed0"
        run.mkdir(parents=True)
        (run / "ablation_cell.json").write_text(json.dumps({"cell": cell, "seed": 0}))
        flat = {"knn_top1": 0.8, "invariance_color_jitter": inv, "robustness_knn_clean": 0.8,
                "robustness_knn_brightness": acc, "robustness_knn_contrast": acc - 0.1}
        (run / "eval.json").write_text(json.dumps(flat))
    text, written = write_invariance_robustness(tmp_path)
    assert "| full | 0 | color_jitter | 0.900 | brightness, contrast | 65.0 | 80.0 | 0.812 | - |" in text
    import numpy as np

    r = np.corrcoef([0.9, 0.5, 0.7], [0.65 / 0.8, 0.35 / 0.8, 0.55 / 0.8])[0, 1]
    assert f"| color_jitter | 3 | 0.98 | {r:.2f} |" in text and (tmp_path / "invariance_robustness.md").is_file()
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    empty = tmp_path / "none"
    empty.mkdir()
    with pytest.raises(SslAugError, match="no run has both"):
        write_invariance_robustness(empty)


@pytest.mark.parametrize("argv,match", [
    (["--robustness", "--corruption", "fgo"], "unknown corruption 'fgo'; did you mean 'fog'"),
    (["--robustness", "--severity", "0"], "severity 0 is not allowed"),
    (["--corruption", "fog"], "add --robustness"),
])
def test_cli_robustness_bad_input_one_line(argv, match, capsys, tmp_path):
    from ssl_aug.cli import main

    code = main(["eval", "random:small_cnn", "--data", "embedded", "--json", str(tmp_path / "e.json"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and match in err and len(err.splitlines()) == 1


def test_cli_robustness_prints_the_table(capsys, tmp_path):
    from ssl_aug.cli import main

    code = main(["eval", "random:small_cnn", "--data", "embedded", "--robustness", "--corruption", "contrast",
                 "--severity", "5", "--train-subset", "200", "--test-subset", "100", "--k", "20", "--no-progress",
                 "--json", str(tmp_path / "e.json")])
    out = capsys.readouterr().out
    assert code == 0 and "| contrast |" in out and "mCE" in out
    assert json.loads((tmp_path / "e.json").read_text())["robustness"]["severities"] == [5]
