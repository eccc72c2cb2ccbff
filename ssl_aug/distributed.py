"""torch.distributed helpers that are no-ops without an initialised process group.

Launch with ``torchrun --nproc_per_node=N``; :func:`init_from_env` reads the torchrun environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and starts gloo on CPU,
nccl on CUDA.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = [
    "is_initialized",
    "world_size",
    "rank",
    "is_main",
    "init_from_env",
    "barrier",
    "cleanup",
    "all_reduce_sum",
    "all_reduce_max",
    "gather_with_grad",
]


def is_initialized() -> bool:
    """True when a process group is up (and torch was built with distributed support)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without one."""
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (and in single-process runs): the process that logs and writes files."""
    return rank() == 0


def init_from_env() -> torch.device:
    """Initialise the default group from torchrun's environment, return this process's device.

    Without ``WORLD_SIZE`` > 1 nothing is initialised and the device is ``cuda`` if available
    else ``cpu``. With CUDA, each process takes ``cuda:LOCAL_RANK`` and the backend is nccl; on CPU
    the backend is gloo. Calling it twice is harmless.
    """
    use_cuda = torch.cuda.is_available()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return device


def barrier() -> None:
    """Wait for every rank (no-op in single-process runs)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Destroy the default group if one is up."""
    if is_initialized():
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (identity in single-process runs)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise max over ranks in place and return it (identity in single-process runs)."""
    if is_initialized() and world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums the incoming gradients over ranks and keeps this rank's slice.

    Each rank's loss uses every rank's rows, so the gradient for this rank's rows is the sum of
    what all ranks' losses send back to them. With DDP averaging parameter gradients over ranks,
    the result is the gradient of the mean of the per-rank losses.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rank = dist.get_rank()
        ctx.rows = x.shape[0]
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (n, ...) from all ranks along dim 0 -> (world * n, ...), differentiably.

    Every rank must pass the same shape. Rows ``rank * n : (rank + 1) * n`` of the result are this
    rank's ``x``. Without a process group (or with one rank) returns ``x`` itself.
    """
    if not (is_initialized() and world_size() > 1):
        return x
    return _GatherWithGrad.apply(x)
