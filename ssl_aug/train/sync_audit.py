"""Sync audit: every host<->device transfer and implicit synchronisation of work on a stand-in device.

On a CPU-only machine the training "device" is PyTorch's ``meta`` device (shapes, no data): every op on
it is what an accelerator would run, and everything that crosses to or from it is a transfer. Two
interposers together see all of them:

- a ``TorchFunctionMode`` (the Python level) sees what the dispatcher never shows a Python mode:
  ``torch.tensor`` / ``as_tensor`` / ``Tensor.new_tensor`` of Python data onto the device (their copy
  runs with the Python dispatch key excluded), ``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``,
  ``.tolist()``, ``.numpy()`` and indexing a device tensor with a Python list;
- a ``TorchDispatchMode`` (the aten level) sees ``.to()`` / ``.cpu()`` / ``copy_`` copies (blocking or
  not), data-dependent shapes (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``,
  ``repeat_interleave`` without ``output_size``), scalar reads, and a CPU tensor passed to a device op
  (an implicit, blocking upload of e.g. an index set).

Kinds of events: ``d2h`` (a device->host read: the host waits), ``sync`` (a data-dependent shape: the
host waits), ``h2d_blocking`` (a host->device copy the host waits for), ``h2d_async`` (a non-blocking
copy: allowed, counted). Each event records the first ``ssl_aug`` source line that caused it, so a
failure names the line. Reads return zeros (meta tensors have no data).

    with SyncAudit() as audit:
        loss, stats = method(views_on_meta)
    audit.check("SimCLR step")  # SslAugError naming each stalling line, if any

On CUDA the same steps run under ``torch.cuda.set_sync_debug_mode("error")`` (the device check).
"""

from __future__ import annotations

import contextlib
import os
import traceback
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from ssl_aug.errors import SslAugError

__all__ = ["SyncAudit", "SyncEvent", "AUDIT_DEVICE", "STALLS", "meta_autocast"]

AUDIT_DEVICE = torch.device("meta")
STALLS = ("d2h", "sync", "h2d_blocking")  # the kinds that stall a device stream
aten = torch.ops.aten
_COPIES = {aten._to_copy.default, aten.copy_.default}
_DATA_DEPENDENT = {aten.nonzero.default, aten.masked_select.default, aten.argwhere.default,
                   aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
                   aten.repeat_interleave.Tensor, aten.nonzero_static.default}
_READS = {torch.Tensor.item: "item()", torch.Tensor.__bool__: "bool(tensor)", torch.Tensor.__int__: "int(tensor)",
          torch.Tensor.__float__: "float(tensor)", torch.Tensor.__index__: "tensor as an index",
          torch.Tensor.tolist: "tolist()", torch.Tensor.numpy: "numpy()"}
_FROM_DATA = {torch.tensor: "torch.tensor", torch.as_tensor: "torch.as_tensor", torch.asarray: "torch.asarray"}
_HERE = (os.path.join("ssl_aug", "train", "sync_audit.py"), os.path.join("ssl_aug", "benchmarks", "ops.py"))


class _MetaAutocast(torch.autocast):
    """torch.autocast that accepts device_type "meta" (as "cpu" with autocast off)."""

    def __init__(self, device_type, *args, **kwargs):
        if device_type == AUDIT_DEVICE.type:
            device_type, kwargs = "cpu", {**kwargs, "enabled": False}
        super().__init__(device_type, *args, **kwargs)


@contextlib.contextmanager
def meta_autocast():
    """Let code that opens ``torch.autocast(x.device.type, ...)`` run on the audit device."""
    from unittest import mock

    with mock.patch.object(torch, "autocast", _MetaAutocast):
        yield


@dataclass(frozen=True)
class SyncEvent:
    kind: str  # d2h | sync | h2d_blocking | h2d_async
    what: str  # e.g. "torch.tensor of Python data onto the device"
    where: str  # "ssl_aug/losses/ntxent.py:99" (first ssl_aug frame), or "?" outside the package


def _where() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = frame.filename.replace("\\", "/")
        if "/ssl_aug/" in name and not name.endswith(_HERE):
            return f"ssl_aug/{name.rsplit('/ssl_aug/', 1)[1]}:{frame.lineno}"
    return "?"


def _on_device(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == AUDIT_DEVICE.type


def _tensors(args, kwargs):
    for a in list(args) + list(kwargs.values()):
        for t in (a if isinstance(a, (list, tuple)) else [a]):
            if isinstance(t, torch.Tensor):
                yield t


def _fake_read(t: torch.Tensor, what: str):
    zeros = np.zeros(tuple(t.shape), dtype=torch.empty((), dtype=t.dtype).numpy().dtype)
    if what in ("tolist()",):
        return zeros.tolist()
    if what == "numpy()":
        return zeros
    return zeros.reshape(-1)[0].item() if zeros.size else 0


class _FunctionLevel(TorchFunctionMode):
    def __init__(self, audit: "SyncAudit"):
        super().__init__()
        self.audit = audit

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _READS and args and _on_device(args[0]):
            self.audit.record("d2h", _READS[func])
            return _fake_read(args[0], _READS[func])
        if func in _FROM_DATA:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == AUDIT_DEVICE.type and not isinstance(
                    args[0] if args else None, torch.Tensor):
                self.audit.record("h2d_blocking", f"{_FROM_DATA[func]} of Python data onto the device")
        elif func is torch.Tensor.new_tensor and args and _on_device(args[0]):
            self.audit.record("h2d_blocking", "new_tensor of Python data onto the device")
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and args and _on_device(args[0]):
            index = args[1] if len(args) > 1 else None
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, list) for p in parts):
                self.audit.record("h2d_blocking", "indexing a device tensor with a Python list")
            elif (func is torch.Tensor.__setitem__ and len(args) > 2 and isinstance(args[2], (bool, int, float))
                  and any(isinstance(p, torch.Tensor) for p in parts)):  # index_put_ uploads the Python value
                self.audit.record("h2d_blocking", "a Python scalar written into a device tensor at tensor indices")
        return func(*args, **kwargs)


