"""Views: spec validation, parameter distributions, determinism/replay, exactness vs torchvision v2."""

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from ssl_aug.augment import (PRESETS, Blur, ColorJitter, MultiView, Solarize, ViewParams, ViewSpec, edit_specs,
                             get_preset, sample_crop_boxes, sample_view_params)
from ssl_aug.augment import ops
from ssl_aug.errors import SslAugError

RAW = dict(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # identity normalisation


def reference_view(x, spec, p):
    """torchvision v2 functional ops, one image at a time, with the sampled parameters."""
    outs = []
    for n in range(x.shape[0]):
        t, l, h, w = p.box[n].tolist()
        img = TF.resized_crop(x[n], t, l, h, w, [spec.size, spec.size], antialias=False)
        if p.flip[n]:
            img = TF.horizontal_flip(img)
        if p.jitter_on[n]:
            for op in p.order[n].tolist():
                f = float(p.factors[n, op])
                if op == 0:
                    img = TF.adjust_brightness(img, f)
                elif op == 1:
                    img = TF.adjust_contrast(img, f)
                elif op == 2:
                    img = TF.adjust_saturation(img, f)
                elif f != 0:
                    img = TF.adjust_hue(img, f)
        if p.gray[n]:
            img = TF.rgb_to_grayscale(img, num_output_channels=3)
        if p.blur_on[n]:
            s = float(p.sigma[n])
            img = TF.gaussian_blur(img, [spec.blur.kernel_size] * 2, [s, s])
        if p.solarize[n]:
            img = TF.solarize(img, spec.solarize.threshold)
        outs.append(img)
    return torch.stack(outs)


def images(n=24, h=40, w=36, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, h, w, generator=g)
    x[: n // 4] = x[: n // 4].round()  # saturated corners of the RGB cube
    x[n // 4: n // 2, 1] = x[n // 4: n // 2, 0]  # ties between channels (hue branch priority)
    x[n // 2: n // 2 + 2] = x[n // 2: n // 2 + 2, :1]  # gray images (hue undefined)
    return x


# ---- spec ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, word", [
    (dict(flip_p=-0.1), "flip_p"), (dict(grayscale_p=1.5), "grayscale_p"), (dict(scale=(0.0, 1.0)), "scale"),
    (dict(scale=(0.5, 1.2)), "scale"), (dict(scale=(0.8, 0.2)), "scale"), (dict(size=0), "size"),
    (dict(blur={"kernel_size": 4}), "kernel_size"), (dict(blur={"kernel_size": 0}), "kernel_size"),
    (dict(color_jitter={"p": 2}), "color_jitter.p"), (dict(color_jitter={"hue": 0.7}), "hue"),
    (dict(color_jitter={"brightness": -1}), "brightness"), (dict(solarize={"threshold": 2}), "threshold"),
    (dict(auto_augment="trivial"), "auto_augment"), (dict(std=(1, 0, 1)), "std"), (dict(mean=(1, 2)), "mean"),
    (dict(ratio=(0, 1)), "ratio"),
])
def test_bad_spec_raises_one_line(kw, word):
    with pytest.raises(SslAugError) as e:
        ViewSpec(**kw)
    msg = str(e.value)
    assert "\n" not in msg and "allowed" in msg
    if word:
        assert word in msg


def test_spec_dict_roundtrip_and_unknown_keys():
    for name in PRESETS:
        for s in get_preset(name)[0]:
            assert ViewSpec.from_dict(s.to_dict()) == s
    spec = ViewSpec.from_dict({"size": 16, "color_jitter": {"brightness": 0.2, "hue": 0.05, "p": 0.5},
                               "blur": {"p": 0.5, "kernel_size": 3, "sigma": [0.1, 1.0]}})
    assert spec.color_jitter.brightness == (0.8, 1.2) and spec.color_jitter.hue == (-0.05, 0.05)
    assert spec.blur.sigma == (0.1, 1.0) and spec.size == 16
    with pytest.raises(SslAugError, match="allowed keys: size, scale"):
        ViewSpec.from_dict({"size": 32, "colour_jitter": {}})
    with pytest.raises(SslAugError, match="allowed keys: brightness"):
        ViewSpec.from_dict({"color_jitter": {"strength": 1}})


def test_presets_and_edits():
    s = ViewSpec()
    assert s.color_jitter == ColorJitter((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1), 0.8)
    assert (s.size, s.scale, s.grayscale_p, s.blur.p) == (32, (0.08, 1.0), 0.2, 0.0)
    specs, counts = get_preset("swav_multicrop")
    assert [x.size for x in specs] == [32, 16] and counts == [2, 6] and specs[1].scale == (0.05, 0.14)
    a, b = get_preset("byol_asymmetric")[0]
    assert a.blur.p == 1.0 and b.blur.p == 0.1 and b.solarize.p == 0.2 and a.solarize.p == 0.0
    assert get_preset("simclr_imagenet")[0][0].blur.kernel_size % 2 == 1
    assert edit_specs([s], "no_color_jitter")[0].color_jitter.p == 0.0
    assert edit_specs([s], "no_grayscale")[0].grayscale_p == 0.0
    j = edit_specs([s], "jitter_strength(0.5)")[0].color_jitter
    assert j.brightness == pytest.approx((0.6, 1.4)) and j.hue == pytest.approx((-0.1, 0.1)) and j.p == 0.8
    c = edit_specs([s], "crop_only")[0]
    assert not c.color_jitter.active and c.grayscale_p == 0 and c.scale == s.scale
    for bad in ("no_colour", "jitter_strength", "crop_only(2)"):
        with pytest.raises(SslAugError, match="allowed"):
            edit_specs([s], bad)
    with pytest.raises(SslAugError, match="preset"):
        get_preset("mocov3")


# ---- parameters ---------------------------------------------------------------------------------

def within_4_sigma(count, n, p):
    return abs(count - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9


def test_crop_boxes_in_range_and_uniform():
    n, side = 10_000, 1000
    g = torch.Generator().manual_seed(0)
    scale, ratio = (0.08, 0.5), (3 / 4, 4 / 3)  # every first draw fits: area and log-ratio exactly uniform
    box = sample_crop_boxes(n, side, side, scale, ratio, g)
    top, left, h, w = box.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= side).all() and (left + w <= side).all()
    area = (h * w).double() / side ** 2
    logr = torch.log(w.double() / h.double())
    assert area.min() >= scale[0] - 0.01 and area.max() <= scale[1] + 0.01
    assert logr.min() >= math.log(ratio[0]) - 0.01 and logr.max() <= math.log(ratio[1]) + 0.01
    for v, lo, hi in ((area, *scale), (logr, math.log(ratio[0]), math.log(ratio[1]))):
        counts = torch.histc(v.float(), bins=5, min=lo, max=hi)
        assert all(within_4_sigma(float(c), n, 0.2) for c in counts), counts
    # default SimCLR ranges on a 32x32 image stay inside the image and the area range (up to rounding)
    box = sample_crop_boxes(n, 32, 32, (0.08, 1.0), ratio, g)
    assert (box[:, 0] + box[:, 2] <= 32).all() and (box[:, 1] + box[:, 3] <= 32).all() and (box[:, 2:] >= 1).all()
    # top-left offsets uniform over the free range: mean offset / free range ~ 1/2
    free = (32 - box[:, 2]).double()
    sel = free >= 8
    assert abs((box[sel, 0] / free[sel]).mean().item() - 0.5) < 0.03


def test_crop_fallback_is_central_crop():
    # ratio range that cannot fit a 10x100 image with 10 tries -> central crop with clamped ratio
    box = sample_crop_boxes(50, 10, 100, (0.99, 1.0), (1.0, 1.0), torch.Generator().manual_seed(0))
    assert (box == torch.tensor([0, 45, 10, 10])).all()


def test_gate_probabilities_and_factor_ranges():
    n = 10_000
    spec = ViewSpec(flip_p=0.5, color_jitter=ColorJitter(0.4, 0.3, (0.2, 1.7), 0.1, p=0.8), grayscale_p=0.2,
                    blur=Blur(p=0.3, kernel_size=3, sigma=(0.1, 2.0)), solarize=Solarize(p=0.1))
    p = sample_view_params(spec, n, 32, 32, torch.Generator().manual_seed(0))
    for mask, prob in ((p.flip, 0.5), (p.jitter_on, 0.8), (p.gray, 0.2), (p.blur_on, 0.3), (p.solarize, 0.1)):
        assert within_4_sigma(int(mask.sum()), n, prob), (int(mask.sum()), prob)
    for col, (lo, hi) in enumerate([(0.6, 1.4), (0.7, 1.3), (0.2, 1.7), (-0.1, 0.1)]):
        f = p.factors[:, col]
        assert f.min() >= lo and f.max() <= hi and abs(f.mean().item() - (lo + hi) / 2) < 0.02 * (hi - lo) + 1e-3
    assert p.sigma.min() >= 0.1 and p.sigma.max() <= 2.0
    assert (p.order.sort(1).values == torch.arange(4)).all()  # a permutation per image
    for pos in range(4):  # each op equally likely at each position
        assert all(within_4_sigma(int((p.order[:, pos] == op).sum()), n, 0.25) for op in range(4))


def test_per_sample_independence():
    n = 10_000
    p = sample_view_params(ViewSpec(), n, 32, 32, torch.Generator().manual_seed(3))
    assert len({tuple(r) for r in p.order.tolist()}) == 24  # orders differ per image
    assert len({tuple(b) for b in p.box.tolist()}) > n // 4  # crops differ per image
    both = int((p.flip & p.gray).sum())  # independent gates: P(flip and gray) = 0.5 * 0.2
    assert within_4_sigma(both, n, 0.1)
    lagged = torch.corrcoef(torch.stack([p.factors[1:, 0], p.factors[:-1, 0]]))[0, 1]
    assert abs(lagged) < 4 / math.sqrt(n)  # neighbouring images draw independent factors


def test_determinism_and_replay():
    x = (images(16) * 255).to(torch.uint8)
    mv = MultiView(*get_preset("swav_multicrop"))
    v1, p1 = mv(x, torch.Generator().manual_seed(7), return_params=True)
    v2, p2 = mv(x, torch.Generator().manual_seed(7), return_params=True)
    v3 = mv(x, torch.Generator().manual_seed(8))
    assert all(torch.equal(a, b) for a, b in zip(v1, v2))
    assert all(torch.equal(a, b) for a, b in zip(p1[0].as_dict().values(), p2[0].as_dict().values()))
    assert not torch.equal(v1[0], v3[0])
    replay = mv.apply(x, p1)
    assert all(torch.equal(a, b) for a, b in zip(v1, replay))
    assert not torch.equal(v1[0], v1[1])  # the two global views differ
    with pytest.raises(SslAugError, match="parameter sets"):
        mv.apply(x, p1[:3])


# ---- exactness vs torchvision v2 functional ops ------------------------------------------------

def check_exact(spec, count=1, n=24, h=40, w=36, seed=0, tol=1e-4):
    x = images(n, h, w, seed)
    mv = MultiView([spec], [count])
    params = mv.sample(x, torch.Generator().manual_seed(seed))
    views = mv.apply(x, params, normalize=False)
    for v, p in zip(views, params):
        ref = reference_view(x, spec, p)
        assert (v - ref).abs().max().item() <= tol
    return views


CROP_ONLY = ViewSpec(size=24, color_jitter={"p": 0.0}, grayscale_p=0.0, **RAW)


@pytest.mark.parametrize("size, h, w", [(24, 40, 36), (48, 20, 30), (32, 32, 32)])
def test_crop_flip_matches_resized_crop(size, h, w):
    check_exact(CROP_ONLY.replace(size=size), count=2, h=h, w=w)


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_single_colour_op_matches(op):
    kw = {"brightness": 1.0 if op == "brightness" else 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0,
          "p": 0.9}
    kw[op] = 0.5 if op == "hue" else 0.9
    check_exact(CROP_ONLY.replace(color_jitter=kw))


def test_hue_kernel_matches_torchvision_on_edge_cases():
    vals = torch.tensor([0.0, 1.0, 0.5, 0.25, 1 / 3, 2 / 3])
    x = torch.cartesian_prod(vals, vals, vals).T.reshape(1, 3, 12, 18).repeat(11, 1, 1, 1)
    shifts = torch.linspace(-0.5, 0.5, 11)
    out = ops.adjust_hue(x, shifts)
    ref = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(11)])
    assert (out - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("extra", [
    dict(grayscale_p=0.5),
    dict(blur=Blur(p=0.5, kernel_size=5, sigma=(0.1, 2.0))),
    dict(blur=Blur(p=0.7, kernel_size=9, sigma=(0.5, 3.0))),  # the depthwise-conv path
    dict(solarize=Solarize(p=0.5, threshold=0.4)),
])
def test_grayscale_blur_solarize_match(extra):
    check_exact(CROP_ONLY.replace(**extra))


def test_composed_pipeline_matches_torchvision():
    spec = ViewSpec(size=24, color_jitter=ColorJitter(0.8, 0.8, 0.8, 0.5, p=0.9), grayscale_p=0.3,
                    blur=Blur(p=0.5, kernel_size=5), solarize=Solarize(p=0.5), **RAW)
    check_exact(spec, count=2, n=32)


def test_multi_spec_group_matches_per_view_reference():
    """Views of one size from different specs are batched together; each must still follow its spec."""
    a = ViewSpec(size=16, blur=Blur(p=1.0, kernel_size=3), **RAW)
    b = a.replace(blur=Blur(p=0.5, kernel_size=5), solarize=Solarize(p=1.0, threshold=0.3))
    x = images(12)
    mv = MultiView([a, b, a.replace(size=8)], [1, 2, 1])
    params = mv.sample(x, torch.Generator().manual_seed(0))
    views = mv.apply(x, params, normalize=False)
    for v, s, p in zip(views, mv.view_specs, params):
        assert v.shape == (12, 3, s.size, s.size)
        assert (v - reference_view(x, s, p)).abs().max() <= 1e-4


@pytest.mark.skipif(not os.environ.get("SSL_AUG_DATA"), reason="SSL_AUG_DATA not set (folder with cifar10/)")
def test_exact_on_cifar10_uint8():
    f = Path(os.environ["SSL_AUG_DATA"]) / "cifar10" / "cifar10_test.npz"
    x8 = torch.from_numpy(np.load(f)["x"][:48]).permute(0, 3, 1, 2).contiguous()
    spec = ViewSpec(**RAW)  # SimCLR CIFAR view
    mv = MultiView(spec, 2)
    params = mv.sample(x8, torch.Generator().manual_seed(0))
    views = mv.apply(x8, params, normalize=False)
    for v, p in zip(views, params):
        assert (v - reference_view(x8.float() / 255, spec, p)).abs().max() <= 1e-4


# ---- outputs ------------------------------------------------------------------------------------

def test_range_before_normalisation_and_normalisation():
    x = (images(32) * 255).to(torch.uint8)
    spec = edit_specs([ViewSpec(solarize=Solarize(p=0.3))], "jitter_strength(2.0)")[0]
    for mode in ("exact", "fast"):
        mv = MultiView(spec, 2, mode=mode)
        params = mv.sample(x, torch.Generator().manual_seed(0))
        raw = mv.apply(x, params, normalize=False)
        assert all(r.min() >= 0 and r.max() <= 1 for r in raw)
        normed = mv.apply(x, params)
        mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
        assert torch.allclose(normed[0], (raw[0] - mean) / std, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_multicrop_shapes_dtypes_layout(dtype, channels_last):
    x = (images(10, 32, 32) * 255).to(torch.uint8)
    specs, counts = get_preset("swav_multicrop")
    specs = edit_specs(specs, "jitter_strength(2.5)")  # hue up to 0.5 turns
    for mode in ("exact", "fast"):
        views = MultiView(specs, counts, mode=mode, channels_last=channels_last, dtype=dtype)(x)
        assert [tuple(v.shape) for v in views] == [(10, 3, 32, 32)] * 2 + [(10, 3, 16, 16)] * 6
        for v in views:
            assert v.dtype == dtype and v.device == x.device and torch.isfinite(v).all()
            assert v.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_views_on_cuda_match_cpu():
    x = (images(8) * 255).to(torch.uint8)
    mv = MultiView(*get_preset("swav_multicrop"))
    params = mv.sample(x, torch.Generator().manual_seed(0))
    for a, b in zip(mv.apply(x, params), mv.apply(x.cuda(), params)):
        assert b.device.type == "cuda" and (a - b.cpu()).abs().max() < 1e-4


def test_fast_mode_equals_exact_without_clamps_or_hue():
    # mid-range images, mild factors: no clamp is active, so the fused affine map is exact
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 24, 24, generator=g) * 0.2 + 0.4
    spec = CROP_ONLY.replace(color_jitter={"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.0,
                                           "p": 0.8}, grayscale_p=0.3)
    ex, fa = MultiView(spec, 2, mode="exact"), MultiView(spec, 2, mode="fast")
    p = ex.sample(x, g)
    for a, b in zip(ex.apply(x, p, normalize=False), fa.apply(x, p, normalize=False)):
        assert (a - b).abs().max() < 1e-5


def test_fast_mode_hue():
    x = images(16, 12, 12)
    # a third of a turn permutes the channels (r, g, b) -> (b, r, g) in HSV and in the fast rotation
    third = torch.full((16,), 1 / 3)
    a, t = ops.color_matrix(x, torch.stack([torch.ones(16)] * 3 + [third], 1), torch.arange(4).repeat(16, 1),
                            torch.ones(16, dtype=torch.bool), torch.zeros(16, dtype=torch.bool))
    fast = ops.apply_color_matrix(x, a, t)
    exact = torch.stack([TF.adjust_hue(x[i], 1 / 3) for i in range(16)])
    assert (fast - exact).abs().max() < 1e-5 and (fast - x[:, [2, 0, 1]]).abs().max() < 1e-5
    # small shifts on low-saturation images: the rotation moves pixels the way HSV does
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=g) * 0.4 + 0.3
    spec = CROP_ONLY.replace(color_jitter={"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.1,
                                           "p": 1.0})
    ex, fa = MultiView(spec, 1, mode="exact"), MultiView(spec, 1, mode="fast")
    p = ex.sample(x, g)
    e, f = ex.apply(x, p, normalize=False)[0], fa.apply(x, p, normalize=False)[0]
    unshifted = ex.apply(x, [p[0].replace(jitter_on=torch.zeros(64, dtype=torch.bool))],
                         normalize=False)[0]
    assert (e - f).abs().mean() < 0.8 * (e - unshifted).abs().mean()


