"""ssl_aug.io: atomic writes leave the old or the new file, never a partial one, with open()'s mode."""

import errno
import json
import os
import stat

import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.io import (atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text,
                        sha256_file)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_writes_round_trip_and_leave_no_temp_files(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "héllo")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2]})
    atomic_torch_save({"t": torch.arange(3)}, tmp_path / "sub" / "d.pt")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": [1, 2]}
    assert torch.equal(torch.load(tmp_path / "sub" / "d.pt", weights_only=True)["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.rglob(".*")) == []


def test_mode_matches_plain_open_under_umask(tmp_path):
    old = os.umask(0o027)
    try:
        with open(tmp_path / "plain", "w"):
            pass
        atomic_write_text(tmp_path / "atomic", "x")
        atomic_torch_save({}, tmp_path / "atomic.pt")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "atomic") == _mode(tmp_path / "plain") == 0o640
    assert _mode(tmp_path / "atomic.pt") == 0o640


def test_failed_write_keeps_previous_file_and_cleans_up(tmp_path):
    target = tmp_path / "a.txt"
    atomic_write_text(target, "old")

    def broken(f):
        f.write(b"partial")
        raise ValueError("boom")  # a bug in the caller's writer: propagates unchanged

    with pytest.raises(ValueError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_torch_save_runtime_error_is_one_line_with_free_space(tmp_path):
    """torch.save reports a failed write as RuntimeError ('[enforce fail at inline_container.cc ...]')."""
    target = tmp_path / "a.pt"
    atomic_write_text(target, "old")

    def torch_like(f):
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nmore")

    with pytest.raises(SslAugError) as info:
        atomic_write(target, torch_like, what="checkpoint")
    message = str(info.value)
    assert "\n" not in message and str(target) in message and " free" in message and "inline_container" in message
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_append_line_failure_leaves_no_torn_line(tmp_path, monkeypatch):
    from ssl_aug import io as io_mod

    log = tmp_path / "log.jsonl"
    io_mod.append_line(log, '{"a": 1}')
    real_write = os.write

    def half_then_full(fd, data):  # writes half the bytes, then the disk is full
        real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io_mod.os, "write", half_then_full)
    with pytest.raises(SslAugError, match="No space left on device") as info:
        io_mod.append_line(log, '{"b": 2, "long": "' + "x" * 100 + '"}', what="metrics log")
    assert "\n" not in str(info.value) and " free" in str(info.value)
    assert log.read_text() == '{"a": 1}\n'


def test_unwritable_target_is_one_line_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SslAugError, match="could not write") as info:
        atomic_write_text(tmp_path / "file" / "inside.txt", "y")  # parent is a file
    assert "\n" not in str(info.value)


def test_sha256_matches_hashlib(tmp_path):
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1 << 16) == hashlib.sha256(data).hexdigest()
