"""TANDA-style learned TF sequences: the tf_sequence op (per-image sampling follows the probabilities,
exact replay, sub-batches, range, one-line errors), the REINFORCE gradient of the mean-field generator
against plain loops, the learner on a toy problem with one clearly in-distribution TF, and the search
strategy "tanda" (spec checks, best_recipe.toml, the CLI end to end)."""

import json
import math

import pytest
import torch

from ssl_aug.augment import MultiView, ViewSpec, list_ops
from ssl_aug.augment.ops import tf_names
from ssl_aug.augment.recipe import build_views
from ssl_aug.config import load_recipe
from ssl_aug.errors import SslAugError
from ssl_aug.workflows.search.spec import load_search
from ssl_aug.workflows.search.tanda import TandaSettings, learn_tf_sequence, reinforce_loss, sequence_rewards
from cli_helpers import run_cli

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
PLAIN = dict(color_jitter={"p": 0.0}, grayscale_p=0.0, flip_p=0.0, **RAW)
K = 15
INVERT, EQUALIZE, ROTATE = 2, 1, 3


def onehot(j):
    return [1.0 if k == j else 0.0 for k in range(K)]


def images(n=16, side=16, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def one_line(exc) -> str:
    text = str(exc.value)
    assert text and "\n" not in text
    return text


def test_registered_last_and_off_by_default():
    assert list_ops()[-1] == "tf_sequence" and tf_names()[INVERT] == "Invert" and len(tf_names()) == K
    p = MultiView(ViewSpec(**PLAIN), 1).sample(images(), torch.Generator().manual_seed(0))[0]
    assert not any(k.startswith("tf") for k in p.as_dict())  # off: nothing drawn, older parameters unchanged


def test_one_hot_rows_always_pick_their_tf():
    x = images()
    mv = MultiView(ViewSpec(size=16, tf_sequence={"probs": [onehot(ROTATE), onehot(INVERT)]}, **PLAIN), 1)
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    choice = params[0].tf_choice
    assert choice.shape == (16, 2) and (choice[:, 0] == ROTATE).all() and (choice[:, 1] == INVERT).all()
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in params[0].as_dict() if k.startswith("tf") and "." in k} \
        == {f"tf0.{ROTATE}", f"tf1.{INVERT}"}  # parameters only for TFs that can be drawn


def test_two_tf_row_frequencies_follow_the_probabilities():
    row = [0.0] * K
    row[INVERT], row[EQUALIZE] = 0.3, 0.7
    x = images(4000, side=4)
    p = MultiView(ViewSpec(size=4, tf_sequence={"probs": [row]}, **PLAIN), 1).sample(x, torch.Generator().manual_seed(1))[0]
    c = p.tf_choice[:, 0]
    assert set(c.unique().tolist()) == {INVERT, EQUALIZE}
    assert abs((c == INVERT).float().mean().item() - 0.3) < 0.025  # 5 std of a binomial mean at n = 4000


def test_views_replay_exactly_on_the_batch_and_a_sub_batch():
    x = images(24)
    uniform = [1.0 / K] * K
    spec = ViewSpec(size=16, tf_sequence={"probs": [uniform, uniform, uniform], "m": 12.0}, **PLAIN)
    mv = MultiView(spec, 2)
    views, params = mv(x, torch.Generator().manual_seed(2), return_params=True)
    plain = MultiView(spec.replace(tf_sequence={"probs": []}), 2).apply(x, params)
    assert not torch.equal(views[0], plain[0])  # the sequences changed the images
    assert all(torch.equal(a, b) for a, b in zip(views, mv.apply(x, params)))
    sub = mv.apply(x[5:13], [p[5:13] for p in params])
    assert all(torch.equal(v[5:13], s) for v, s in zip(views, sub))
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)
    assert len({tuple(r) for r in params[0].tf_choice.tolist()}) > 5  # per-image sequences
    masked = MultiView(spec, 2, masked=True).apply(x, params)  # the device engine, run on the CPU
    assert all((a - b).abs().max() <= 1e-5 for a, b in zip(views, masked))


