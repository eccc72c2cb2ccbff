"""The batch-source contract the trainer consumes (see ssl_aug.data.source for the registered data sets)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Iterator

import torch

__all__ = ["DataSource"]


class DataSource(ABC):
    """Batches of uint8 images on the training device (the trainer's only view of data).

    num_samples: images covered (all ranks). len(): steps per epoch on this rank (equal on every rank).
    Iterating yields (indices (B,) int64, images (B, 3, H, W) uint8), both on the training device;
    `position` counts the batches already yielded this epoch, `set_epoch(e)` picks the epoch's order,
    `state_dict()` / `load_state_dict()` resume exactly at the next batch.
    """

    num_samples: int
    epoch: int
    position: int

    @abstractmethod
    def __len__(self) -> int:
        """Steps per epoch on this rank."""

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(indices (B,) int64, images (B,3,H,W) uint8) on the device, from `position` on."""

    @abstractmethod
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its order); a new epoch starts at position 0."""

    @abstractmethod
    def state_dict(self) -> dict:
        """The position to resume from (epoch, position and what must match)."""

    @abstractmethod
    def load_state_dict(self, state: dict) -> None:
        """Resume: the next batch is the one after the saved position."""

    def close(self) -> None:
        """Stop what the source started ahead of use (worker processes of the next epoch); iterating
        again restarts it. The trainer calls it when training ends."""
