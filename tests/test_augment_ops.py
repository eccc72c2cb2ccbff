"""Ops as registered units: the registry (an op registered at test time), Kornia ops in views (replay,
errors), per-image RandAugment / AutoAugment, and the device ("masked") engine against the CPU one."""

import tomllib
from dataclasses import dataclass

import pytest
import torch

from ssl_aug.augment import OPS, MultiView, Op, ViewSpec, get_preset, list_ops, register_op
from ssl_aug.augment.multiview import pack_to_device
from ssl_aug.augment.ops.base import prob
from ssl_aug.augment.recipe import build_views
from ssl_aug.errors import SslAugError

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
PLAIN = dict(color_jitter={"p": 0.0}, grayscale_p=0.0, **RAW)  # crop + flip only


def images(n=12, side=32, seed=0):
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def same(a, b):
    return all(torch.equal(u, v) for u, v in zip(a, b))


def test_builtin_ops_registered_in_sampling_order():
    assert list_ops()[:7] == ["crop", "color_jitter", "grayscale", "blur", "solarize", "policy", "kornia"]
    assert all(isinstance(OPS[n], Op) for n in list_ops())


@dataclass
class InvertCfg:
    p: float = 0.0

    def __post_init__(self):
        self.p = prob("invert.p", self.p)


class Invert(Op):
    name, config, stage = "invert", InvertCfg, 55

    def sample(self, cfg, n, size, height, width, g):
        return {"invert_on": torch.rand(n, generator=g) < cfg.p}

    def apply(self, x, cfg, p, ctx):
        on = p.invert_on.to(x.device).view(-1, 1, 1, 1)
        return torch.where(on, 1.0 - x, x)


@pytest.fixture
def invert_op():
    register_op(Invert())
    yield
    OPS.pop("invert")


def test_an_op_registered_at_test_time_runs_in_views(invert_op):
    spec = ViewSpec.from_dict({"size": 16, "invert": {"p": 1.0}, **PLAIN})
    assert spec.invert.p == 1.0 and ViewSpec.from_dict(spec.to_dict()) == spec
    x = images()
    mv, base = MultiView(spec, 2), MultiView(spec.replace(invert={"p": 0.0}), 2)
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    plain = base.apply(x, params, normalize=False)
    assert all(torch.allclose(v, 1.0 - b, atol=1e-6) for v, b in zip(views, plain))
    assert same(views, mv.apply(x, params))
    with pytest.raises(SslAugError, match="invert.p"):
        ViewSpec(invert={"p": 2})
    with pytest.raises(SslAugError, match="already a view field"):
        register_op(type("Clash", (Invert,), {"name": "size"})())  # "size" is the crop's field


def test_new_op_leaves_builtin_parameters_of_the_first_view_alone(invert_op):
    x = images()
    spec = ViewSpec(invert={"p": 0.5})
    p = MultiView(spec, 1).sample(x, torch.Generator().manual_seed(3))[0]
    OPS.pop("invert")
    q = MultiView(ViewSpec(), 1).sample(x, torch.Generator().manual_seed(3))[0]
    register_op(Invert())
    assert all(torch.equal(getattr(p, k), v) for k, v in q.as_dict().items())


KORNIA = [{"op": "RandomErasing", "p": 1.0}, {"op": "RandomPerspective", "distortion_scale": 0.5, "p": 1.0},
          {"op": "RandomRotation", "degrees": 40.0, "p": 1.0}, {"op": "RandomElasticTransform", "p": 1.0},
          {"op": "RandomPosterize", "bits": 3, "p": 1.0}, {"op": "RandomEqualize", "p": 1.0}]


@pytest.mark.parametrize("entry", KORNIA, ids=[e["op"] for e in KORNIA])
def test_kornia_op_replays_exactly(entry):
    x = images()
    spec = ViewSpec(size=24, kornia=[entry], **PLAIN)
    mv = MultiView(spec, 2)
    views, params = mv(x, torch.Generator().manual_seed(1), return_params=True)
    plain = MultiView(spec.replace(kornia=[]), 2).apply(x, params)
    assert not torch.equal(views[0], plain[0])  # the op fired
    assert same(views, mv.apply(x, params))
    sub = mv.apply(x[2:7], [p[2:7] for p in params])  # a subset (hard-view selection) replays too
    assert all(torch.equal(v[2:7], s) for v, s in zip(views, sub))
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)
    other = mv(x, torch.Generator().manual_seed(2))
    assert not torch.equal(views[0], other[0])


