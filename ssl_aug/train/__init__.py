"""Training: `Trainer` (trainer.py) on the epoch loop it shares with fine-tuning (`EpochLoop`, loop.py),
run setup (setup.py), checkpoint state (state.py),
the metrics log and step timers (metrics.py), preemption (signals.py), hard view sampling
(hard_views.py)."""

from ssl_aug.augment.recipe import build_views, normalization
from ssl_aug.data.subset import balanced_subset
from ssl_aug.device import resolve_device
from ssl_aug.train.setup import autocast, build_model, load_training_data
from ssl_aug.train.signals import TrainingInterrupted
from ssl_aug.train.trainer import NonFiniteLossError, Trainer

__all__ = ["Trainer", "NonFiniteLossError", "TrainingInterrupted", "build_model", "load_training_data", "autocast",
           "build_views", "normalization", "balanced_subset", "resolve_device"]
