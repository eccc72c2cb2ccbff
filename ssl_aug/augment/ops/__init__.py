"""Augmentation ops as registered units (one file each: spec fields, per-image sampling, batched apply),
run by the fused engine `MultiView`. `OPS` (name -> Op, sampling order), `register_op`, `list_ops`.
Adding an op = one file + one `register_op(...)` line (here, or in user code before building views)."""

from ssl_aug.augment.ops.base import OPS, Context, Op, constant, get_op, list_ops, register_op
from ssl_aug.augment.ops.blur import Blur, BlurOp, blur_, gaussian_blur, gaussian_kernels
from ssl_aug.augment.ops.color_jitter import (ColorJitter, ColorJitterOp, color_jitter_, color_jitter_masked,
                                              jitter_affine)
from ssl_aug.augment.ops.crop import Crop, CropFlip, crop_grid, resized_crops, sample_crop_boxes
from ssl_aug.augment.ops.functional import (LUMA, adjust_hue, apply_color_matrix, hue_matrices, identity_affine,
                                            luma)
from ssl_aug.augment.ops.grayscale import Grayscale, GrayscaleOp, gray_affine, grayscale_
from ssl_aug.augment.ops.kornia_ops import KorniaOp, KorniaOps, build_kornia_op
from ssl_aug.augment.ops.nuisance import Nuisance, NuisanceOp, recolor_nuisance
from ssl_aug.augment.ops.policy import AUTO_AUGMENT, Policy, PolicyOp
from ssl_aug.augment.ops.solarize import Solarize, SolarizeOp, solarize_
from ssl_aug.augment.ops.tf_sequence import TfSequence, TfSequenceOp, tf_names

# registration order = sampling order (kept: the parameters of the built-in ops never change)
register_op(Crop())
register_op(ColorJitterOp())
register_op(GrayscaleOp())
register_op(BlurOp())
register_op(SolarizeOp())
register_op(PolicyOp())
register_op(KorniaOp())
register_op(NuisanceOp())
register_op(TfSequenceOp())  # appended: the older ops' sampled parameters never change


def color_matrix(x, factors, order, on, gray):
    """Fast mode's fused jitter + grayscale for images x (M,3,h,w): A (M,3,3), t (M,3) float32 with
    view = clamp(A x + t, 0, 1) (see jitter_affine, gray_affine)."""
    a, t, mu = identity_affine(x)
    a, t = jitter_affine(a, t, mu, factors, order, on)
    a, t = gray_affine(a, t, gray)
    return a.float(), t.float()


__all__ = ["OPS", "Op", "Context", "register_op", "list_ops", "get_op", "constant", "CropFlip", "ColorJitter",
           "Grayscale", "Blur", "Solarize", "Policy", "KorniaOps", "AUTO_AUGMENT", "LUMA", "luma", "adjust_hue",
           "color_matrix", "apply_color_matrix", "hue_matrices", "crop_grid", "resized_crops", "sample_crop_boxes",
           "color_jitter_", "color_jitter_masked", "grayscale_", "gaussian_blur", "gaussian_kernels", "blur_",
           "solarize_", "build_kornia_op", "Nuisance", "NuisanceOp", "recolor_nuisance", "TfSequence",
           "TfSequenceOp", "tf_names"]
