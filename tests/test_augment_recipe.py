"""A recipe's [augment] table -> view families: plain, multi-crop and named presets (asymmetric views)."""

import pytest

from ssl_aug.augment import get_preset
from ssl_aug.augment.recipe import build_views, view_specs
from ssl_aug.errors import SslAugError


def test_preset_gives_the_presets_views_at_the_recipe_size():
    specs, counts = view_specs({"preset": "byol_asymmetric", "size": 16})
    ref_specs, ref_counts = get_preset("byol_asymmetric", size=16)
    assert counts == ref_counts == [1, 1]
    assert specs == ref_specs
    assert (specs[0].blur.p, specs[1].blur.p, specs[0].solarize.p, specs[1].solarize.p) == (1.0, 0.1, 0.0, 0.2)


def test_recipe_keys_override_every_family_of_a_preset():
    specs, _ = view_specs({"preset": "byol_asymmetric", "size": 24, "grayscale_p": 0.0,
                           "color_jitter": {"p": 0.5}, "mean": [0.5, 0.5, 0.5]})
    assert all(s.size == 24 and s.grayscale_p == 0.0 and s.color_jitter.p == 0.5 for s in specs)
    assert all(s.mean == (0.5, 0.5, 0.5) for s in specs)
    assert specs[0].color_jitter.brightness == get_preset("byol_asymmetric")[0][0].color_jitter.brightness
    assert specs[1].solarize.p == 0.2  # the asymmetry survives


def test_multicrop_preset_uses_its_size_argument():
    specs, counts = view_specs({"preset": "swav_multicrop", "size": 24})
    assert counts == [2, 6] and specs[0].size == 24 and specs[1].size == 16
    views = build_views({"preset": "swav_multicrop", "size": 24})
    assert len(views.view_specs) == 8


@pytest.mark.parametrize("augment, message", [
    ({"preset": "nope"}, "augment.preset' = 'nope' is not allowed; choose one of: simclr_cifar"),
    ({"preset": "byol_asymmetric", "views": 3}, "augment.views' cannot be combined"),
    ({"preset": "byol_asymmetric", "blurr": {"p": 1}}, "unknown key 'blurr'"),
    ({"preset": "byol_asymmetric", "grayscale_p": 2.0}, "grayscale_p=2.0 is not allowed"),
])
def test_bad_preset_recipes_are_one_line(augment, message):
    with pytest.raises(SslAugError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        view_specs(augment)
    assert "\n" not in str(err.value)


def test_without_preset_unchanged():
    specs, counts = view_specs({"size": 16, "views": 3})
    assert counts == [3] and specs[0].size == 16


def test_size_checks_accept_a_preset_with_equal_size_families():
    from ssl_aug.config import config_from_dict
    from ssl_aug.workflows.sizes import check_sizes

    cfg = config_from_dict({"augment": {"preset": "byol_asymmetric", "size": 20}})
    assert check_sizes(cfg, None) == []
    bad = config_from_dict({"augment": {"size": 20, "multicrop": {"local_views": 2, "size": 20}}})
    with pytest.raises(SslAugError, match="augment.multicrop.size' = 20 must be smaller"):
        check_sizes(bad, None)
