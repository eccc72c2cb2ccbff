"""Policy search: space parsing and its bad inputs (one line each, nothing written), label-free scores
against plain-loop references, Spearman against the closed form, TOML round trip, missing extras."""

import math
import sys

import pytest
import torch

from ssl_aug.config import read_toml, resolve_recipe_path
from ssl_aug.errors import SslAugError
from ssl_aug.workflows.search.objectives import (alignment, carve_validation, check_objective, rotation_accuracy,
                                       uniformity, _rotations)
from ssl_aug.workflows.search.report import dump_toml, spearman
from ssl_aug.workflows.search.space import apply_point, base_point, parse_space
from ssl_aug.workflows.search.spec import load_search

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@pytest.fixture(scope="module")
def base():
    return read_toml(resolve_recipe_path("quickstart"))


def _one_line(exc) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_space_points_become_recipes(base):
    space = {"augment.scale.0": {"low": 0.05, "high": 0.6}, "augment.color_jitter.strength": {"low": 0.0, "high": 1.5},
             "augment.grayscale_p": {"low": 0.0, "high": 0.5}, "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
             "op.blur": {"on": {"p": 0.5}}, "op.kornia.RandomErasing": {"on": {"p": 0.5}},
             "augment.auto_augment": {"choices": ["none", "randaugment"]},
             "augment.multicrop.local_views": {"low": 0, "high": 2}}
    params = parse_space(space, base)
    kinds = {p.key: p.kind for p in params}
    assert kinds["augment.multicrop.local_views"] == "int" and kinds["op.blur"] == "switch"
    assert kinds["augment.scale.0"] == "float" and next(p for p in params if p.key == "train.lr").log
    point = {"augment.scale.0": 0.3, "augment.color_jitter.strength": 1.0, "augment.grayscale_p": 0.1,
             "train.lr": 0.001, "op.blur": True, "op.kornia.RandomErasing": True, "augment.auto_augment": "none",
             "augment.multicrop.local_views": 2}
    r = apply_point(base, params, point)
    aug = r["augment"]
    assert aug["scale"] == [0.3, 1.0] and base["augment"]["scale"] == [0.2, 1.0]  # base left untouched
    assert aug["color_jitter"]["brightness"] == pytest.approx(0.8) and aug["color_jitter"]["hue"] == pytest.approx(0.2)
    assert aug["color_jitter"]["p"] == base["augment"]["color_jitter"]["p"]
    assert aug["blur"]["p"] == 0.5 and aug["kornia"] == [{"op": "RandomErasing", "p": 0.5}]
    assert aug["auto_augment"] is None and aug["multicrop"]["local_views"] == 2 and r["train"]["lr"] == 0.001
    off = apply_point(base, params, dict(point, **{"op.blur": False, "op.kornia.RandomErasing": False}))
    assert off["augment"]["blur"]["p"] == 0.0 and off["augment"]["kornia"] == []
    # the base recipe as a point: its own values (jitter strength 0.5 = (0.4, 0.4, 0.4, 0.1))
    bp = base_point(base, params)
    assert bp["augment.scale.0"] == 0.2 and bp["augment.color_jitter.strength"] == pytest.approx(0.5)
    assert bp["op.blur"] is False and bp["augment.auto_augment"] == "none" and bp["augment.multicrop.local_views"] == 0
    again = apply_point(base, params, bp)["augment"]["color_jitter"]
    assert again["brightness"] == pytest.approx(0.4) and again["hue"] == pytest.approx(0.1)


def test_randaugment_n_and_m_are_searchable(base):
    space = {"augment.auto_augment": {"choices": ["none", "randaugment"]},
             "augment.randaugment_n": {"low": 1, "high": 3}, "augment.randaugment_m": {"low": 2.0, "high": 20.0}}
    params = parse_space(space, base)
    assert [p.kind for p in params] == ["choice", "int", "float"]
    point = {"augment.auto_augment": "randaugment", "augment.randaugment_n": 3, "augment.randaugment_m": 14.5}
    aug = apply_point(base, params, point)["augment"]
    assert (aug["auto_augment"], aug["randaugment_n"], aug["randaugment_m"]) == ("randaugment", 3, 14.5)
    from ssl_aug.augment.recipe import view_specs
    from ssl_aug.config import config_from_dict
    cfg = view_specs(config_from_dict(apply_point(base, params, point)).augment)[0][0].cfg("policy")
    assert (cfg.randaugment_n, cfg.randaugment_m) == (3, 14.5)
    bp = base_point(base, params)  # the base recipe has no policy: the op's defaults N=2, M=10
    assert bp == {"augment.auto_augment": "none", "augment.randaugment_n": 2, "augment.randaugment_m": 10.0}


