"""Schedules for scalar hyperparameters (see `ssl_aug.schedules.base` for the contract and recipe form).
A new schedule is one file with `@register_schedule("name")` plus one import line here."""

from ssl_aug.schedules.base import (COMMON_KEYS, SCHEDULES, Schedule, get_schedule, list_schedules, parse_schedule,
                                    register_schedule, split_schedules)
from ssl_aug.schedules import constant, cosine, linear, step  # noqa: F401  (registration)

__all__ = ["SCHEDULES", "Schedule", "register_schedule", "list_schedules", "get_schedule", "parse_schedule",
           "split_schedules", "COMMON_KEYS"]
