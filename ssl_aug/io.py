"""Atomic file writes and hashing: the one helper every writer of user files goes through.

A write goes to a temporary file in the target's folder, is flushed and fsynced, then renamed over
the target (os.replace) and the folder is fsynced: a crash at any moment leaves either the old file
or the new one, never a partial file. New files get the mode a plain ``open(path, "w")`` would give
(0o666 & ~umask); temp files are removed on any error. A failed write (full disk, read-only place, no
permission, torch.save's own RuntimeError) is one SslAugError line naming the path and the free space.
`append_line` adds a line to a log; a failed append cuts the file back to its previous length.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ssl_aug.errors import SslAugError

__all__ = ["append_line", "free_space", "atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_torch_save",
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


def free_space(path: str | os.PathLike) -> str:
    """The free space of the file system holding `path` (or its nearest existing parent), e.g. '1.2 MiB free'."""
    import shutil

    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if free < 1024 or unit == "GiB":
            return f"{free:.0f} {unit} free" if unit == "B" else f"{free:.1f} {unit} free"
        free /= 1024
    return "free space unknown"  # pragma: no cover


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]  # e.g. torch's inline_container error


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], what: str = "file") -> Path:
    """Call ``write(f)`` on a binary file object, then atomically put the result at `path`.

    Creates missing parent folders. OSError (disk full, permissions) or RuntimeError (torch.save's
    writer) -> SslAugError naming the path and the free space, the previous file kept and the temp file
    removed; any other exception from `write` propagates after cleaning up."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SslAugError(f"could not write {what} {path}: {_reason(exc)} ({free_space(path)})") from None
    try:
        os.chmod(tmp, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SslAugError(f"could not write {what} {path}: {_reason(exc)} ({free_space(path)}); "
                          f"the previous {what} is kept") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def append_line(path: str | os.PathLike, line: str, what: str = "log") -> None:
    """Append `line` plus a newline to a text log. A failure (full disk, read-only place) cuts the file
    back to its previous length and raises one SslAugError line naming the path and the free space."""
    path = Path(path)
    data = (line + "\n").encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, file_mode())
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except OSError:
                os.ftruncate(fd, start)  # no torn line left behind
                raise
        finally:
            os.close(fd)
    except OSError as exc:
        raise SslAugError(f"could not write {what} {path}: {_reason(exc)} ({free_space(path)}); "
                          "the lines written before are kept") from None


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
