"""A toy schedule for the contract tests: one file plus one registration line."""

from ssl_aug.schedules import register_schedule


@register_schedule("toy_square")
def toy_square(t: float, start: float, end: float) -> float:
    """start -> end along t**2."""
    return start + (end - start) * t * t
