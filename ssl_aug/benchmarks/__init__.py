"""Benchmarks behind `ssl-aug bench ...` and eval/*.py. Each one prints a table and rewrites its own
section of BENCHMARKS.md (machine, date, command, medians, ratios measured side by side)."""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable


def cpu_info(path: str = "/proc/cpuinfo") -> dict:
    """The CPU as benchmarks must report it: {"model", "cores", "avx512" (the CPU has AVX-512F),
    "avx2", "kernels" (the ISA torch dispatches to, e.g. AVX2 under ATEN_CPU_CAPABILITY=avx2),
    "isa_env" (ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA settings that cap it, "" if none)}."""
    import torch

    model, flags = None, set()
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("model name") and model is None:
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    try:
        kernels = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # older torch
        kernels = "unknown"
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if os.environ.get(k))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"model": model, "cores": cores, "avx512": "avx512f" in flags, "avx2": "avx2" in flags,
            "kernels": kernels, "isa_env": env}


def machine_line(info: dict | None = None) -> str:
    """One line naming the machine: CPU model, AVX-512 yes/no, the ISA torch uses (and any cap set by
    environment variables), cores, threads, library versions and the 1-minute load average."""
    import torch

    c = cpu_info() if info is None else info
    isa = f"AVX-512 {'yes' if c['avx512'] else 'no'}, torch kernels {c['kernels']}"
    if c["isa_env"]:
        isa += f" (capped by {c['isa_env']})"
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"{c['model']} ({isa}), {c['cores']} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}{load}")


def median_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], rounds: int = 3, warmup: int = 1) -> dict:
    """Run every fn once per round, in turn (so load drift hits them alike). Returns
    {name: (median wall s, median process CPU s over all threads)} over `rounds` rounds after `warmup`."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_benchmarks_md(section: str, title: str, body: str, path: str | os.PathLike | None = None) -> Path:
    """Replace (or append) the section `section` of BENCHMARKS.md with `body`, stamped with the
    machine, the date and the command that produced it."""
    path = Path(path) if path is not None else Path.cwd() / "BENCHMARKS.md"
    start, end = f"<!-- bench:{section} -->", f"<!-- /bench:{section} -->"
    command = " ".join([Path(sys.argv[0]).name] + sys.argv[1:])
    block = (f"{start}\n## {title}\n\n"
             f"Machine: {machine_line()}  \nDate: {datetime.date.today().isoformat()}  \n"
             f"Command: `{command}`\n\n{body.strip()}\n{end}")
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEvery table here is printed by a script in eval/ (or `ssl-aug bench`).\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    from ssl_aug.io import atomic_write_text

    return atomic_write_text(path, text)
