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


def machine_line() -> str:
    """One line describing the machine and library versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


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
    path.write_text(text)
    return path
