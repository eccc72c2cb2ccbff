"""Step schedule: start, multiplied by `gamma` at each milestone (fractions of the span), e.g.
milestones = [0.5, 0.75], gamma = 0.1. `end` is not used."""

from ssl_aug.errors import SslAugError
from ssl_aug.schedules.base import register_schedule


@register_schedule("step")
def step(t: float, start: float, end: float, milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
    if not isinstance(milestones, (list, tuple)) or not all(isinstance(m, (int, float)) and 0 < m < 1
                                                            for m in milestones):
        raise SslAugError(f"step schedule: milestones = {milestones!r} must be a list of fractions in (0, 1)")
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma < 0:
        raise SslAugError(f"step schedule: gamma = {gamma!r} must be a number >= 0")
    return start * gamma ** sum(t >= m for m in milestones)