@pytest.mark.parametrize("space, words", [
    ({"augment.colour_jitter.p": {"low": 0.0, "high": 1.0}}, ["colour_jitter", "allowed keys"]),
    ({"train.nope": {"low": 1, "high": 2}}, ["unknown parameter 'train.nope'", "epochs"]),
    ({"op.sharpen": {"on": {"p": 0.5}}}, ["unknown op 'sharpen'", "blur"]),
    ({"op.kornia.NoSuchOp": {"on": {}}}, ["NoSuchOp", "RandomErasing"]),
    ({"augment.grayscale_p": {"low": 0.5, "high": 0.1}}, ["inverted range", "0.5 > high = 0.1"]),
    ({"augment.grayscale_p": {"low": 0.3, "high": 0.3}}, ["empty range", "low < high"]),
    ({"augment.auto_augment": {"choices": []}}, ["is empty"]),
    ({"augment.grayscale_p": {"low": 0.0, "high": 2.0}}, ["grayscale_p", "2.0", "[0, 1]"]),
    ({"augment.grayscale_p": 0.5}, ["use a table"]),
    ({"augment.randaugment_n": {"low": 1, "high": 20}}, ["randaugment_n", "20", "1-15"]),
    ({"augment.randaugment_m": {"low": 0.0, "high": 45.0}}, ["randaugment_m", "45.0", "0-30"]),
    ({}, ["non-empty [space]"]),
])
def test_bad_space_is_one_line(base, space, words):
    with pytest.raises(SslAugError) as exc:
        parse_space(space, base)
    text = _one_line(exc)
    for w in words:
        assert w in text, text


def test_bad_spec_writes_nothing(tmp_path):
    out = tmp_path / "search"
    spec = tmp_path / "s.toml"
    spec.write_text(f'base = "quickstart"\noutput_dir = "{out}"\n[space]\n"augment.grayscale_p" = {{ low = 0.4, high = 0.1 }}\n')
    with pytest.raises(SslAugError) as exc:
        load_search(spec)
    assert "inverted range" in _one_line(exc)
    for bad, words in [("objective = \"accuracy\"", "knn_val"), ("trials = 0", "trials = 0"), ("pruner = { name = \"asha\" }", "hyperband"),
                       ("colour = 1", "unknown search spec key 'colour'")]:
        spec.write_text(f'base = "quickstart"\noutput_dir = "{out}"\n{bad}\n[space]\n"augment.grayscale_p" = {{ low = 0.0, high = 0.4 }}\n')
        with pytest.raises(SslAugError) as exc:
            load_search(spec)
        assert words in _one_line(exc)
    assert not out.exists()


def test_objective_needing_labels_on_unlabelled_data():
    unlabelled = torch.full((100,), -1, dtype=torch.long)
    with pytest.raises(SslAugError) as exc:
        check_objective("knn_val", unlabelled)
    text = _one_line(exc)
    assert "needs labels" in text and "align_uniform" in text and "rotation" in text
    assert check_objective("align_uniform", unlabelled) is False
    assert check_objective("rotation", torch.arange(10) % 3) is True
    with pytest.raises(SslAugError):
        check_objective("top1", unlabelled)


def test_unlabelled_search_refused_before_writing(tmp_path, monkeypatch):
    import ssl_aug.train
    from ssl_aug.data import ImageDataset
    from ssl_aug.workflows.search.study import prepare_search

    pytest.importorskip("optuna")
    images = torch.randint(0, 256, (64, 3, 20, 20), dtype=torch.uint8)
    monkeypatch.setattr(ssl_aug.train, "load_training_data",
                        lambda cfg, split=None: ImageDataset(images, torch.full((64,), -1), [], "unlabelled"))
    out = tmp_path / "s"
    spec = load_search({"base": "quickstart", "output_dir": str(out), "validation": 16,
                        "space": {"augment.grayscale_p": {"low": 0.0, "high": 0.4}}})
    with pytest.raises(SslAugError) as exc:
        prepare_search(spec)
    assert "needs labels" in _one_line(exc)
    assert not out.exists()


def test_carve_validation_is_disjoint_and_balanced():
    labels = torch.arange(100) % 5
    train, val = carve_validation(labels, 20, 0, labelled=True)
    assert len(set(train.tolist()) & set(val.tolist())) == 0 and len(train) + len(val) == 100
    assert torch.bincount(labels[val]).tolist() == [4] * 5
    with pytest.raises(SslAugError):
        carve_validation(labels, 80, 0, labelled=True)


