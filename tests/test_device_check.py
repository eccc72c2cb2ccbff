"""The device check's CPU dry run (what CI can run of eval/device_check.sh): every check passes or skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_cpu_dry_run_passes():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "eval" / "device_check.sh"), "--cpu-dry-run", "--no-write"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = proc.stdout.split("| check |", 1)[1]
    for check in ("view parity", "trainer", "two ranks (gloo)", "features -> faiss kNN", "export + reload",
                  "throughput", "views on device"):
        assert f"| {check} |" in table, check
    assert "| FAIL |" not in table
    from ssl_aug.methods import METHODS

    for method in METHODS:  # every registered method, audited on the meta device in the dry run
        assert f"| sync audit | {method}, resident batches, amp none, SyncAudit on meta |" in table, method
    assert "| sync audit | simclr, streamed npz shards" in table

