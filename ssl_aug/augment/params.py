"""Per-image view parameters, sampled on the CPU from a torch.Generator separately from being applied:
they can be logged, inspected and replayed (applying the same parameters gives the same views)."""

from __future__ import annotations

import torch

from ssl_aug.augment.ops import OPS, sample_crop_boxes  # noqa: F401 (re-exported)
from ssl_aug.augment.spec import ViewSpec
from ssl_aug.errors import SslAugError


class ViewParams:
    """Parameters of one view for a batch of N images: named tensors, first dim N, each owned by an op.

    Built-in keys: box (N,4) int64 [top, left, height, width] in input pixels; flip (N,) bool (after the
    crop); jitter_on (N,) bool; factors (N,4) float32 [brightness, contrast, saturation, hue shift in
    turns]; order (N,4) int64, order[n, k] = id of the op applied k-th (0 b, 1 c, 2 s, 3 h); gray (N,)
    bool; blur_on (N,) bool; sigma (N,) float32; solarize (N,) bool; policy_seed (N,) int64 (plus
    policy_choice and policy*/kornia* keys when those ops are on). Read as attributes (`p.box`).
    """

    def __init__(self, tensors: dict | None = None, **kw):
        object.__setattr__(self, "_t", dict(tensors or {}, **kw))

    def __getattr__(self, name: str) -> torch.Tensor:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self._t[name]
        except KeyError:
            raise AttributeError(f"ViewParams has no {name!r}; keys: {', '.join(self._t)}") from None

    def __setattr__(self, name, value):
        raise AttributeError("ViewParams is immutable; use p.replace(...)")

    def __getstate__(self):
        return self._t

    def __setstate__(self, state):
        object.__setattr__(self, "_t", state)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._t)

    def replace(self, **changes) -> "ViewParams":
        return ViewParams(dict(self._t, **changes))

    def to(self, device, non_blocking: bool = False) -> "ViewParams":
        return ViewParams({k: v.to(device, non_blocking=non_blocking) for k, v in self._t.items()})

    def __getitem__(self, rows) -> "ViewParams":
        """Parameters of a subset of the images (slice or index tensor)."""
        return ViewParams({k: v[rows] for k, v in self._t.items()})

    def __len__(self) -> int:
        return next(iter(self._t.values())).shape[0] if self._t else 0

    def __eq__(self, other) -> bool:
        return (isinstance(other, ViewParams) and self._t.keys() == other._t.keys()
                and all(torch.equal(v, other._t[k]) for k, v in self._t.items()))

    __hash__ = None

    def __repr__(self) -> str:
        return f"ViewParams(n={len(self)}, keys={list(self._t)})"

    @staticmethod
    def cat(params: list["ViewParams"]) -> "ViewParams":
        """Concatenate along the batch dimension (view-major); all must have the same keys."""
        keys = list(params[0]._t)
        if any(list(p._t) != keys for p in params):
            raise SslAugError("ViewParams.cat: parameter sets have different keys; concatenate views of one spec")
        return ViewParams({k: torch.cat([p._t[k] for p in params]) for k in keys})


def sample_view_params(spec: ViewSpec, n: int, height: int, width: int, g: torch.Generator) -> ViewParams:
    """Draw the parameters of one view of `spec` for n images of size (height, width) (CPU tensors):
    every registered op in registration order."""
    out = {}
    for name, op in OPS.items():
        out.update(op.sample(spec.cfg(name), n, spec.size, height, width, g))
    return ViewParams(out)