def test_alignment_and_uniformity_match_plain_loops():
    g = torch.Generator().manual_seed(0)
    z1 = torch.nn.functional.normalize(torch.randn(12, 5, generator=g), dim=1)
    z2 = torch.nn.functional.normalize(z1 + 0.3 * torch.randn(12, 5, generator=g), dim=1)
    ref_align = sum(sum((float(a) - float(b)) ** 2 for a, b in zip(z1[i], z2[i])) for i in range(12)) / 12
    assert alignment(z1, z2) == pytest.approx(ref_align, rel=1e-5)
    terms = []
    for i in range(12):
        for j in range(i + 1, 12):
            d2 = sum((float(a) - float(b)) ** 2 for a, b in zip(z1[i], z1[j]))
            terms.append(math.exp(-2 * d2))
    assert uniformity(z1) == pytest.approx(math.log(sum(terms) / len(terms)), rel=1e-6)
    assert alignment(z1, z1) == 0.0
    # collapsed features are the least uniform: log E exp(0) = 0
    assert uniformity(torch.nn.functional.normalize(torch.ones(6, 3), dim=1)) == pytest.approx(0.0, abs=1e-12)


def test_rotation_score():
    x = torch.zeros(2, 3, 4, 4, dtype=torch.uint8)
    x[0, :, 0, 1] = 255
    rot, labels = _rotations(x)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for k in range(4):  # plain reference: rot90 counter-clockwise k times, pixel by pixel
        ref = x[0, 0].clone()
        for _ in range(k):
            ref = torch.tensor([[int(ref[c, 3 - r]) for c in range(4)] for r in range(4)], dtype=torch.uint8)
        assert torch.equal(rot[2 * k, 0], ref)
    # images with an orientation cue: pixel features tell the rotation apart, a constant encoder cannot
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 60, (64, 3, 8, 8), generator=g, dtype=torch.uint8)
    imgs[:, :, :2, :] = 255  # a bright top band
    flat = torch.nn.Sequential(torch.nn.Flatten())
    assert rotation_accuracy(flat, imgs, [0.5] * 3, [0.25] * 3) > 0.9

    class Constant(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.w * torch.ones(x.shape[0], 4)

    assert rotation_accuracy(Constant(), imgs, [0.5] * 3, [0.25] * 3) <= 0.3


def test_spearman_matches_closed_form_and_average_ties():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(15, generator=g).tolist(), torch.randn(15, generator=g).tolist()
    rank = lambda v: [sorted(v).index(a) + 1 for a in v]  # noqa: E731 (no ties here)
    d2 = sum((a - b) ** 2 for a, b in zip(rank(x), rank(y)))
    assert spearman(x, y) == pytest.approx(1 - 6 * d2 / (15 * (15 ** 2 - 1)))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties: ranks [1.5, 1.5, 3, 4] vs [1, 2, 3, 4] -> Pearson of the ranks
    rx, ry = [1.5, 1.5, 3, 4], [1, 2, 3, 4]
    mx, my = sum(rx) / 4, sum(ry) / 4
    ref = sum((a - mx) * (b - my) for a, b in zip(rx, ry)) / math.sqrt(
        sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    assert spearman([5, 5, 6, 7], [1, 2, 3, 4]) == pytest.approx(ref)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_best_recipe_toml_round_trips(base):
    data = dict(base, augment=dict(base["augment"], kornia=[{"op": "RandomErasing", "p": 0.5}], auto_augment=None),
                description='quote " and \\ backslash')
    back = tomllib.loads(dump_toml(data, "header\nline two"))
    expected = dict(data, augment={k: v for k, v in data["augment"].items() if v is not None})
    assert back == expected


def test_missing_extras_name_the_pip_command(monkeypatch):
    from ssl_aug.workflows.launchers import require_ray
    from ssl_aug.workflows.search.study import require_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(SslAugError) as exc:
        require_optuna()
    assert "pip install 'ssl_aug[search]'" in _one_line(exc)
    with pytest.raises(SslAugError) as exc:
        require_ray()
    assert "pip install 'ssl_aug[ray]'" in _one_line(exc)


@pytest.mark.parametrize("name", ["search_quickstart", "search_cifar10_cpu"])
def test_shipped_search_specs_load(name):
    spec = load_search(name)
    assert spec.params and spec.raw["trials"] >= 1 and spec.epochs >= 1
    assert spec.out_dir.as_posix() == f"runs/{name}"
