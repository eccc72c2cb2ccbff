"""One writer per run folder: an exclusive advisory lock on `<run folder>/.ssl_aug.lock`.

The lock is `fcntl.flock` on an open file, so the kernel drops it when the process ends, however it
ends (kill -9 included). The file holds who has it (pid, host, command, start time) so that a second
run into a busy folder is refused in one line naming the other process. A lock file left with content
by a run that was killed is detected when the lock is next taken, and taken over, saying so.

`hold_run_folder(path)` is re-entrant within a process (the experiment holds the folder while its
trainer takes it again); ablation cells, search trials and Ray workers all train through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from ssl_aug.errors import SslAugError

__all__ = ["LOCK_NAME", "RunFolderBusy", "hold_run_folder", "lock_holder"]

LOCK_NAME = ".ssl_aug.lock"
_HELD: dict[str, list] = {}  # resolved folder -> [fd, depth] for the locks this process holds


class RunFolderBusy(SslAugError):
    """Another live process holds the run folder's lock."""


def lock_holder(folder: str | os.PathLike) -> dict | None:
    """What the lock file of `folder` says about its holder (None when empty, absent or unreadable)."""
    try:
        text = (Path(folder) / LOCK_NAME).read_text(errors="replace").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict | None) -> str:
    if not holder:
        return "another process"
    command = " ".join(holder.get("command", []))[:120]
    return (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
            + (f" ({command})" if command else ""))


def _acquire(folder: Path) -> int:
    import fcntl

    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise SslAugError(f"cannot lock run folder {folder}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = lock_holder(folder)
        os.close(fd)
        raise RunFolderBusy(f"run folder {folder} is in use by {_describe(holder)}: wait for it to end, stop it, "
                            "or choose another output_dir") from None
    stale = lock_holder(folder)
    if stale and stale.get("pid") != os.getpid():
        print(f"ssl-aug: run folder {folder} was locked by a run that ended without releasing it "
              f"({_describe(stale)}); taking it over", file=sys.stderr, flush=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
          "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8", "backslashreplace"), 0)
    except OSError:  # a full disk: the flock itself still guards the folder; the holder is just unnamed
        pass
    return fd


def _release(fd: int) -> None:
    import fcntl

    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)  # an empty lock file = released cleanly (not a stale lock)
    with contextlib.suppress(OSError):
        fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def hold_run_folder(folder: str | os.PathLike, enabled: bool = True):
    """Hold the exclusive lock of a run folder for the duration of the block (creates the folder).
    Raises RunFolderBusy when another live process holds it. enabled=False: a no-op (ranks other
    than 0, which write nothing into the folder)."""
    if not enabled:
        yield
        return
    key = str(Path(folder).resolve())
    entry = _HELD.get(key)
    if entry is None:
        entry = _HELD[key] = [_acquire(Path(folder)), 0]
    entry[1] += 1
    try:
        yield
    finally:
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[key]
            _release(entry[0])
