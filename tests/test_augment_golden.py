"""Golden regression: the views (and sampled parameters) of every preset, exact and fast, are bit-identical
to what the engine made before ops became registered units (sha256 pinned at commit a6de5d4), and
sample() / apply() replay exactly."""

import hashlib

import pytest
import torch

from ssl_aug.augment import MultiView, get_preset

CORE_KEYS = ("box", "flip", "jitter_on", "factors", "order", "gray", "blur_on", "sigma", "solarize", "policy_seed")
CASES = {"simclr_cifar": {}, "swav_multicrop": {}, "simclr_imagenet": {"size": 24}, "byol_asymmetric": {}}
GOLDEN = {
    "simclr_cifar/exact": ("964604a99bc46fc277f13b221d0688c056576e7c84f66ddc795ae343e07d8566",
        "54ce2294e939576ce15dab0ea5b5af4375e23e8f1ab27541ffa9ddb08f9c8e5a"),
    "simclr_cifar/fast": ("7f982178b63328304a51e16f643238c906232f0d5d4ecedcc020e654d7dc2e63",
        "54ce2294e939576ce15dab0ea5b5af4375e23e8f1ab27541ffa9ddb08f9c8e5a"),
    "swav_multicrop/exact": ("9dd6e76b657f0d24e56be51a1e47280d6926655851f1ced96dfd830dd5904a87",
        "327dfb326e38ad4e384a652b03968edef48715d38130eba1ddf342358c3f7e57"),
    "swav_multicrop/fast": ("82c5a4df79c97d09d3d914a916686983ffbd29623434f47a5838250737c7f849",
        "327dfb326e38ad4e384a652b03968edef48715d38130eba1ddf342358c3f7e57"),
    "simclr_imagenet/exact": ("92a0b2678621c1328662546ff56a1f9bef9d38799ea11c922243ce2edaa5124e",
        "0845d0b5fcb9d3e44444e35869bb7534d983824ffad42306448e76faaf4d5b08"),
    "simclr_imagenet/fast": ("efa62e517ac968e2c1d22122435ce60d00e246b5eb63a18f0b3882084de13945",
        "0845d0b5fcb9d3e44444e35869bb7534d983824ffad42306448e76faaf4d5b08"),
    "byol_asymmetric/exact": ("c479f859c915e8263f95214c03d7ec5e6042a7d36da470544d559a566ca9e4db",
        "5e80be8ee08464b5858dca68fa55146c791d5dfe6fe96437ddc001569b67629c"),
    "byol_asymmetric/fast": ("53c43a27bae6f84cdcb6dab7a19dcd5a5e08fd061adad5562681bb1709506d08",
        "5e80be8ee08464b5858dca68fa55146c791d5dfe6fe96437ddc001569b67629c"),
}


# Fast mode's fused colour matrix runs through batched matrix products whose last-bit rounding differs
# between CPU models (the hashes above were pinned on an AMD Zen 4; an Intel Sapphire Rapids differs in
# the last bit), so its views are pinned by per-view mean / std (6 decimals) and its parameters by hash.
FAST_STATS = {
    "simclr_cifar": [(-0.207536, 0.720394), (0.392722, 0.918441)],
    "swav_multicrop": [(-0.521526, 0.827127), (0.619199, 1.021972), (0.177493, 1.092428), (-0.613449, 0.794789),
                       (-0.395081, 0.821057), (-0.292829, 0.916778), (0.572738, 1.240829), (-0.458019, 1.035598)],
    "simclr_imagenet": [(-0.463694, 0.842103), (0.79786, 0.907613)],
    "byol_asymmetric": [(-0.206777, 0.508691), (-0.028061, 0.89915)],
}


def images():
    g = torch.Generator().manual_seed(1234)
    return torch.randint(0, 256, (6, 3, 40, 36), generator=g, dtype=torch.uint8)


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool else t.numpy().tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("mode", ["exact", "fast"])
@pytest.mark.parametrize("name", list(CASES))
def test_views_bit_identical_to_pinned(name, mode):
    x = images()
    mv = MultiView(*get_preset(name, **CASES[name]), mode=mode)
    views, params = mv(x, torch.Generator().manual_seed(5), return_params=True)
    pt = [getattr(p, k) for p in params for k in CORE_KEYS]
    if mode == "fast" and digest(views) != GOLDEN[f"{name}/{mode}"][0]:  # another CPU model: compare statistics
        stats = [s for v in views for s in (float(v.double().mean()), float(v.double().std()))]
        assert stats == pytest.approx([s for pair in FAST_STATS[name] for s in pair], abs=2e-6)
        assert digest(pt) == GOLDEN[f"{name}/{mode}"][1]
    else:
        assert (digest(views), digest(pt)) == GOLDEN[f"{name}/{mode}"]
    replay = mv.apply(x, params)
    assert all(torch.equal(a, b) for a, b in zip(views, replay))
    again = mv.sample(x, torch.Generator().manual_seed(5))
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for a, b in zip(params, again) for k in CORE_KEYS)
