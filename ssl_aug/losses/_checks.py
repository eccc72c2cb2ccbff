"""Argument checks shared by the loss functions."""

from __future__ import annotations

from ssl_aug.errors import SslAugError


def check_positive(name: str, value: float) -> None:
    """One-line SslAugError unless ``value`` > 0."""
    if not value > 0:
        raise SslAugError(f"{name}={value!r} is not allowed: it must be a number > 0")
