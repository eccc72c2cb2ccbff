import os

import pytest
import torch

from ssl_aug.checkpoint import (FORMAT, atomic_save, latest_checkpoint, load_checkpoint, save_run_checkpoint,
                                step_checkpoints)
from ssl_aug.errors import SslAugError


def _state(step):
    return {"format": FORMAT, "version": 1, "step": step, "model": {"w": torch.full((3,), float(step))}}


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_save(_state(1), tmp_path / "a.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert load_checkpoint(tmp_path / "a.pt")["step"] == 1


def test_keeps_last_k_and_last_points_to_newest(tmp_path):
    for step in (10, 20, 30):
        save_run_checkpoint(_state(step), tmp_path, step, keep=2)
    assert [p.name for p in step_checkpoints(tmp_path / "checkpoints")] == ["step_00000020.pt", "step_00000030.pt"]
    last = latest_checkpoint(tmp_path)
    assert last.name == "last.pt" and load_checkpoint(last)["step"] == 30
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_truncated_checkpoint_is_refused(tmp_path):
    path = atomic_save(_state(5), tmp_path / "c.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(SslAugError, match="corrupted, truncated"):
        load_checkpoint(path)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(SslAugError, match="corrupted, truncated"):
        load_checkpoint(tmp_path / "empty.pt")


def test_foreign_and_missing_files_are_refused(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(SslAugError, match="not an ssl_aug checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(SslAugError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


def test_pickled_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    torch.save({"format": FORMAT, "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(SslAugError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not (tmp_path / "pwned").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_gives_clear_error_and_keeps_previous(tmp_path):
    atomic_save(_state(1), tmp_path / "a.pt")
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(SslAugError, match="could not write checkpoint"):
            atomic_save(_state(2), tmp_path / "a.pt")
    finally:
        os.chmod(tmp_path, 0o700)
    assert load_checkpoint(tmp_path / "a.pt")["step"] == 1


def test_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    atomic_save(_state(1), tmp_path / "a.pt")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(SslAugError, match="No space left on device"):
        atomic_save(_state(2), tmp_path / "a.pt")
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "a.pt")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