class _DispatchLevel(TorchDispatchMode):
    def __init__(self, audit: "SyncAudit"):
        super().__init__()
        self.audit = audit

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = list(_tensors(args, kwargs))
        on_device = any(_on_device(t) for t in tensors)
        if func in _COPIES:
            if func is aten.copy_.default:
                src, dst, non_blocking = args[1].device.type, args[0].device.type, bool(args[2:3] and args[2])
            else:
                target = kwargs.get("device")
                src = args[0].device.type
                dst = torch.device(target).type if target is not None else src
                non_blocking = bool(kwargs.get("non_blocking", False))
            if src == "cpu" and dst == AUDIT_DEVICE.type:
                self.audit.record("h2d_async" if non_blocking else "h2d_blocking",
                                  "non-blocking host->device copy" if non_blocking else "blocking host->device copy")
            elif src == AUDIT_DEVICE.type and dst == "cpu":
                self.audit.record("d2h", "device->host copy")
                if func is aten.copy_.default:
                    return args[0]
                return torch.zeros(args[0].shape, dtype=kwargs.get("dtype") or args[0].dtype)
            return func(*args, **kwargs)
        if not on_device:
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            self.audit.record("d2h", "scalar read")
            return False if args[0].dtype == torch.bool else (0.0 if args[0].is_floating_point() else 0)
        masks = func is aten.index.Tensor and any(
            t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        if func in _DATA_DEPENDENT or masks:
            self.audit.record("sync", f"{func.overloadpacket.__name__} (data-dependent shape)")
            return _empty_result(func, args)
        if any(t.device.type == "cpu" and t.dim() > 0 for t in tensors):
            self.audit.record("h2d_blocking", f"CPU tensor passed to device op {func.overloadpacket.__name__}")
            args, kwargs = _to_device(args), _to_device(kwargs)
        return func(*args, **kwargs)


def _to_device(tree):
    if isinstance(tree, torch.Tensor):
        return tree.to(AUDIT_DEVICE) if tree.device.type == "cpu" and tree.dim() > 0 else tree
    if isinstance(tree, (list, tuple)):
        return type(tree)(_to_device(t) for t in tree)
    if isinstance(tree, dict):
        return {k: _to_device(v) for k, v in tree.items()}
    return tree


def _empty_result(func, args):
    """A shape-consistent empty stand-in for a data-dependent result (no rows selected)."""
    x = args[0]
    if func in (aten.nonzero.default, aten.argwhere.default, aten.nonzero_static.default):
        return torch.empty((0, x.dim()), dtype=torch.long, device=x.device)
    if func is aten.index.Tensor:
        k = sum(t.dim() for t in args[1] if t is not None)
        return torch.empty((0, *x.shape[k:]), dtype=x.dtype, device=x.device)
    if func in (aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default):
        empty = torch.empty(0, dtype=x.dtype, device=x.device)
        long = torch.empty(0, dtype=torch.long, device=x.device)
        return empty, long, long
    return torch.empty(0, dtype=x.dtype, device=x.device)


class SyncAudit:
    """Context manager recording transfers and syncs of work on ``AUDIT_DEVICE`` (see module docstring)."""

    def __init__(self):
        self.events: list[SyncEvent] = []
        self._modes = [_FunctionLevel(self), _DispatchLevel(self)]

    def __enter__(self) -> "SyncAudit":
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def record(self, kind: str, what: str) -> None:
        self.events.append(SyncEvent(kind, what, _where()))

    def counts(self) -> Counter:
        """{kind: number of events}."""
        return Counter(e.kind for e in self.events)

    def stalls(self) -> list[SyncEvent]:
        """Events that stall the device stream (d2h, sync, h2d_blocking)."""
        return [e for e in self.events if e.kind in STALLS]

    def check(self, what: str, max_async_copies: int | None = None) -> None:
        """Raise SslAugError naming every stalling line (and too many non-blocking copies), else return."""
        problems = [f"{e.kind} {e.what} at {e.where}" for e in self.stalls()]
        copies = self.counts()["h2d_async"]
        if max_async_copies is not None and copies > max_async_copies:
            lines = sorted({e.where for e in self.events if e.kind == "h2d_async"})
            problems.append(f"{copies} non-blocking host->device copies (allowed {max_async_copies}) at "
                            f"{', '.join(lines)}")
        if problems:
            raise SslAugError(f"{what}: {len(problems)} host<->device stall(s): " + "; ".join(problems))
