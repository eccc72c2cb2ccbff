"""Atomic file writes and hashing: the one helper every writer of user files goes through.

A write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed over
the target (os.replace) and the folder is fsynced: a crash at any moment leaves either the old file
or the new one, never a partial file. New files get the mode a plain ``open(path, "w")`` would give
(0o666 & ~umask); temp files are removed on any error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ssl_aug.errors import SslAugError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
           "sha256_file", "file_mode"]


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file under the current umask (0o666 & ~umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], what: str = "file") -> Path:
    """Call ``write(f)`` on a binary file object, then atomically put the result at `path`.

    Creates missing parent folders. OSError (disk full, permissions) -> SslAugError naming the path,
    the previous file kept; any other exception from `write` propagates after cleaning up."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SslAugError(f"could not write {what} {path}: {exc.strerror or exc}") from None
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SslAugError(f"could not write {what} {path}: {exc.strerror or exc}; the previous {what} is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    """Write `obj` as indented JSON plus a newline to `path` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def atomic_torch_save(obj, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to `path` atomically; returns the path."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), what="checkpoint")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
