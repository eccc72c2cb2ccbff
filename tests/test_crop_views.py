"""Views finished from crops cut by the decoder (augment.crop_views): the crop op keeps only the flip
(no resample of a whole-image box), and the views equal what the engine makes from those crops with
the resample; other boxes still resample."""

import torch

from ssl_aug.augment import ViewParams
from ssl_aug.augment.crop_views import crop_plan_of, views_from_crops
from ssl_aug.augment.ops import Context, resized_crops
from ssl_aug.augment.ops.crop import Crop, CropFlip
from ssl_aug.augment.recipe import build_views

PLAIN = dict(views=2, size=24, scale=[0.2, 1.0], flip_p=0.5, grayscale_p=0.0, color_jitter={"p": 0.0},
             blur={"p": 0.0})
AUGMENT = dict(views=2, size=24, scale=[0.2, 1.0], flip_p=0.5, grayscale_p=0.2,
               color_jitter={"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
               blur={"p": 0.5, "kernel_size": 5, "sigma": [0.1, 2.0]})


def test_whole_image_boxes_skip_the_resample_and_keep_the_flip():
    x = torch.rand(6, 3, 16, 16)
    box = torch.tensor([[0, 0, 16, 16]]).expand(6, 4).contiguous()
    flip = torch.tensor([True, False, True, False, False, True])
    p = ViewParams({"box": box, "flip": flip})
    got = Crop().apply(x, CropFlip(size=16), p, Context("exact", False, p))
    assert torch.equal(got[flip], x[flip].flip(-1)) and torch.equal(got[~flip], x[~flip])
    resampled = resized_crops(x, box, flip, 16)  # the identity resample the fast path replaces
    assert (got - resampled).abs().max() < 1e-5
    assert got.data_ptr() != x.data_ptr()  # a new tensor: later in-place ops cannot reach the input
    part = box.clone()
    part[0] = torch.tensor([2, 3, 10, 12])  # one real crop: every row is resampled
    got = Crop().apply(x, CropFlip(size=16), p.replace(box=part), Context("exact", False, p.replace(box=part)))
    assert torch.equal(got, resized_crops(x, part, flip, 16))


def test_views_from_crops_are_the_crops_flipped_and_normalised_when_no_colour_op_is_on():
    views = build_views(PLAIN)
    assert crop_plan_of(views) == [(24, (0.2, 1.0), (3 / 4, 4 / 3))] * 2
    crops = [torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8) for _ in range(2)]
    out, params = views_from_crops(views, crops, torch.Generator().manual_seed(3), return_params=True)
    spec = views.view_specs[0]
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    for c, o, p in zip(crops, out, params):
        flip = p.flip
        ref = torch.where(flip.view(-1, 1, 1, 1), c.flip(-1), c).float() / 255
        assert (o - (ref - mean) / std).abs().max() < 1e-5
        assert bool((p.box == torch.tensor([0, 0, 24, 24])).all())


def test_views_from_crops_run_every_colour_op():
    views = build_views(AUGMENT)
    crops = [torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8) for _ in range(2)]
    a = views_from_crops(views, crops, torch.Generator().manual_seed(1))
    b = views_from_crops(views, crops, torch.Generator().manual_seed(1))
    plain = views_from_crops(build_views(PLAIN), crops, torch.Generator().manual_seed(1))
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # replayable from the generator
    assert all((x - y).abs().mean() > 0.05 for x, y in zip(a, plain))  # jitter, grayscale, blur changed them
