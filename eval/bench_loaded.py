"""A run's cost on a busy machine: the quickstart recipe timed alone and beside two CPU-bound jobs
(busy loops, one per core of a 2-core machine), for the OpenMP wait policies and thread counts a run
could use. Target: beside the two jobs a run takes at most 2x its idle time (a fair share of the cores
is about 1.5x on 2 cores with 3 runnable processes).

    python eval/bench_loaded.py [--steps 60] [--repeats 3] [--quick] [--no-write]

Rows: ACTIVE (OpenMP threads spin while they wait: the library default), PASSIVE (threads sleep: what
`ssl-aug` sets before torch is imported unless OMP_WAIT_POLICY is already set), PASSIVE with 1 thread.
Each cell is the median wall time of `ssl-aug train quickstart train.max_steps=STEPS` in a fresh process
(start-up and evaluation included); the idle and loaded runs of a row alternate so drift hits both.
The figures are only meaningful on an otherwise idle machine: the first column says how busy it was.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

VARIANTS = [("ACTIVE, all cores", {"OMP_WAIT_POLICY": "ACTIVE"}, []),
            ("PASSIVE, all cores (ssl-aug default)", {"OMP_WAIT_POLICY": "PASSIVE"}, []),
            ("PASSIVE, 1 thread", {"OMP_WAIT_POLICY": "PASSIVE"}, ["train.threads=1"])]
BUSY = "while True: pass"


def timed_run(env_extra: dict, overrides: list[str], steps: int, out: str) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    env.update(env_extra)
    argv = [sys.executable, "-m", "ssl_aug", "train", "quickstart", f"train.max_steps={steps}", "--no-progress",
            "--output-dir", out, *overrides]
    start = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return time.perf_counter() - start


def busy_jobs(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(n)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=60, help="optimiser steps per run (the quickstart recipe's own "
                                                            "is 380; 60 keeps a row to a few minutes)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per cell (median reported)")
    ap.add_argument("--jobs", type=int, default=2, help="CPU-bound jobs beside the run")
    ap.add_argument("--quick", action="store_true", help="validation only: 5 steps, 1 repeat, no BENCHMARKS.md")
    ap.add_argument("--no-write", action="store_true", help="print only")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.repeats, args.no_write = 5, 1, True
    from ssl_aug.benchmarks import markdown_table, update_benchmarks_md

    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, env, overrides in VARIANTS:
            idle, loaded = [], []
            for r in range(args.repeats):
                idle.append(timed_run(env, overrides, args.steps, f"{tmp}/{len(rows)}_{r}_idle"))
                jobs = busy_jobs(args.jobs)
                try:
                    loaded.append(timed_run(env, overrides, args.steps, f"{tmp}/{len(rows)}_{r}_loaded"))
                finally:
                    for job in jobs:
                        job.kill()
                        job.wait()
            a, b = statistics.median(idle), statistics.median(loaded)
            rows.append([name, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}", "yes" if b <= 2 * a else "no"])
            print(" | ".join(rows[-1]), flush=True)
    table = markdown_table(["run", "alone (s)", f"beside {args.jobs} CPU-bound jobs (s)", "ratio", "<= 2x"], rows)
    body = (f"`ssl-aug train quickstart train.max_steps={args.steps}`, median of {args.repeats} fresh processes per "
            f"cell; 1-minute load average before the benchmark: {load_before:.1f} (the 'alone' column is only idle "
            f"when that is near 0).\n\n{table}")
    print(body)
    if not args.no_write:
        update_benchmarks_md("loaded", "A run on a busy machine (eval/bench_loaded.py)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
