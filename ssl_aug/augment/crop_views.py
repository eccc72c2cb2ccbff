"""Views from crops made elsewhere: the decoder cut each view's random-resized crop from the whole
image (ssl_aug.data.crop_decode); the view engine adds everything after the crop on the device.

`views_from_crops(views, crops, generator)`: crops[v] is (N, 3, s_v, s_v) uint8 for view v of
`views.view_specs` (same order and sizes). Each view's parameters are drawn as for an s_v x s_v
input and its crop box is set to the whole crop, so the crop op reduces to the identity plus the
horizontal flip; colour jitter, grayscale, blur, solarize, Kornia ops and policies run as usual.
Consecutive views of one spec are made in one call (their crops stacked), as MultiView does.
Output: list of (N, 3, s_v, s_v) normalised views, like `MultiView.__call__`.
"""

from __future__ import annotations

import torch

from ssl_aug.augment.multiview import MultiView
from ssl_aug.augment.params import sample_view_params
from ssl_aug.errors import SslAugError

def crop_plan_of(views: MultiView) -> list[tuple[int, tuple, tuple]]:
    """(size, scale, ratio) of every view: what the decoder must crop."""
    return [(s.size, tuple(s.cfg("crop").scale), tuple(s.cfg("crop").ratio)) for s in views.view_specs]


def _single(views: MultiView, spec) -> MultiView:
    cache = views.__dict__.setdefault("_single_view_engines", {})  # one engine per spec, kept with its owner
    mv = cache.get(id(spec))
    if mv is None:
        mv = cache[id(spec)] = MultiView(spec, 1, mode=views.mode, channels_last=views.channels_last, dtype=views.dtype,
                                      chunk_elements=views.chunk_elements,
                                      device_chunk_elements=views.device_chunk_elements, masked=views.masked)
    return mv


def views_from_crops(views: MultiView, crops: list[torch.Tensor], generator: torch.Generator | None = None,
                     return_params: bool = False):
    """Finish the views of `views` from per-view crops (see module docstring)."""
    specs = views.view_specs
    if len(crops) != len(specs) or any(c.ndim != 4 or c.shape[-1] != s.size or c.shape[-2] != s.size
                                       for c, s in zip(crops, specs)):
        got = [tuple(c.shape) for c in crops]
        raise SslAugError(f"views_from_crops: got crops {got} for views of sizes {[s.size for s in specs]}; "
                          "give one (N, 3, size, size) crop per view, in view order")
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))
    out, params = [], []
    for spec, idx in views._groups():
        n = crops[idx[0]].shape[0]
        x = crops[idx[0]] if len(idx) == 1 else torch.cat([crops[j] for j in idx])
        s = spec.size
        p = sample_view_params(spec, x.shape[0], s, s, generator)
        full = torch.tensor([[0, 0, s, s]], dtype=torch.int64).expand(x.shape[0], 4).contiguous()
        p = p.replace(box=full)
        y = _single(views, spec).apply(x, [p])[0]
        out.extend(y[k * n:(k + 1) * n] for k in range(len(idx)))
        params.extend(p[k * n:(k + 1) * n] for k in range(len(idx)))
    return (out, params) if return_params else out
