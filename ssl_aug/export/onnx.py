"""ONNX export of an encoder core (optional extra ``onnx``: onnx + onnxscript; check with onnxruntime).

`onnx_bytes(module, size)`: the ONNX model of `module` (float [0, 1] images (N, 3, size, size) ->
features (N, D), input name ``images``, output ``features``, batch size dynamic), from torch's
``torch.export``-based exporter (``torch.onnx.export(..., dynamo=True)``).
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ssl_aug.errors import SslAugError

__all__ = ["onnx_bytes", "ONNX_FILE"]

ONNX_FILE = "encoder.onnx"


def onnx_bytes(module: nn.Module, size: int | None) -> bytes:
    """ONNX bytes of `module` in eval mode (one file, weights inside); SslAugError if onnx is missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise SslAugError("ONNX export needs onnx and onnxscript: pip install 'ssl_aug[onnx]' "
                          "(or export without --onnx)") from None
    size = size or 32
    example = torch.rand(2, 3, size, size, device=next(module.buffers()).device)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's progress notes; failures still raise
        path = Path(tmp) / ONNX_FILE
        program = torch.onnx.export(module.eval(), (example,), input_names=["images"], output_names=["features"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                    verbose=False)
        program.save(str(path), external_data=False)
        return path.read_bytes()
