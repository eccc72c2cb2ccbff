"""Launchers: run independent tasks (search workers, ablation cells) here or on a Ray cluster.

    launch(fn, tasks, launcher="local", workers=1)   # in this process, one after another
    launch(fn, tasks, launcher="local", workers=4)   # 4 spawned processes, threads split between them
    launch(fn, tasks, launcher="ray", address="host:6379", gpus_per_task=1)  # one Ray task per element

`fn` must be importable at module level (it is pickled by name) and `tasks` a list of argument tuples;
results come back in task order. Files the tasks write must be on storage every worker sees (with Ray
across machines: a shared file system). Ray is an optional extra: pip install 'ssl_aug[ray]'.
"""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Sequence

from ssl_aug.errors import SslAugError

__all__ = ["launch", "LAUNCHERS", "check_ray_address", "require_ray", "threads_per_worker"]

LAUNCHERS = ("local", "ray")


def threads_per_worker(workers: int) -> int:
    """Torch threads for each of `workers` local workers: the cores split between them, never more than this
    process uses (so OMP_NUM_THREADS or torch.set_num_threads of the caller is honoured)."""
    import torch

    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // max(1, workers)))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _local(fn: Callable, tasks: Sequence[tuple], workers: int) -> list:
    if workers <= 1 or len(tasks) <= 1:
        return [fn(*args) for args in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_worker(workers)
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads,)) as pool:
        futures = [pool.submit(fn, *args) for args in tasks]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def require_ray():
    try:
        import ray
    except ImportError:
        raise SslAugError("--launcher ray needs Ray: pip install 'ssl_aug[ray]' (or pip install 'ray[default]')") from None
    return ray


def check_ray_address(address: str, timeout: float = 3.0) -> None:
    """One line when nothing listens at a Ray address 'host:port' or 'ray://host:port' ('auto' is left to Ray)."""
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise SslAugError(f"Ray address {address!r} is not allowed; use host:port (e.g. 10.0.0.5:6379), "
                          f"ray://host:10001 or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise SslAugError(f"Ray address {address!r} is unreachable ({exc.strerror or exc}); start the cluster "
                          f"with `ray start --head` there, or leave out --address to run on this machine") from None


def _ray(fn: Callable, tasks: Sequence[tuple], address: str | None, gpus_per_task: float, cpus_per_task: float) -> list:
    ray = require_ray()
    if not ray.is_initialized():
        if address:
            check_ray_address(address)
        ray.init(address=address or None, include_dashboard=False, log_to_driver=True,
                 ignore_reinit_error=True)
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task)(fn)
    refs = [remote.remote(*args) for args in tasks]
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, SslAugError):
            raise SslAugError(str(cause)) from None
        raise


def launch(fn: Callable, tasks: Sequence[tuple], launcher: str = "local", workers: int = 1,
           address: str | None = None, gpus_per_task: float = 0.0, cpus_per_task: float = 1.0) -> list[Any]:
    """Run fn(*args) for every args in `tasks`; -> results in task order (see the module docstring)."""
    if launcher not in LAUNCHERS:
        raise SslAugError(f"launcher {launcher!r} is not allowed; choose one of: {', '.join(LAUNCHERS)}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise SslAugError(f"workers = {workers!r} is not allowed; use an integer >= 1")
    if address and launcher != "ray":
        raise SslAugError(f"--address {address} needs --launcher ray (the local launcher runs on this machine)")
    if launcher == "ray":
        return _ray(fn, tasks, address, gpus_per_task, cpus_per_task)
    return _local(fn, tasks, workers)
