"""Augmentation views: `ViewSpec` recipes, `PRESETS` and named edits, `MultiView` (batched views with
sampled, replayable parameters; exact or fast colour), the op registry (`OPS`, `register_op`,
`list_ops`: one file per op in ops/, Kornia ops included) and batch mixing (MixUp, CutMix, CutOut)."""

from ssl_aug.augment.mix import cutmix, cutout, mixup
from ssl_aug.augment.multiview import MultiView
from ssl_aug.augment.ops import OPS, Op, list_ops, register_op
from ssl_aug.augment.params import ViewParams, sample_crop_boxes, sample_view_params
from ssl_aug.augment.presets import EDITS, PRESETS, edit_specs, get_preset
from ssl_aug.augment.spec import Blur, ColorJitter, Solarize, ViewSpec

__all__ = ["ViewSpec", "ColorJitter", "Blur", "Solarize", "ViewParams", "MultiView", "PRESETS", "EDITS",
           "get_preset", "edit_specs", "sample_view_params", "sample_crop_boxes", "mixup", "cutmix", "cutout",
           "OPS", "Op", "register_op", "list_ops"]