def test_kornia_params_are_per_image_and_masked_engine_matches():
    x = images(8)
    spec = ViewSpec(size=24, kornia=[{"op": "RandomRotation", "degrees": 40.0, "p": 1.0}], **PLAIN)
    p = MultiView(spec, 1).sample(x, torch.Generator().manual_seed(0))[0]
    assert p.as_dict()["kornia0.degrees"].unique().numel() == 8
    a = MultiView(spec, 1).apply(x, [p])[0]
    b = MultiView(spec, 1, masked=True).apply(x, [p])[0]
    assert (a - b).abs().max() <= 1e-5


def test_two_kornia_ops_from_a_toml_recipe_build_and_replay():
    table = tomllib.loads('views = 2\nsize = 24\nkornia = [{op = "RandomErasing", p = 0.5}, '
                          '{op = "RandomPerspective", distortion_scale = 0.3, p = 0.5}]')
    mv = build_views(table)
    spec = mv.view_specs[0]
    assert [e["op"] for e in spec.kornia] == ["RandomErasing", "RandomPerspective"]
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    x = images()
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    assert same(views, mv.apply(x, params))


@pytest.mark.parametrize("entry, words", [
    ({"op": "RandomFoo"}, ["RandomFoo", "RandomErasing"]),
    ({"op": "RandomErasing", "q": 0.5}, ["RandomErasing", "signature", "scale"]),
    ({"op": "RandomErasing", "p": 3.0}, ["RandomErasing", "signature"]),
    ({"p": 0.5}, ["op ="]),
])
def test_bad_kornia_entry_is_one_line(entry, words):
    with pytest.raises(SslAugError) as e:
        ViewSpec(kornia=[entry])
    msg = str(e.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


@pytest.mark.parametrize("policy", ["randaugment", "autoaugment"])
def test_policy_is_per_image_and_replays(policy):
    x = images(16)
    mv = MultiView(ViewSpec(auto_augment=policy, **RAW), 2)
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    choice = params[0].policy_choice
    assert len({tuple(r) for r in choice.tolist()}) > 1  # images of one call draw different sub-policies
    assert same(views, mv.apply(x, params))
    sub = mv.apply(x[4:9], [p[4:9] for p in params])
    assert all(torch.equal(v[4:9], s) for v, s in zip(views, sub))
    if policy == "randaugment":
        assert (choice[:, 0] != choice[:, 1]).all()  # n distinct ops per image
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)


@pytest.mark.parametrize("n, m", [(1, 0), (3, 12), (5, 30)])
def test_randaugment_n_and_m(n, m):
    """N distinct ops per image; magnitude M of 30 on the RandAugment paper's linear scales: rotate
    0-30 degrees, brightness 0.1-1.9, posterize 8 -> 4 bits (kornia's ranges, computed by hand here)."""
    x = images(16)
    mv = MultiView(ViewSpec(auto_augment="randaugment", randaugment_n=n, randaugment_m=m, **RAW), 2)
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    choice = params[0].policy_choice
    assert choice.shape == (16, n) and all(len(set(r)) == n for r in choice.tolist())
    d = params[0].as_dict()
    assert torch.allclose(d["policy3.0.degrees"].abs(), torch.full((16,), float(m)))
    assert torch.allclose(d["policy9.0.brightness_factor"], torch.full((16,), m / 30 * 1.8 + 0.1))
    assert (d["policy4.0.bits_factor"] == int((1 - m / 30) * 4 + 4)).all()
    assert same(views, mv.apply(x, params))
    default = ViewSpec(auto_augment="randaugment", **RAW)
    assert (default.cfg("policy").randaugment_n, default.cfg("policy").randaugment_m) == (2, 10)


@pytest.mark.parametrize("key, value, allowed", [("randaugment_n", 0, "1-15"), ("randaugment_n", 16, "1-15"),
                                                  ("randaugment_n", 2.5, "1-15"), ("randaugment_m", 31, "0-30"),
                                                  ("randaugment_m", -1, "0-30"), ("randaugment_m", "high", "0-30")])