def test_auto_augment_policy_replays():
    x = (images(8, 32, 32) * 255).to(torch.uint8)
    mv = MultiView(ViewSpec(auto_augment="randaugment", **RAW), 2)
    views, params = mv(x, torch.Generator().manual_seed(0), return_params=True)
    assert all(torch.equal(a, b) for a, b in zip(views, mv.apply(x, params)))
    assert all(v.min() >= 0 and v.max() <= 1 for v in views)


def test_bad_inputs():
    with pytest.raises(SslAugError, match="shape"):
        MultiView(ViewSpec(), 2)(torch.zeros(4, 32, 32, 3, dtype=torch.uint8).permute(0, 3, 1, 2)[:, :1])
    with pytest.raises(SslAugError, match="dtype"):
        MultiView(ViewSpec(), 2)(torch.zeros(2, 3, 8, 8, dtype=torch.int32))
    with pytest.raises(SslAugError, match="mode"):
        MultiView(ViewSpec(), 2, mode="approx")
    with pytest.raises(SslAugError, match="counts"):
        MultiView([ViewSpec()], [0])
    with pytest.raises(SslAugError, match="dtype"):
        MultiView([ViewSpec()], [2], dtype=torch.int8)


def test_params_cat_and_to():
    p = sample_view_params(ViewSpec(), 5, 32, 32, torch.Generator().manual_seed(0))
    q = ViewParams.cat([p, p])
    assert len(q) == 10 and torch.equal(q.box[5:], p.box)
    assert torch.equal(p.to("cpu").factors, p.factors)


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_chunking_does_not_change_views(mode):
    x = (images(20, 32, 32) * 255).to(torch.uint8)
    specs, counts = get_preset("swav_multicrop")
    whole = MultiView(specs, counts, mode=mode)
    chunked = MultiView(specs, counts, mode=mode, chunk_elements=3 * 16 * 16 * 3)  # 1-3 images per chunk
    params = whole.sample(x, torch.Generator().manual_seed(0))
    for a, b in zip(whole.apply(x, params), chunked.apply(x, params)):
        assert (a - b).abs().max() <= 1e-5
