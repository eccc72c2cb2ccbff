"""i-Mix plumbing shared by the methods that take ``method.mix`` (SimCLR, BYOL): the parsed mix table,
a seed drawn at construction, and view 0 mixed within the batch (Lee et al. 2021)."""

from __future__ import annotations

import torch

from ssl_aug.augment.mix import LABEL_FREE_MODES, mix_view, parse_mix
from ssl_aug.methods.base import require, step_generator

__all__ = ["MixedViews"]


class MixedViews:
    """Mixin for a Method: call ``init_mix(mix)`` in ``__init__`` after the layers are built (the seed is drawn
    only when mixing is on, so an unmixed method's init is unchanged); ``mixing`` says whether to mix now;
    ``mixed_view(views, step)`` -> (view 0 mixed (N,3,H,W), lam (N,), perm (N,)) from a generator that is a
    pure function of (seed, step, rank), so a resumed run mixes exactly as an uninterrupted one."""

    def init_mix(self, mix: dict | None) -> None:
        self.mix = None if mix is None else parse_mix(mix, LABEL_FREE_MODES)
        self._mix_seed = int(torch.randint(0, 2 ** 31, (1,))) if self.mix is not None else 0

    @property
    def mixing(self) -> bool:
        return self.mix is not None and self.training

    def mix_generator(self, step: int) -> torch.Generator:
        """The CPU generator i-Mix uses at ``step`` on this rank."""
        return step_generator(self._mix_seed, step)

    def mixed_view(self, views, step: int):
        require(len(views) == 2, "number of views with method.mix", len(views), "i-Mix uses exactly 2 views "
                "(set augment.views = 2 and no multicrop)")
        return mix_view(self.mix, views[0], self.mix_generator(step))
