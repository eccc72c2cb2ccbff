"""Plots: nothing cut off (every text fits the saved PNG), reference lines drawn, reliability diagram."""

import pytest

pytest.importorskip("matplotlib")

import matplotlib.image  # noqa: E402

import ssl_aug.evaluation.plots as plots  # noqa: E402

ROWS = [{"cell": "full recipe with a long name", "seeds": 2, "knn_top1": (0.75, 0.01), "invariance_color_jitter": (0.7, 0.0),
         "invariance_grayscale": (0.5, 0.0), "invariance_crop_scale": (0.82, 0.0)},
        {"cell": "no_color_distortion", "seeds": 2, "knn_top1": (0.15, 0.003), "invariance_color_jitter": (0.27, 0.0),
         "invariance_grayscale": (0.14, 0.0), "invariance_crop_scale": (0.98, 0.0)}]
METRICS = ["knn_top1", "invariance_color_jitter", "invariance_grayscale", "invariance_crop_scale"]
TITLE = "Quickstart: colour distortion on the embedded data set, a title long enough to overflow a small figure"


@pytest.fixture
def figures(monkeypatch):
    seen = []
    real = plots._save

    def spy(fig, path):
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_window_extent") and hasattr(a, "get_text"))
                 if t.get_text() and t.get_visible()]
        boxes = [t.get_window_extent(renderer) for t in texts]
        seen.append({"fig": fig, "texts": [t.get_text() for t in texts],
                     "span": (max(b.x1 for b in boxes) - min(b.x0 for b in boxes), max(b.y1 for b in boxes) -
                              min(b.y0 for b in boxes)), "dpi": fig.dpi,
                     "lines": [line.get_label() for ax in fig.axes for line in ax.get_lines()]})
        out = real(fig, path)
        seen[-1]["png"] = matplotlib.image.imread(out).shape
        return out

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def _fits(record):
    """The saved PNG (at 120 dpi) is at least as large as the span of every text in the figure."""
    h, w = record["png"][:2]
    span_w, span_h = (s / record["dpi"] * 120 for s in record["span"])
    return w >= span_w - 2 and h >= span_h - 2


def test_ablation_plots_keep_titles_and_colourbar_label_and_draw_reference_lines(tmp_path, figures):
    refs = {"chance": 0.1, "raw pixels": 0.55, "random encoder": 0.28, "missing": None}
    written, note = plots.plot_results(ROWS, METRICS, tmp_path, TITLE, references=refs)
    assert note == "" and sorted(p.name for p in written) == ["accuracy.png", "invariance.png"]
    acc, inv = figures
    assert _fits(acc) and _fits(inv)
    assert {"chance (0.100)", "raw pixels (0.550)", "random encoder (0.280)"} <= set(acc["lines"])
    assert not any(label.startswith("missing") for label in acc["lines"])
    assert any("\n" in t for t in acc["texts"])  # the long title is wrapped, not cut
    assert any(t.startswith("invariance\n") for t in inv["texts"])  # the colour-bar label is drawn
    assert any(t.endswith("invariance per transform") or "invariance per" in t for t in inv["texts"])


def test_reliability_diagram(tmp_path, figures):
    bins = {"edges": [i / 5 for i in range(6)], "count": [0, 3, 5, 10, 2],
            "accuracy": [None, 0.3, 0.5, 0.6, 1.0], "confidence": [None, 0.3, 0.5, 0.7, 0.9]}
    path = plots.plot_reliability(bins, tmp_path / "rel.png", title="fine-tuned, mix=mixup")
    assert path.is_file()
    (rec,) = figures
    assert _fits(rec)
    assert {"accuracy", "share of samples", "confidence (max class probability)"} <= set(rec["texts"])
    assert "perfect calibration" in rec["lines"]


def test_reference_accuracies_match_independent_computations():
    import torch

    from ssl_aug.evaluation.floors import raw_pixel_features, reference_accuracies

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60, 3, 8, 8), generator=g, dtype=torch.uint8)
    y = torch.arange(60) % 3
    x[y == 1] //= 3  # class 1 is darker, class 2 has a bright top half: raw pixels can tell them apart
    x[y == 2, :, :4] = 250
    f = raw_pixel_features(x)
    assert torch.allclose(f.mean(1), torch.zeros(60), atol=1e-6)
    assert torch.allclose(f[0], x[0].flatten().float() / 255 - (x[0].flatten().float() / 255).mean(), atol=1e-6)
    floors = reference_accuracies((x[:40], y[:40]), (x[40:], y[40:]), "small_cnn", {"widths": [4]},
                                  [0.5] * 3, [0.25] * 3, k=5, temperature=0.1)
    assert floors["chance"] == 1 / 3
    # an independent numpy cosine kNN (k=5, weights exp(sim / 0.1)) on the same raw-pixel features
    import numpy as np

    a, b = f[:40].numpy(), f[40:].numpy()
    a, b = a / np.linalg.norm(a, axis=1, keepdims=True), b / np.linalg.norm(b, axis=1, keepdims=True)
    sims = b @ a.T
    preds = []
    for row in sims:
        idx = np.argsort(-row)[:5]
        votes = np.zeros(3)
        for i in idx:
            votes[int(y[i])] += np.exp(row[i] / 0.1)
        preds.append(votes.argmax())
    assert abs(floors["raw pixels"] - float(np.mean(np.array(preds) == y[40:].numpy()))) < 1e-9
    assert 0 <= floors["random encoder"] <= 1


def test_ablation_report_draws_the_floors(tmp_path, figures):
    import torch

    from ssl_aug.workflows.ablation.report import write_report
    from ssl_aug.workflows.ablation.spec import Run
    from ssl_aug.config import config_from_dict

    cfg = config_from_dict({"data": {"name": "embedded", "options": {"n_per_class": 12, "cache": False}},
                            "model": {"backbone": "small_cnn", "backbone_args": {"widths": [4]}},
                            "eval": {"knn_k": 5}})
    runs = [Run("full", 0, {}, tmp_path / "full" / "seed0", cfg, results={"knn_top1": 0.7})]
    write_report(runs, tmp_path, "floors")
    labels = figures[0]["lines"]
    assert any(x.startswith("chance (0.100)") for x in labels)
    assert any(x.startswith("raw pixels") for x in labels) and any(x.startswith("random encoder") for x in labels)
    assert (tmp_path / "floors.json").is_file()