def test_invariance_probe_and_crop_only_handle_the_op():
    from ssl_aug.augment.presets import crop_only
    from ssl_aug.evaluation.invariance import op_transform

    x = images(6)
    assert op_transform("tf_sequence")(x).shape == x.shape and not torch.equal(op_transform("tf_sequence")(x), x)
    spec = ViewSpec(tf_sequence={"probs": [onehot(INVERT)]})
    assert not crop_only(spec).tf_sequence.probs


def test_recipe_form_loads_and_round_trips():
    table = {"size": 16, "tf_sequence": {"probs": [onehot(INVERT)], "m": 5}}
    spec = build_views(table).view_specs[0]
    assert spec.tf_sequence.probs == [onehot(INVERT)] and spec.tf_sequence.m == 5.0
    assert ViewSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize("value, words", [
    ({"probs": [[1.0 / 14] * 14]}, ["tf_sequence.probs", "15 non-negative numbers", "summing to 1"]),
    ({"probs": [[-0.1, 1.1] + [0.0] * 13]}, ["tf_sequence.probs", "non-negative"]),
    ({"probs": [[0.9 / K] * K]}, ["tf_sequence.probs", "within 0.0001"]),
    ({"probs": "uniform"}, ["tf_sequence.probs", "or [] for off"]),
    ({"m": 31}, ["tf_sequence.m", "0-30"]),
    ({"m": "high"}, ["tf_sequence.m", "0-30"]),
    ({"length": 2}, ["'length'", "probs, m"]),
])
def test_bad_values_are_one_line(value, words):
    with pytest.raises(SslAugError) as exc:
        ViewSpec(tf_sequence=value)
    text = one_line(exc)
    assert all(w in text for w in words), text


def test_reinforce_gradient_matches_plain_loops():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, requires_grad=True)
    choice = torch.tensor([[0, 3], [2, 3], [1, 0]])
    adv = torch.tensor([0.5, -1.0, 2.0])
    beta = 0.1
    reinforce_loss(logits, choice, adv, beta).backward()
    z = logits.detach().tolist()
    expected = [[0.0] * 4 for _ in range(2)]
    for pos in range(2):
        exps = [math.exp(v) for v in z[pos]]
        p = [e / sum(exps) for e in exps]
        entropy = -sum(q * math.log(q) for q in p)
        for k in range(4):
            g = 0.0
            for i in range(3):  # d/dz_k of -adv_i log p[a_i] / N
                g -= adv[i].item() * ((1.0 if choice[i][pos] == k else 0.0) - p[k]) / 3
            g -= beta * (-p[k] * (math.log(p[k]) + entropy))  # d/dz_k of -beta H
            expected[pos][k] = g
    assert torch.allclose(logits.grad, torch.tensor(expected), atol=1e-6)


def test_reward_penalises_unchanged_images():
    x = torch.rand(2, 3, 8, 8)
    out = torch.stack([x[0], 1.0 - x[1]])
    r = sequence_rewards(torch.zeros(2), out, x, distance_weight=1e-3)
    assert r[0] < r[1] and abs(r[0].item() - (math.log(0.5) - 1.0)) < 1e-6  # the identity costs w / eps = 1


def test_learner_raises_the_in_distribution_tf():
    """Sources are dark textures, D's real images are bright (inverted) ones: Invert is the TF that maps
    the sources into the real distribution."""
    from ssl_aug.data import load_dataset

    ds = load_dataset("embedded", split="train")
    dark = (ds.images[:1000].float() * 0.3).to(torch.uint8)
    result = learn_tf_sequence(dark[:500], 255 - dark[500:], TandaSettings(length=1, steps=120, seed=0))
    assert result.probs[0][INVERT] > 0.5 and max(result.probs[0]) == result.probs[0][INVERT]
    assert result.cpu_s > 0 and result.history[-1]["step"] == 120


TINY = """
base = "quickstart"
output_dir = "{out}"
strategy = "tanda"
seed = 0
compare_seeds = {seeds}
[base_overrides]
"data.subset" = 240
"train.epochs" = 1
"train.batch_size" = 64
"eval.knn_k" = 20
"model.backbone_args" = {{ widths = [8, 16, 16] }}
"method.proj_hidden_dim" = 32
"method.proj_dim" = 16
[tanda]
length = 2
steps = {steps}
batch_size = 32
"""


