"""Cosine schedule: start -> end along half a cosine over the span (BYOL / DINO momentum, DINO weight
decay): end - (end - start) * (1 + cos(pi t)) / 2."""

import math

from ssl_aug.schedules.base import register_schedule


@register_schedule("cosine")
def cosine(t: float, start: float, end: float) -> float:
    return end - (end - start) * (1.0 + math.cos(math.pi * t)) / 2.0
