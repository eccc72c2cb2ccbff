"""Linear schedule: start -> end in a straight line over the span."""

from ssl_aug.schedules.base import register_schedule


@register_schedule("linear")
def linear(t: float, start: float, end: float) -> float:
    return start + (end - start) * t
