"""One registry pattern: register / get / names, one-line errors with the closest name, key checks."""

import pytest

from ssl_aug.augment.ops import OPS
from ssl_aug.augment.presets import PRESETS
from ssl_aug.data import SOURCES
from ssl_aug.errors import SslAugError
from ssl_aug.methods import METHODS
from ssl_aug.models import BACKBONES
from ssl_aug.registry import Registry, check_keys, did_you_mean


def test_register_get_names_in_order():
    reg = Registry("widget")

    @reg.register("b")
    def b():
        return 2

    reg.register("a", 1)
    assert reg.names() == ["b", "a"] and reg.get("b") is b and reg.get("a") == 1
    assert "a" in reg and len(reg) == 2 and list(reg) == ["b", "a"]
    with pytest.raises(SslAugError, match="widget 'a' is already registered"):
        reg.register("a", 3)
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3 and reg.unregister("a") == 3 and "a" not in reg


def test_unknown_name_is_one_line_with_suggestion_and_choices():
    reg = Registry("method")
    for name in ("simclr", "swav", "byol"):
        reg.register(name, object())
    with pytest.raises(SslAugError) as e:
        reg.get("simclrr")
    msg = str(e.value)
    assert msg == "unknown method 'simclrr'; did you mean 'simclr'? choose one of: byol, simclr, swav"
    with pytest.raises(SslAugError, match=r"^unknown method 'xyz'; choose one of: byol, simclr, swav$"):
        reg.get("xyz")


def test_check_keys_suggests_the_closest_key():
    with pytest.raises(SslAugError) as e:
        check_keys(["size", "colour_jitter"], ["size", "color_jitter", "blur"], "recipe key 'augment.")
    assert str(e.value) == ("recipe key 'augment.colour_jitter': unknown key; did you mean 'color_jitter'? "
                            "allowed: size, color_jitter, blur")
    check_keys(["blur"], ["blur"], "x")  # known keys pass
    assert did_you_mean("zzz", ["a"]) == ""


@pytest.mark.parametrize("registry,name", [(METHODS, "simclr"), (OPS, "color_jitter"), (PRESETS, "simclr_cifar"),
                                           (BACKBONES, "small_cnn"), (SOURCES, "cifar10")])
def test_every_registry_uses_the_pattern(registry, name):
    assert isinstance(registry, Registry) and name in registry.names()
    with pytest.raises(SslAugError, match="did you mean"):
        registry.get(name + "x")
