"""Batched corruptions against the `imagecorruptions` reference (skipped without it), replay and bad input.

Tolerances (8-bit values, reference = imagecorruptions 1.1.2 on the same uint8 images):
- deterministic (defocus, zoom blur, brightness, contrast, pixelate, saturate): max |diff| <= 1 and mean
  |diff| <= 0.05 (float32 vs float64 arithmetic, then truncation to 8 bits); saturate mean <= 0.25 (values
  agree to 1e-15, but the reference truncates, so k - 1e-15 and k land on different integers);
- jpeg_compression: mean |diff| <= 0.5 (torchvision's and Pillow's libjpeg builds may differ);
- random, given the reference's own numpy draws (gaussian / shot noise, motion blur, snow, fog,
  elastic): max |diff| <= 1 and mean <= 0.05 (elastic: max <= 2, bilinear weights in float32);
- random with draws that cannot be shared (impulse noise, glass blur, frost): statistics over 16 images:
  the mean |corrupted - clean| within 15% (impulse, glass) or 25% (frost, a synthetic texture) of the
  reference's, and the PSNR within 2 dB (frost 3 dB).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ssl_aug.augment.corruptions import (COMMON, CORRUPTIONS, FAMILIES, blur, corrupt, digital, noise,
                                         weather)
from ssl_aug.errors import SslAugError


def _images(n=3, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, max(2, h // 4), max(2, w // 4), generator=g), size=(h, w),
                         mode="bilinear", align_corners=False)
    return (base * 255).round().to(torch.uint8)


SAMPLES = [_images(3, 32, 32), _images(1, 40, 56, seed=1)]


@pytest.fixture(scope="module")
def ic():
    from ssl_aug.augment.corruptions.reference import load_reference

    try:
        return load_reference()
    except SslAugError as exc:
        pytest.skip(f"reference package missing: {exc}")


def _ref(ic, x, name, severity, seed=None):
    out = []
    for im in x:
        if seed is not None:
            np.random.seed(seed)
        out.append(torch.from_numpy(ic.corrupt(im.permute(1, 2, 0).numpy(), severity, name)).permute(2, 0, 1))
    return torch.stack(out).float()


def _to_u8(y):
    return (y.clamp(0, 1) * 255).floor().float()


def _close(ours, ref, max_diff=1, mean_diff=0.05):
    d = (ours.float() - ref).abs()
    assert d.max() <= max_diff and d.mean() <= mean_diff, (float(d.max()), float(d.mean()))


@pytest.mark.parametrize("name", ["defocus_blur", "zoom_blur", "brightness", "contrast", "pixelate", "saturate",
                                  "jpeg_compression"])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_deterministic_match_reference(ic, name, severity):
    for x in SAMPLES:
        ours, ref = corrupt(x, name, severity), _ref(ic, x, name, severity)
        if name == "jpeg_compression":
            _close(ours, ref, max_diff=255, mean_diff=0.5)
        elif name == "saturate":
            _close(ours, ref, mean_diff=0.25)
        else:
            _close(ours, ref)


def _draws(x, name, severity, seed):
    """Replay the reference's numpy draws for image x (3, H, W) uint8 and run our function with them."""
    np.random.seed(seed)
    h, w = x.shape[-2:]
    xf = x[None].float() / 255
    g = torch.Generator()
    if name == "gaussian_noise":
        z = torch.from_numpy(np.random.normal(size=(h, w, 3))).permute(2, 0, 1)[None]
        return noise.gaussian_noise(xf, severity, g, noise=z)
    if name == "shot_noise":
        c = noise.SHOT_NOISE[severity - 1]
        counts = np.random.poisson(x.permute(1, 2, 0).numpy() / 255.0 * c)
        return noise.shot_noise(xf, severity, g, counts=torch.from_numpy(counts).permute(2, 0, 1)[None])
    if name == "motion_blur":
        return blur.motion_blur(xf, severity, g, angle=[np.random.uniform(-45, 45)])
    if name == "snow":
        loc, scale = weather.SNOW[severity - 1][:2]
        flakes = torch.from_numpy(np.random.normal(size=(h, w), loc=loc, scale=scale))[None, None]
        return weather.snow(xf.double(), severity, g, flakes=flakes, angle=[np.random.uniform(-135, -45)])
    if name == "fog":
        return weather.fog(xf.double(), severity, g,
                           uniform=lambda shape: torch.from_numpy(np.random.random_sample(shape[1:]))[None])
    if name == "elastic_transform":
        u = [torch.from_numpy(np.random.random_sample((h, w)))[None] for _ in range(2)]
        return digital.elastic_transform(xf, severity, g, fields=u)
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["gaussian_noise", "shot_noise", "motion_blur", "snow", "fog", "elastic_transform"])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_random_match_reference_given_its_draws(ic, name, severity):
    for x in SAMPLES:
        for i, im in enumerate(x):
            ours = _to_u8(_draws(im, name, severity, seed=10 + i))
            ref = _ref(ic, im[None], name, severity, seed=10 + i)
            _close(ours, ref, max_diff=2 if name == "elastic_transform" else 1)


def _psnr(a, b):
    mse = ((a.float() - b.float()) ** 2).mean().clamp_min(1e-6)
    return float(10 * torch.log10(255.0 ** 2 / mse))


@pytest.mark.parametrize("name,rel,db", [("impulse_noise", 0.15, 2.0), ("glass_blur", 0.15, 2.0),
                                         ("frost", 0.25, 3.0)])
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_statistics_match_reference(ic, name, severity, rel, db):
    x = _images(16, 32, 32, seed=3)
    ours, ref = corrupt(x, name, severity).float(), _ref(ic, x, name, severity, seed=None)
    d_ours, d_ref = (ours - x).abs().mean(), (ref - x).abs().mean()
    assert abs(d_ours - d_ref) <= rel * d_ref, (float(d_ours), float(d_ref))
    assert abs(_psnr(ours, x) - _psnr(ref, x)) <= db, (_psnr(ours, x), _psnr(ref, x))


def test_fifteen_in_four_families_and_replayable():
    assert len(COMMON) == 15 and sum(len(v) for v in FAMILIES.values()) == 15 and "saturate" in CORRUPTIONS
    x = _images(4, 24, 24)
    for name in CORRUPTIONS:
        a, b = corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=1)
        assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b), name
        assert not torch.equal(a, x), name
    for name in ("gaussian_noise", "glass_blur", "frost", "snow", "motion_blur"):
        assert not torch.equal(corrupt(x, name, 3, seed=1), corrupt(x, name, 3, seed=2)), name


def test_severity_grows():
    x = _images(8, 32, 32)
    for name in COMMON:
        d = [float((corrupt(x, name, s).float() - x).abs().mean()) for s in (1, 5)]
        assert d[1] > d[0] or name in ("glass_blur", "elastic_transform"), (name, d)


@pytest.mark.parametrize("name,severity,match", [("gausian_noise", 1, "did you mean 'gaussian_noise'"),
                                                 ("fog", 0, "from 1 to 5"), ("fog", 6, "from 1 to 5"),
                                                 ("fog", 2.0, "from 1 to 5")])
def test_bad_input_one_line(name, severity, match):
    with pytest.raises(SslAugError, match=match) as err:
        corrupt(_images(1), name, severity)
    assert "\n" not in str(err.value)
