"""Two gloo ranks, each with its own output folder: they resume from the same checkpoint bytes or refuse together."""

import socket

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp

from ssl_aug.errors import SslAugError


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, root: str, out: str) -> None:
    from pathlib import Path

    from ssl_aug.train.resume import agree_on_checkpoint, writes_checkpoints

    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results = []
    try:
        run = Path(root) / f"node{rank}"
        (run / "checkpoints").mkdir(parents=True)
        results.append(writes_checkpoints(run))  # separate folders: both write
        ckpt = run / "checkpoints" / "last.pt"
        if rank == 0:
            ckpt.write_bytes(b"state at step 4")
        got = agree_on_checkpoint(ckpt if ckpt.is_file() else None, run)  # rank 1 lacks it: receives it
        results.append((str(got), got.read_bytes()))
        ckpt.write_bytes(b"state at step 4" if rank == 0 else b"state at step 9")  # now they differ
        try:
            agree_on_checkpoint(ckpt, run)
            results.append("agreed")
        except SslAugError as exc:
            results.append(str(exc))
        results.append(agree_on_checkpoint(None, run))  # nobody has one: a fresh start everywhere
    finally:
        tdist.destroy_process_group()
        torch.save(results, out + f".{rank}")


@pytest.mark.slow  # two spawned processes: over 20 s on a loaded 2-core machine
def test_two_ranks_share_send_or_refuse(tmp_path):
    out = str(tmp_path / "results")
    mp.spawn(_worker, args=(_port(), str(tmp_path), out), nprocs=2, join=True)
    r0, r1 = (torch.load(f"{out}.{r}", weights_only=False) for r in range(2))
    assert r0[0] is True and r1[0] is True
    assert r0[1][1] == r1[1][1] == b"state at step 4"
    assert r1[1][0] == str(tmp_path / "node1" / "checkpoints" / "last.pt")  # stored in its own folder
    for message in (r0[2], r1[2]):
        assert "different checkpoints" in message and "rank 0: last.pt (15 bytes" in message
        assert "rank 1: last.pt (15 bytes" in message and "\n" not in message
    assert r0[3] is None and r1[3] is None
