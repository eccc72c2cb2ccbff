"""torch.distributed helpers that are no-ops without an initialised process group.

Launch with ``torchrun --nproc_per_node=N``; :func:`init_from_env` reads the torchrun environment
(``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) and starts nccl when the
recipe's device is CUDA, gloo otherwise (also when a GPU is visible but the recipe says cpu).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "is_initialized",
    "world_size",
    "rank",
    "is_main",
    "init_from_env",
    "local_rank",
    "backend_for",
    "control_group",
    "any_rank",
    "barrier",
    "cleanup",
    "all_reduce_sum",
    "all_reduce_max",
    "gather_with_grad",
    "all_gather_object",
    "GroupBatchNorm",
    "convert_sync_batchnorm",
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


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``); 0 without one."""
    try:
        return int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        return 0


def backend_for(device: str | torch.device) -> str:
    """The process-group backend for a training device: nccl for CUDA, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: str | torch.device = "auto") -> torch.device:
    """Initialise the default group from torchrun's environment, return this process's device.

    `device` is the recipe's device ("auto", "cpu", "cuda", "cuda:N"). CUDA devices become
    ``cuda:LOCAL_RANK`` and use nccl; a CPU device uses gloo even when a GPU is visible. Without
    ``WORLD_SIZE`` > 1 nothing is initialised. Calling it twice is harmless.
    """
    name = str(device)
    use_cuda = torch.cuda.is_available() and (name == "auto" or name.startswith("cuda"))
    chosen = torch.device("cuda", local_rank()) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(chosen)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_initialized():
        dist.init_process_group(backend=backend_for(chosen), init_method="env://")
    return chosen


_CONTROL_GROUP = None


def control_group():
    """A gloo group over all ranks for small CPU-side agreements (signals) that must not sync a GPU
    stream; the default group itself when its backend is already gloo. None without a group."""
    global _CONTROL_GROUP
    if not (is_initialized() and world_size() > 1):
        return None
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _CONTROL_GROUP is None:
        _CONTROL_GROUP = dist.new_group(backend="gloo")
    return _CONTROL_GROUP


def any_rank(flag: bool) -> bool:
    """True if `flag` is true on any rank (a collective: every rank must call it at the same point)."""
    group = control_group()
    if group is None:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return bool(t.item())


def barrier() -> None:
    """Wait for every rank (no-op in single-process runs)."""
    if is_initialized() and world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Destroy the default group if one is up."""
    global _CONTROL_GROUP
    _CONTROL_GROUP = None
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


def all_gather_object(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects); [obj] in single-process runs."""
    if not (is_initialized() and world_size() > 1):
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward sums the gradients over ranks (every rank's loss uses the sum)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover the batches of all ranks, for any backend.

    torch's ``nn.SyncBatchNorm`` runs on CUDA only; this one works with gloo on CPU (and anywhere):
    two differentiable all-reduces (sum with count, then the centred sum of squares), so the output
    and its gradient equal plain BatchNorm on the concatenated global batch. Input (N, C, *).
    Outside training, or without a process group, it is ordinary BatchNorm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_initialized() and world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = x.new_full((1,), x.numel() // x.shape[1])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.square().sum(dims)) / total
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * total / (total - 1).clamp_min(1), momentum)
        return y


def convert_sync_batchnorm(module: nn.Module, device: torch.device | str = "cpu") -> nn.Module:
    """Replace every BatchNorm*d by a cross-rank one: ``nn.SyncBatchNorm`` on CUDA, else
    :class:`GroupBatchNorm` (weights, buffers and train/eval mode are kept)."""
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GroupBatchNorm):
        new = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        new.load_state_dict(module.state_dict())
        if module.affine:  # the same Parameter objects, as torch's converter: a frozen one (EMA target) stays frozen
            new.weight, new.bias = module.weight, module.bias
        new.train(module.training)
        return new.to(next(iter(module.state_dict().values()), torch.empty(0)).device)
    for name, child in module.named_children():
        new_child = convert_sync_batchnorm(child, device)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
