"""Random-resized crops taken from the whole encoded image, decoded only as far as the crops need.

`CropPlan`: per view (output size, area scale, aspect ratio), e.g. SimCLR 2 x (224, (0.08, 1),
(3/4, 4/3)) or SwAV 2 x 224 + 6 x 96. For every image, `sample_boxes` draws each view's box against
the image's ORIGINAL width and height with torchvision's `RandomResizedCrop.get_params` rule (up
to 10 tries of a uniform area fraction and a log-uniform aspect ratio, then the central crop with
the ratio clamped), from a generator seeded by (seed, epoch, image index): the boxes of an image
are the same whatever worker decodes it, and replay exactly.

CPU (`decode_crops`): PIL with a reduced-DCT decode (`Image.draft`): the JPEG is decoded at scale
1/r (r in 1, 2, 4, 8), the largest r for which every view's box still covers at least its output
size in both directions, so all views of an image come from ONE decode (at r = 1 a complete JPEG is
decoded by torchvision's `decode_jpeg`: the same libjpeg-turbo pixels without PIL's copies, about 1.3x
faster end to end). Each box (rounded to the reduced grid) is then cut and resized to its view size with
torch's antialiased bilinear uint8 resize (torchvision `resized_crop(..., antialias=True)`; 2.5x faster
than PIL's resize here).
At r = 1 the crop equals torchvision's on the fully decoded image; at r > 1 the difference is the
reduced-DCT decode's (measured: mean absolute difference under 2 grey levels).

Device (`decode_crops_device`): a batched `torchvision.io.decode_jpeg(list, device=...)` (nvjpeg on
CUDA), the images padded into one canvas (edge-repeated; split into groups when a batch's padded
canvas would pass 256 MiB, so a few very large images cannot blow up device memory), and every view
size cut and resized in one `torchvision.ops.roi_align` call per group (adaptive sampling: each
output pixel averages the source pixels it covers, an area-style antialias; equal to the CPU path
when enlarging, a few grey levels apart on average when shrinking, where the CPU path's triangle
filter is wider).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch

from ssl_aug.errors import SslAugError

_MIX = 0x9E3779B97F4A7C15


@dataclass(frozen=True)
class CropView:
    """One view's crop: output side in pixels, area fraction range, aspect-ratio range."""

    size: int
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)


def crop_plan(views) -> tuple[CropView, ...]:
    """Normalise [(size, scale, ratio) | CropView | object with .size/.scale/.ratio] -> tuple of CropView."""
    out = []
    for v in views:
        if isinstance(v, CropView):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            out.append(CropView(int(v[0]), tuple(v[1]), tuple(v[2])))
        else:
            out.append(CropView(int(v.size), tuple(v.scale), tuple(v.ratio)))
    if not out or any(v.size < 1 for v in out):
        raise SslAugError(f"crop plan {views!r} is not allowed; give one (size >= 1, scale, ratio) per view")
    return tuple(out)


def image_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one image's crop boxes in one epoch (independent of worker and order)."""
    return torch.Generator().manual_seed((seed * _MIX + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB + 7)
                                         % (1 << 63))


def sample_boxes(width: int, height: int, plan, g: torch.Generator) -> torch.Tensor:
    """(V, 4) int64 [top, left, h, w] in original pixels, one box per view of `plan` (torchvision rule).
    Views sharing (scale, ratio) are drawn in one batched call, in plan order (the draws are independent)."""
    return sample_boxes_batch(torch.tensor([width]), torch.tensor([height]), plan, [g])[0]


def sample_boxes_batch(widths: torch.Tensor, heights: torch.Tensor, plan, gens: list) -> torch.Tensor:
    """(B, V, 4) int64 boxes of B images, image i from its own generator gens[i] (one draw call per image,
    the box arithmetic once for the batch): row i equals sample_boxes(widths[i], heights[i], plan, gens[i])."""
    from ssl_aug.data.crop_boxes import boxes_from_draws, draws_per_box  # the one implementation of the rule

    groups: dict[tuple, list[int]] = {}
    for v, view in enumerate(plan):
        groups.setdefault((view.scale, view.ratio), []).append(v)
    per = draws_per_box()
    u = torch.stack([torch.rand(len(plan) * per, generator=g, dtype=torch.float64) for g in gens])
    out = torch.empty((len(gens), len(plan), 4), dtype=torch.int64)
    lo = 0
    for (scale, ratio), views in groups.items():  # each group's draws follow the previous group's
        out[:, views] = boxes_from_draws(u[:, lo:lo + len(views) * per], heights, widths, scale, ratio)
        lo += len(views) * per
    return out