def test_randaugment_n_and_m_bad_values(key, value, allowed):
    with pytest.raises(SslAugError) as e:
        ViewSpec(auto_augment="randaugment", **{key: value})
    assert key in str(e.value) and allowed in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("name, kw", [("simclr_cifar", {}), ("swav_multicrop", {}), ("simclr_imagenet", {"size": 24}),
                                      ("byol_asymmetric", {})])
def test_masked_engine_matches_cpu_engine(name, kw, mode):
    x = images(10, 40)
    specs, counts = get_preset(name, **kw)
    cpu, dev = MultiView(specs, counts, mode=mode), MultiView(specs, counts, mode=mode, masked=True)
    params = cpu.sample(x, torch.Generator().manual_seed(0))
    for a, b in zip(cpu.apply(x, params), dev.apply(x, params)):
        assert a.shape == b.shape and (a - b).abs().max() <= 1e-4
    small = MultiView(specs, counts, mode=mode, masked=True, device_chunk_elements=3 * 24 * 24 * 3)
    for a, b in zip(dev.apply(x, params), small.apply(x, params)):
        assert (a - b).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_masked_engine_writes_the_amp_dtype(dtype):
    x = images(6)
    specs, counts = get_preset("swav_multicrop")
    ref = MultiView(specs, counts)
    mv = MultiView(specs, counts, masked=True, dtype=dtype, channels_last=True)
    params = ref.sample(x, torch.Generator().manual_seed(0))
    for a, b in zip(ref.apply(x, params), mv.apply(x, params)):
        assert b.dtype == dtype and b.is_contiguous(memory_format=torch.channels_last)
        assert (a - b.float()).abs().max() <= 0.05


def test_pack_to_device_round_trip():
    p = MultiView(ViewSpec(), 2).sample(images(5), torch.Generator().manual_seed(0))
    out = pack_to_device(p, torch.device("cpu"))
    assert all(a == b for a, b in zip(p, out))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_view_call_reads_nothing_back():
    x = images(64).cuda()
    mv = MultiView(*get_preset("swav_multicrop"), dtype=torch.bfloat16)
    params = mv.sample(x, torch.Generator().manual_seed(0))
    ref = MultiView(*get_preset("swav_multicrop")).apply(x.cpu(), params)
    mv.apply(x, params)  # fills the per-device constant cache
    torch.cuda.set_sync_debug_mode("error")
    try:
        views = mv.apply(x, params)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all((a - b.float().cpu()).abs().max() <= 0.05 for a, b in zip(ref, views))


def test_a_run_with_two_kornia_ops_trains_and_resumes_bit_identically(tmp_path):
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from trainer_fixtures import StopAfter, tiny_config, tiny_data

    from ssl_aug.train import Trainer

    two = [{"op": "RandomErasing", "p": 0.5}, {"op": "RandomPerspective", "distortion_scale": 0.3, "p": 0.5}]

    def config(where):
        cfg = tiny_config(where, epochs=1)
        cfg.augment["kornia"] = two
        return cfg

    data = tiny_data()
    full = Trainer(config(tmp_path / "a"), progress=False, train_data=data)
    full.fit()
    assert full.step == 3 and [e["op"] for e in full.views.view_specs[0].kornia] == ["RandomErasing", "RandomPerspective"]
    stopped = StopAfter(config(tmp_path / "b"), progress=False, train_data=data)
    stopped.limit = 2
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    resumed = Trainer(config(tmp_path / "b"), progress=False, train_data=data)
    resumed.fit(resume=True)
    a, b = full.method.state_dict(), resumed.method.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_kornia_spec_with_tuple_arguments_round_trips():
    spec = ViewSpec(kornia=[{"op": "RandomErasing", "scale": (0.02, 0.2), "p": 0.5}])
    assert ViewSpec.from_dict(spec.to_dict()) == spec
    assert spec.cfg("kornia").modules[0].p == 0.5


def test_crop_only_switches_every_other_op_off():
    from ssl_aug.augment import edit_specs
    s = ViewSpec(kornia=[{"op": "RandomErasing"}], auto_augment="randaugment", blur={"p": 0.5}, scale=(0.3, 1.0))
    c = edit_specs([s], "crop_only")[0]
    assert c.kornia == () and c.auto_augment is None and c.blur.p == 0 and not c.color_jitter.active
    assert c.grayscale_p == 0 and c.solarize.p == 0 and (c.scale, c.flip_p) == ((0.3, 1.0), 0.5)