def tiny_spec(tmp_path, seeds=0, steps=10, extra=""):
    out = tmp_path / "tanda"
    spec = tmp_path / "tanda.toml"
    spec.write_text(TINY.format(out=out.as_posix(), seeds=seeds, steps=steps) + extra)
    return spec, out


@pytest.mark.parametrize("extra, words", [
    ('colour = 1\n', "unknown search [tanda] key 'colour'"),
    ("lr = 0\n", "tanda.lr = 0"),
    ("entropy_weight = -1\n", "a number >= 0"),
    ("m = 40\n", "0-30"),
    ('[space]\n"augment.grayscale_p" = { low = 0.0, high = 0.5 }\n', "[space] is not used"),
])
def test_bad_tanda_spec_is_one_line_and_writes_nothing(tmp_path, extra, words):
    spec, out = tiny_spec(tmp_path, extra=extra)
    with pytest.raises(SslAugError) as exc:
        load_search(spec)
    assert words in one_line(exc)
    spec.write_text(spec.read_text().replace('strategy = "tanda"', 'strategy = "evolution"'))
    with pytest.raises(SslAugError) as exc:
        load_search(spec)
    assert "tpe, tanda" in one_line(exc)
    spec.write_text(TINY.format(out=out.as_posix(), seeds=0, steps=10))
    with pytest.raises(SslAugError) as exc:
        load_search(spec, ["tanda.length=9"])
    assert "tanda.length = 9" in one_line(exc) and "1-8" in one_line(exc)
    assert not out.exists()


def test_tanda_table_needs_the_tanda_strategy(tmp_path):
    spec, _ = tiny_spec(tmp_path)
    spec.write_text(spec.read_text().replace('strategy = "tanda"\n', '[space]\n"augment.grayscale_p" = '
                                             '{ low = 0.0, high = 0.5 }\n'))
    with pytest.raises(SslAugError) as exc:
        load_search(spec)
    assert "only used with strategy" in one_line(exc)


def test_shipped_tanda_spec_matches_the_tpe_spec():
    tanda, tpe = load_search("search_quickstart_tanda"), load_search("search_quickstart")
    assert tanda.base == tpe.base and tanda.raw["tanda"]["length"] == 2 and not tanda.params
    assert tanda.out_dir.as_posix() == "runs/search_quickstart_tanda"


def test_spec_path_writes_a_recipe_that_builds_views(tmp_path):
    from ssl_aug.workflows.search.tanda_search import run_tanda_search

    spec, out = tiny_spec(tmp_path)
    report, files = run_tanda_search(load_search(spec), compare_seeds=0, progress=False)
    cfg = load_recipe(out / "best_recipe.toml")
    rows = cfg.augment["tf_sequence"]["probs"]
    assert len(rows) == 2 and all(abs(sum(r) - 1) < 1e-4 for r in rows)
    views = build_views(cfg.augment)(images(4, side=20), torch.Generator().manual_seed(0))
    assert len(views) == 2 and views[0].shape == (4, 3, 20, 20)
    log = json.loads((out / "tanda.json").read_text())
    assert log["result"]["probs"] and log["result"]["wall_s"] > 0 and "| position |" in report
    with pytest.raises(SslAugError) as exc:  # another spec in the same folder is refused
        run_tanda_search(load_search(spec, ["tanda.steps=11"]), compare_seeds=0, progress=False)
    assert "another spec" in one_line(exc)


def test_cli_search_with_strategy_tanda_end_to_end(tmp_path, capsys):
    spec, out = tiny_spec(tmp_path, seeds=1, steps=5)
    code, err, stdout = run_cli(["search", spec, "--no-progress"], capsys)
    assert code == 0, err
    for name in ("best_recipe.toml", "tanda.md", "tanda.json", "report.md", "compare.md", "compare.json"):
        assert (out / name).is_file(), name
    compare = json.loads((out / "compare.json").read_text())
    assert compare["strategy"] == "tanda" and set(compare["results"]) == {"base recipe", "best policy"}
    assert "TANDA-learned TF sequence" in (out / "report.md").read_text()
