"""Multi-process resume: every rank must read the same checkpoint, on shared storage or not.

Before loading, each rank takes the checkpoint of its own output folder (or the explicit path) and the
ranks compare (size, SHA-256) over the CPU control group. Ranks whose folder lacks it (nodes without
shared storage: only rank 0 writes) receive the bytes from the lowest rank that has it and store them
atomically in their own folder first. Files that exist on several ranks but differ are refused on every
rank in one line; nobody waits on a rank that already gave up, so a resume never hangs.

Checkpoint writers: rank 0, plus local rank 0 of each node whose output folder rank 0's folder is not
(detected with a token rank 0 writes at start), so every node keeps its own copy for the next resume.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

from ssl_aug import distributed as dist
from ssl_aug.errors import SslAugError
from ssl_aug.io import atomic_write_bytes, atomic_write_text

__all__ = ["agree_on_checkpoint", "writes_checkpoints", "other_node_writers", "save_on_every_node", "describe"]

TOKEN_FILE = ".rank0_token"


def _fingerprint(path: Path | None) -> tuple[str, int, str] | None:
    if path is None or not path.is_file():
        return None
    data = path.read_bytes()
    return path.name, len(data), hashlib.sha256(data).hexdigest()


def describe(rank: int, fp) -> str:
    if fp is None:
        return f"rank {rank}: none"
    return f"rank {rank}: {fp[0]} ({fp[1]} bytes, sha256 {fp[2][:12]})"


def agree_on_checkpoint(path: Path | None, run_dir: Path) -> Path | None:
    """The checkpoint every rank resumes from (None: no rank has one), identical bytes on every rank.
    `path`: this rank's candidate (its folder's latest, or an explicit file). A collective."""
    if dist.world_size() < 2:
        return path
    group = dist.control_group()
    import torch.distributed as tdist

    mine = _fingerprint(path)
    prints: list = [None] * dist.world_size()
    tdist.all_gather_object(prints, mine, group=group)
    have = [r for r, fp in enumerate(prints) if fp is not None]
    if not have:
        return None
    distinct = {fp[1:] for fp in prints if fp is not None}
    if len(distinct) > 1:
        listed = "; ".join(describe(r, fp) for r, fp in enumerate(prints))
        raise SslAugError(f"ranks would resume from different checkpoints ({listed}): give every node the same "
                          f"file (copy rank 0's checkpoints/ folder into the others' output_dir), or pass one "
                          f"--resume PATH that is the same file on every node")
    source = have[0]
    if len(have) < len(prints):  # some nodes lack it: send the bytes once, store them in their own folder
        payload = [path.read_bytes() if dist.rank() == source else None]
        tdist.broadcast_object_list(payload, src=source, group=group)
        if mine is None:
            name = prints[source][0]
            path = Path(run_dir) / "checkpoints" / name
            atomic_write_bytes(path, payload[0])
            if _fingerprint(path)[1:] != prints[source][1:]:
                raise SslAugError(f"checkpoint {path} received from rank {source} does not match its SHA-256; "
                                  "check the free space of this node's output_dir and resume again")
    return path


def writes_checkpoints(run_dir: Path) -> bool:
    """True on the ranks that write checkpoints: rank 0, and local rank 0 of every node that does not
    share rank 0's output folder. A collective with several ranks (call it once, on every rank)."""
    if dist.world_size() < 2:
        return True
    import torch.distributed as tdist

    token = [secrets.token_hex(8) if dist.rank() == 0 else None]
    if dist.rank() == 0:
        atomic_write_text(Path(run_dir) / TOKEN_FILE, token[0])
    tdist.broadcast_object_list(token, src=0, group=dist.control_group())
    tdist.barrier(group=dist.control_group())
    if dist.rank() == 0:
        return True
    if dist.local_rank() != 0:
        return False
    seen = Path(run_dir) / TOKEN_FILE
    return not (seen.is_file() and seen.read_text() == token[0])


def other_node_writers(writes: bool) -> bool:
    """True when a rank other than 0 writes checkpoints (a node without rank 0's folder). A collective."""
    if dist.world_size() < 2:
        return False
    return dist.any_rank(writes and dist.rank() != 0)


def save_on_every_node(state: dict | None, run_dir: Path, step: int, keep: int, writes: bool) -> Path | None:
    """Rank 0 serialises the checkpoint once and sends the bytes to the writers of the other nodes, so every
    node stores byte-identical files (the resume check compares hashes). A collective; None on non-writers."""
    import io

    import torch
    import torch.distributed as tdist

    from ssl_aug.checkpoint import step_checkpoints

    blob = [None]
    if dist.rank() == 0:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        blob[0] = buffer.getvalue()
    tdist.broadcast_object_list(blob, src=0, group=dist.control_group())
    if not writes:
        return None
    folder = Path(run_dir) / "checkpoints"
    path = atomic_write_bytes(folder / f"step_{step:08d}.pt", blob[0])
    atomic_write_bytes(folder / "last.pt", blob[0])
    for old in step_checkpoints(folder)[:-keep]:
        old.unlink(missing_ok=True)
    return path