def dct_reduction(boxes: torch.Tensor, sizes) -> int:
    """Largest r in (1, 2, 4, 8) with every box side / r >= its view's output size."""
    short = min(min(int(b[2]), int(b[3])) / s for b, s in zip(boxes, sizes))
    r = 1
    while r < 8 and short / (2 * r) >= 1.0:
        r *= 2
    return r


def _decode_full(data: bytes) -> torch.Tensor | None:
    """A complete JPEG (SOI ... EOI markers) decoded at full scale by torchvision's libjpeg-turbo decoder ->
    (1, 3, h, w) uint8 (the same pixels as PIL's decode, without PIL's two copies); None for anything else
    (a truncated file keeps PIL's error)."""
    if data[:2] != b"\xff\xd8" or data[-2:] != b"\xff\xd9":
        return None
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)[None]


def decode_crops(data: bytes, boxes: torch.Tensor, sizes) -> list[torch.Tensor]:
    """Encoded image + its views' boxes (V,4) in original pixels -> V uint8 tensors (3, s_v, s_v).
    Raises on a corrupt or truncated image (the caller counts and skips it)."""
    import torch.nn.functional as F
    from PIL import Image

    r = dct_reduction(boxes, sizes)
    x = _decode_full(data) if r == 1 else None
    if x is None:
        with Image.open(io.BytesIO(data)) as im:
            w0, h0 = im.size
            if r > 1 and im.format == "JPEG":
                im.draft("RGB", (-(-w0 // r), -(-h0 // r)))  # DCT-domain 1/r decode
            im.load()
            arr = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)  # writable
        x = torch.from_numpy(arr).permute(2, 0, 1)[None]  # (1,3,h,w) channels_last: torch's fast uint8 path
    else:
        h0, w0 = x.shape[2:]
    hr, wr = x.shape[2:]
    fx, fy = w0 / wr, h0 / hr
    out = []
    for (t, l, h, w), s in zip(boxes.tolist(), sizes):
        t1, l1 = min(hr - 1, round(t / fy)), min(wr - 1, round(l / fx))
        b1, r1 = max(t1 + 1, min(hr, round((t + h) / fy))), max(l1 + 1, min(wr, round((l + w) / fx)))
        # a channels_last copy of the crop: torch's fast uint8 resize path (3x the planar layout's speed)
        crop = x[:, :, t1:b1, l1:r1].contiguous(memory_format=torch.channels_last)
        y = F.interpolate(crop, size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        out.append(y[0])
    return out


CANVAS_FLOATS = 1 << 26  # float32 elements of one padded canvas (256 MiB): bounds the device decode's memory


def canvas_groups(shapes: list[tuple[int, int]], budget: int = CANVAS_FLOATS) -> list[list[int]]:
    """Image indices grouped so that each group's padded canvas, 3 x group size x max height x max width
    floats, stays within `budget`: the whole batch in its order when it fits (the usual case), else groups
    by ascending area (a larger single image gets a group of its own)."""
    if shapes and 3 * len(shapes) * max(h for h, _ in shapes) * max(w for _, w in shapes) <= budget:
        return [list(range(len(shapes)))]
    groups, cur, hm, wm = [], [], 0, 0
    for i in sorted(range(len(shapes)), key=lambda i: (shapes[i][0] * shapes[i][1], i)):
        h, w = shapes[i]
        nh, nw = max(hm, h), max(wm, w)
        if cur and 3 * (len(cur) + 1) * nh * nw > budget:
            groups.append(cur)
            cur, nh, nw = [], h, w
        cur.append(i)
        hm, wm = nh, nw
    return groups + [cur] if cur else groups


def _edge_padded(imgs: list, device) -> torch.Tensor:
    """(n, 3, max h, max w) float32 canvas of n (3, h, w) uint8 images, each padded by repeating its last row
    and column: roi_align near an image's edge then reads the edge, exactly as on the image alone."""
    hm, wm = max(x.shape[1] for x in imgs), max(x.shape[2] for x in imgs)
    canvas = torch.empty((len(imgs), 3, hm, wm), dtype=torch.float32, device=device)
    for k, x in enumerate(imgs):
        h, w = x.shape[1:]
        canvas[k, :, :h, :w] = x
        if w < wm:
            canvas[k, :, :h, w:] = canvas[k, :, :h, w - 1:w]
        if h < hm:
            canvas[k, :, h:] = canvas[k, :, h - 1:h]
    return canvas


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    """A small host tensor on `device` without waiting for the device's queued work (pinned, non-blocking)."""
    return t.pin_memory().to(device, non_blocking=True) if torch.device(device).type == "cuda" else t.to(device)


def decode_crops_device(datas: list, boxes: torch.Tensor, sizes, device,
                        canvas_floats: int = CANVAS_FLOATS) -> list[torch.Tensor]:
    """B encoded images (bytes or 1-D uint8 CPU tensors), boxes (B, V, 4) in original pixels -> V tensors
    (B, 3, s_v, s_v) uint8 on `device`: one batched torchvision decode_jpeg, then per canvas group (see
    canvas_groups; one group for a typical batch) one roi_align per distinct view size."""
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.ops import roi_align

    device = torch.device(device)
    enc = [d if isinstance(d, torch.Tensor) else torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
    imgs = decode_jpeg(enc, mode=ImageReadMode.RGB, device=device)
    b, bx = len(imgs), boxes.to(device, non_blocking=True).float()  # pinned by the loader: no host wait
    out = [torch.empty((b, 3, s, s), dtype=torch.uint8, device=device) for s in sizes]
    for group in canvas_groups([tuple(x.shape[1:]) for x in imgs], canvas_floats):
        canvas = _edge_padded([imgs[i] for i in group], device)
        rows = slice(None) if len(group) == b else _to_device(torch.tensor(group), device)
        for s in sorted(set(sizes)):
            vs = [v for v, sv in enumerate(sizes) if sv == s]
            sel = bx[rows][:, vs].reshape(-1, 4)  # image-major
            first = torch.arange(len(group), device=device, dtype=torch.float32).repeat_interleave(len(vs))
            rois = torch.stack([first, sel[:, 1], sel[:, 0], sel[:, 1] + sel[:, 3], sel[:, 0] + sel[:, 2]], 1)
            y = roi_align(canvas, rois, output_size=(s, s), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            y = y.round_().clamp_(0, 255).to(torch.uint8).view(len(group), len(vs), 3, s, s)
            for k, v in enumerate(vs):
                out[v][rows] = y[:, k]
    return out


def eval_resize(size: int, resize: int | None = None) -> int:
    """Shorter side before the centre crop: `resize`, default round(size / 0.875) (the ImageNet convention)."""
    return resize or int(math.floor(size / 0.875 + 0.5))


def decode_eval(data: bytes, size: int, resize: int | None = None) -> torch.Tensor:
    """torchvision's eval transform Resize(resize) + CenterCrop(size) of an encoded image -> (3, size, size)
    uint8, decoded at the coarsest DCT scale that keeps the shorter side >= resize (exactly
    torchvision's result on the full decode when no reduction applies)."""
    import torch.nn.functional as F
    from PIL import Image

    resize = eval_resize(size, resize)
    with Image.open(io.BytesIO(data)) as im:
        w0, h0 = im.size
        r = 1
        while r < 8 and min(w0, h0) / (2 * r) >= resize:
            r *= 2
        if r > 1 and im.format == "JPEG":
            im.draft("RGB", (-(-w0 // r), -(-h0 // r)))
        im.load()
        arr = np.array(im if im.mode == "RGB" else im.convert("RGB"), dtype=np.uint8)
    nh, nw = (resize, int(resize * w0 / h0)) if w0 > h0 else (int(resize * h0 / w0), resize)
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    if x.shape[-2:] != (nh, nw):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    if nh < size or nw < size:  # torchvision pads a too-small image before cropping
        x = F.pad(x, (0, max(0, size - nw), 0, max(0, size - nh)))
        nh, nw = max(nh, size), max(nw, size)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return x[0, :, top:top + size, left:left + size].contiguous()
