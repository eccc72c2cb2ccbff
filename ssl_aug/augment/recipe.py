"""A recipe's [augment] table -> the MultiView it describes, and the normalisation it implies."""

from __future__ import annotations

from ssl_aug.augment.multiview import MultiView
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.config import AUGMENT_EXTRA_KEYS, Config, MultiCropConfig, _build

__all__ = ["build_views", "normalization"]


def normalization(cfg: Config) -> tuple[list[float], list[float]]:
    """(mean, std) the views normalise with; evaluation and export use the same."""
    spec = ViewSpec.from_dict({k: v for k, v in cfg.augment.items() if k not in AUGMENT_EXTRA_KEYS})
    return list(spec.mean), list(spec.std)


def build_views(augment: dict, channels_last: bool = False) -> MultiView:
    """Recipe [augment] table -> MultiView: `views` global crops (+ multicrop.local_views local crops)."""
    spec_keys = {k: v for k, v in augment.items() if k not in AUGMENT_EXTRA_KEYS}
    specs, counts = [ViewSpec.from_dict(spec_keys)], [augment.get("views", 2)]
    multicrop = _build(MultiCropConfig, augment.get("multicrop") or {}, "augment.multicrop.")
    if multicrop.local_views > 0:
        local = dict(spec_keys, size=multicrop.size, scale=list(multicrop.scale))
        specs.append(ViewSpec.from_dict(local))
        counts.append(multicrop.local_views)
    return MultiView(specs, counts, mode=augment.get("mode", "exact"), channels_last=channels_last)
