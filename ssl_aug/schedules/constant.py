"""Constant schedule: the start value throughout (after any warm-up)."""

from ssl_aug.schedules.base import register_schedule


@register_schedule("constant")
def constant(t: float, start: float, end: float) -> float:
    return start
