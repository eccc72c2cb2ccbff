"""A recipe's [augment] table -> the MultiView it describes, and the normalisation it implies."""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass

from ssl_aug.augment.multiview import MultiView
from ssl_aug.augment.presets import PRESETS, get_preset
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.config import AUGMENT_EXTRA_KEYS, Config, MultiCropConfig, _build
from ssl_aug.errors import SslAugError

__all__ = ["ParsedViews", "views_of", "build_views", "view_specs", "normalization"]


@dataclass(frozen=True)
class ParsedViews:
    """A recipe's [augment] table parsed once: the view families (ViewSpec), how many views of each, the
    engine mode. `build(channels_last, dtype)` -> the MultiView the trainer runs."""

    specs: tuple
    counts: tuple
    mode: str

    def build(self, channels_last: bool = False, dtype=None) -> MultiView:
        kw = {} if dtype is None else {"dtype": dtype}
        return MultiView(list(self.specs), list(self.counts), mode=self.mode, channels_last=channels_last, **kw)


def views_of(cfg: Config) -> ParsedViews:
    """The recipe's views, parsed (and validated) once per Config: later calls return the same object while
    cfg.augment is unchanged."""
    key = json.dumps(cfg.augment, sort_keys=True, default=str)
    cached = cfg.__dict__.get("_parsed_views")
    if cached is None or cached[0] != key:
        specs, counts = view_specs(cfg.augment)
        cached = (key, ParsedViews(tuple(specs), tuple(counts), cfg.augment.get("mode", "exact")))
        cfg.__dict__["_parsed_views"] = cached
    return cached[1]


def normalization(cfg: Config) -> tuple[list[float], list[float]]:
    """(mean, std) the views normalise with; evaluation and export use the same."""
    spec = views_of(cfg).specs[0]
    return list(spec.mean), list(spec.std)


def _preset_specs(name: str, spec_keys: dict, augment: dict) -> tuple[list[ViewSpec], list[int]]:
    """The views of a named preset, built at the recipe's `size`; every other ViewSpec key of the
    recipe overrides that field in each of the preset's view families."""
    if name not in PRESETS:
        raise SslAugError(f"recipe key 'augment.preset' = {name!r} is not allowed; choose one of: "
                          f"{', '.join(PRESETS)}")
    clash = [k for k in ("views", "multicrop") if k in augment]
    if clash:
        raise SslAugError(f"recipe key 'augment.{clash[0]}' cannot be combined with augment.preset = {name!r}: "
                          f"the preset sets the number of views")
    size_arg = next(iter(inspect.signature(PRESETS[name]).parameters))
    sized = {size_arg: spec_keys.pop("size")} if "size" in spec_keys else {}
    specs, counts = get_preset(name, **sized)
    ViewSpec.from_dict(spec_keys)  # unknown keys / bad values: the same one-line errors as without a preset
    return [s.replace(**{k: dict(v) if isinstance(v, dict) else v for k, v in spec_keys.items()})
            for s in specs], counts


def view_specs(augment: dict) -> tuple[list[ViewSpec], list[int]]:
    """Recipe [augment] table -> (view families, count of each): `preset` (a named preset at the recipe's
    size, other keys overriding each family), else `views` global crops (+ multicrop.local_views local crops)."""
    spec_keys = {k: v for k, v in augment.items() if k not in AUGMENT_EXTRA_KEYS}
    if augment.get("preset") is not None:
        return _preset_specs(augment["preset"], spec_keys, augment)
    specs, counts = [ViewSpec.from_dict(spec_keys)], [augment.get("views", 2)]
    multicrop = _build(MultiCropConfig, augment.get("multicrop") or {}, "augment.multicrop.")
    if multicrop.local_views > 0:
        local = dict(spec_keys, size=multicrop.size, scale=list(multicrop.scale))
        specs.append(ViewSpec.from_dict(local))
        counts.append(multicrop.local_views)
    return specs, counts


def view_dtype(device, amp: str):
    """The dtype views are written in: the AMP dtype on accelerators (train.amp bf16 / fp16), else float32
    (CPU views stay float32, bit-identical to before)."""
    import torch
    if torch.device(device).type == "cpu" or amp not in ("bf16", "fp16"):
        return torch.float32
    return torch.bfloat16 if amp == "bf16" else torch.float16


def build_views(augment: dict, channels_last: bool = False, dtype=None) -> MultiView:
    """Recipe [augment] table -> the MultiView of :func:`view_specs`."""
    specs, counts = view_specs(augment)
    kw = {} if dtype is None else {"dtype": dtype}
    return MultiView(specs, counts, mode=augment.get("mode", "exact"), channels_last=channels_last, **kw)
