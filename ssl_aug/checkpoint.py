"""Checkpoint files: written atomically (ssl_aug.io: temp file + fsync + rename), read safely (weights_only).

A checkpoint is a dict {"format": "ssl_aug.checkpoint", "version": 1, "config", "model",
"optimizer", "scheduler", "scaler", "rng", "batch_source", "step", "epoch", "metrics", "versions"}.
Only tensors and plain Python containers are stored, so `torch.load(weights_only=True)` reads it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_torch_save

FORMAT = "ssl_aug.checkpoint"
VERSION = 1
_STEP_FILE = re.compile(r"step_(\d+)\.pt$")


def atomic_save(obj, path: str | os.PathLike) -> Path:
    """torch.save `obj` to `path` atomically (ssl_aug.io.atomic_torch_save): a crash leaves the previous
    file or the new one, never a partial file; disk-full or permission errors raise SslAugError and
    keep the previous file."""
    return atomic_torch_save(obj, path)


def load_weights_only(path: str | os.PathLike, map_location="cpu"):
    """torch.load(weights_only=True): tensors and plain containers only, never pickled code; one clear
    error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise SslAugError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign bytes (IndexError, KeyError, ...)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SslAugError(f"checkpoint {path} is corrupted, truncated or not a torch file ({reason[:160]})") from None


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read and check an ssl_aug checkpoint; one clear error for missing, truncated or foreign files."""
    path = Path(path)
    ckpt = load_weights_only(path, map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise SslAugError(f"{path} is not an ssl_aug checkpoint (expected format '{FORMAT}')")
    if ckpt.get("version", 0) > VERSION:
        raise SslAugError(f"checkpoint {path} has format version {ckpt.get('version')}; this ssl_aug reads "
                          f"versions <= {VERSION}: upgrade ssl_aug")
    return ckpt


def step_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """step_*.pt files in `folder`, oldest first."""
    folder = Path(folder)
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.pt") if (m := _STEP_FILE.search(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint to resume a run from: checkpoints/last.pt, else the newest step file."""
    folder = Path(run_dir) / "checkpoints"
    last = folder / "last.pt"
    if last.is_file():
        return last
    steps = step_checkpoints(folder)
    return steps[-1] if steps else None


def save_run_checkpoint(state: dict, run_dir: str | os.PathLike, step: int, keep: int) -> Path:
    """Write checkpoints/step_<step>.pt atomically, point last.pt at it, delete all but the newest `keep`."""
    folder = Path(run_dir) / "checkpoints"
    path = atomic_save(state, folder / f"step_{step:08d}.pt")
    # last.pt: a hard link made under a temp name then renamed, so it is always complete.
    tmp = folder / f".last.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:  # file systems without hard links
        atomic_save(state, folder / "last.pt")
    else:
        os.replace(tmp, folder / "last.pt")
    for old in step_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    for stale in folder.glob(".*.tmp"):  # left by a writer killed mid-write (one writer per run)
        stale.unlink(missing_ok=True)
    return path
