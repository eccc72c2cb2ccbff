"""Write an export directory from a training run or checkpoint.

`export_encoder(run_or_checkpoint, out_dir, with_head=False, onnx=False)` writes into `out_dir`:

- ``model.safetensors``  the backbone's state_dict in safetensors (no pickle): the default weights.
- ``model.py`` + ``config.json``  a plain module definition and its configuration: ``import model;
  model.load()`` gives the encoder without ssl_aug (torch + safetensors; torchvision for ResNets, timm
  for timm backbones). For ``timm:`` backbones config.json is also timm's model config:
  ``timm.create_model("local-dir:EXPORT", pretrained=True)`` loads the weights through timm.
- ``backbone.pt``  ResNets only: the state_dict in torchvision's key layout;
  ``torchvision.models.resnet18()`` loads it with strict=True apart from ``fc``. ``cifar_*`` ResNets
  change the stem first: ``m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)``, ``m.maxpool = nn.Identity()``.
- ``encoder.pt2``  torch.export program of normalisation + backbone: float [0, 1] images
  (N, 3, H, W) -> features (N, D); ``torch.export.load(path).module()``, no ssl_aug needed.
- ``encoder.onnx``  with ``onnx=True``: the same computation in ONNX (input ``images``, output
  ``features``, dynamic batch), for onnxruntime and other runtimes.
- ``head.safetensors``  with ``with_head=True``: the method's head modules (``Method.heads``:
  projector, prototypes, predictor, ...).
- ``encoder.json``  metadata (architecture, stem, input size, mean/std, feature dim, recipe, data set,
  epoch, eval results, versions, sha256 of every file). Written last: an export directory with
  encoder.json is complete. Every file is written atomically (ssl_aug.io).

What is exported is read from the method's contract (``METHODS[name].state_prefixes()``), never from
its name. Checkpoints are read onto the CPU and everything but the model weights, config and history
(optimizer, scaler, RNG state) is dropped at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
from pathlib import Path

import torch
from torch import nn

from ssl_aug._version import __version__
from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint
from ssl_aug.errors import SslAugError
from ssl_aug.export.encoder import (CIFAR_STEM, Normalized, build_and_load, export_program, load_strict, stem,
                                    torchvision_backbone, torchvision_name)
from ssl_aug.export.reader import (BACKBONE_FILE, FORMAT, FORMAT_VERSION, HEAD_FILE, METADATA, OLD_FILES,
                                   PROGRAM_FILE)
from ssl_aug.export.standalone import CONFIG_FILE, MODEL_FILE, MODEL_PY, WEIGHTS_FILE, standalone_config
from ssl_aug.io import atomic_write_bytes, atomic_write_json
from ssl_aug.models import backbone_args_for

__all__ = ["export_encoder", "encoder_from_checkpoint", "resolve_checkpoint", "read_training_checkpoint"]

KEEP_KEYS = ("format", "version", "config", "model", "step", "epoch", "metrics")  # what export needs


def _jsonable(value):
    """Tensors, numpy values, paths and tuples -> plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _safetensors_bytes(state: dict) -> bytes:
    """A state_dict as safetensors bytes (tensors copied: shared storage is not allowed there)."""
    from safetensors.torch import save

    return save({k: v.detach().cpu().clone().contiguous() for k, v in state.items()})


def resolve_checkpoint(run_or_checkpoint) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None) for a run dir or a checkpoint path."""
    path = Path(run_or_checkpoint)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise SslAugError(f"run directory {path} has no checkpoints/last.pt or checkpoints/step_*.pt; "
                              "give a run directory or a checkpoint file")
        return ckpt, path
    if not path.is_file():
        raise SslAugError(f"{path} does not exist; give a run directory or a checkpoint file")
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else None
    return path, run_dir


def read_training_checkpoint(path: Path) -> dict:
    """The parts of a training checkpoint export needs, loaded on the CPU (never onto a GPU)."""
    from ssl_aug.export.reader import check_torch_version

    check_torch_version()
    ckpt = load_checkpoint(path, map_location="cpu")
    if not isinstance(ckpt.get("model"), dict):
        raise SslAugError(f"checkpoint {path} has no 'model' state_dict")
    return {k: ckpt[k] for k in KEEP_KEYS if k in ckpt}  # optimizer, scaler, RNG state: dropped


def _backbone_spec(config: dict) -> tuple[str, dict]:
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("backbone"), str):
        raise SslAugError("checkpoint config has no model.backbone; it is not an ssl_aug training checkpoint")
    return model["backbone"], backbone_args_for(model["backbone"], dict(model.get("backbone_args") or {}))


def _method_name(config: dict) -> str:
    """The method a checkpoint was trained with (recipes before the registry default to simclr)."""
    method = config.get("method") or {}
    return method.get("name", "simclr") if isinstance(method, dict) else "simclr"


def _split_model_state(model_state: dict, method_name: str) -> tuple[dict, dict]:
    """method.state_dict() -> (exported encoder state without its prefix, head state), as the method
    declares them (target networks, queues and other training state are left out)."""
    from ssl_aug.methods import METHODS

    if method_name not in METHODS:
        raise SslAugError(f"checkpoint method {method_name!r} is unknown: use one of {', '.join(sorted(METHODS))}")
    encoder_prefix, head_prefixes = METHODS[method_name].state_prefixes()
    backbone = {k[len(encoder_prefix):]: v for k, v in model_state.items() if k.startswith(encoder_prefix)}
    head = {k: v for k, v in model_state.items() if k.startswith(head_prefixes)}
    return backbone, head


def encoder_from_checkpoint(path, device="cpu") -> tuple[nn.Module, dict]:
    """Backbone (eval mode, on `device`) and recipe config of a run directory or checkpoint file.

    The backbone maps normalised float images (N, 3, H, W) to (N, feature_dim) features; normalise
    with config["augment"]["mean"/"std"] first. The checkpoint is read on the CPU; only the backbone
    moves to `device`.
    """
    ckpt_path, _ = resolve_checkpoint(path)
    ckpt = read_training_checkpoint(ckpt_path)
    config = ckpt.get("config") or {}
    arch, args = _backbone_spec(config)
    state, _ = _split_model_state(ckpt["model"], _method_name(config))
    backbone = build_and_load(arch, args, state, f"checkpoint {ckpt_path}")
    return backbone.to(device).eval(), config


def _view_spec(config: dict):
    """The recipe's first [augment] view family (defaults for keys it leaves out), built as the trainer does."""
    from ssl_aug.augment.recipe import view_specs

    return view_specs(config.get("augment") or {})[0][0]


def _eval_results(ckpt: dict, run_dir: Path | None) -> dict:
    """Known results: run_dir/eval.json (when it evaluated this checkpoint's step), the last epoch record
    and the kNN-monitor records of the checkpoint's history."""
    results = {}
    eval_file = run_dir / "eval.json" if run_dir is not None else None
    if eval_file is not None and eval_file.is_file():
        try:
            evaluation = json.loads(eval_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise SslAugError(f"{eval_file} is not valid JSON ({exc}); fix or remove it") from None
        if not isinstance(evaluation, dict) or evaluation.get("steps", ckpt.get("step")) == ckpt.get("step"):
            results["eval"] = evaluation  # an eval.json of a later step does not describe this checkpoint
    metrics = ckpt.get("metrics")
    if isinstance(metrics, dict) and metrics:
        results["checkpoint_metrics"] = _jsonable(metrics)
    elif isinstance(metrics, list) and metrics:  # the trainer's history: one record per epoch
        results["last_epoch"] = _jsonable(metrics[-1])
        monitor = [_jsonable(r) for r in metrics
                   if isinstance(r, dict) and any(str(k).startswith("knn") for k in r)]
        if monitor:
            results["knn_monitor"] = monitor
    return results


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SslAugError(f"export output {out} is a file, not a folder; give a folder path (--out DIR)")


def export_encoder(run_or_checkpoint, out_dir, with_head: bool = False, onnx: bool = False) -> Path:
    """Write model.safetensors, model.py, config.json, encoder.pt2, encoder.json (backbone.pt for ResNets,
    head.safetensors with `with_head`, encoder.onnx with `onnx`) for a run dir or checkpoint.

    Returns `out_dir` as a Path. See the module docstring for the file formats.
    """
    import torchvision

    out = Path(out_dir)
    _check_out_dir(out)
    ckpt_path, run_dir = resolve_checkpoint(run_or_checkpoint)
    ckpt = read_training_checkpoint(ckpt_path)
    config = ckpt.get("config") or {}
    arch, args = _backbone_spec(config)
    state, head = _split_model_state(ckpt["model"], _method_name(config))
    backbone = build_and_load(arch, args, state, f"checkpoint {ckpt_path}").eval()
    spec = _view_spec(config)
    mean, std, size = list(spec.mean), list(spec.std), spec.size
    feature_dim = int(getattr(backbone, "feature_dim"))
    if with_head and not head:
        raise SslAugError(f"checkpoint {ckpt_path} has no head weights (projector, prototypes, ...) to export; "
                          "drop --with-head")

    exported = backbone.state_dict()
    tv_name = torchvision_name(arch)
    core = Normalized(backbone, mean, std).eval()
    files = {WEIGHTS_FILE: _safetensors_bytes(exported), MODEL_FILE: MODEL_PY.encode(),
             CONFIG_FILE: json.dumps(standalone_config(arch, args, mean, std, size, feature_dim), indent=2).encode(),
             PROGRAM_FILE: export_program(core, size)}
    if tv_name is not None:  # the promise: torchvision's module loads it strictly (fc aside)
        load_strict(torchvision_backbone(arch), exported,
                    f"backbone {arch!r} does not match torchvision's {tv_name} layout")
        files[BACKBONE_FILE] = _torch_bytes(exported)
    if onnx:
        from ssl_aug.export.onnx import ONNX_FILE, onnx_bytes

        files[ONNX_FILE] = onnx_bytes(core, size)
    if with_head:
        files[HEAD_FILE] = _safetensors_bytes(head)

    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "backbone_args": _jsonable(args),
        "stem": stem(arch),
        "torchvision": None if tv_name is None else {
            "constructor": f"torchvision.models.{tv_name}(num_classes=...)",
            "stem_change": CIFAR_STEM if arch.startswith("cifar_") else None,
            "excluded_keys": ["fc.weight", "fc.bias"],
            "features": "set model.fc = torch.nn.Identity()",
        },
        "input": {"size": size, "layout": "(N, 3, H, W) RGB",
                  "dtype": "uint8 in [0, 255] or float in [0, 1]"},
        "normalization": {"mean": mean, "std": std},
        "feature_dim": feature_dim,
        "dataset": (config.get("data") or {}).get("name"),
        "epoch": _jsonable(ckpt.get("epoch")),  # completed epochs at the checkpoint
        "step": _jsonable(ckpt.get("step")),
        "eval": _eval_results(ckpt, run_dir),
        "recipe": _jsonable(config),
        "source_checkpoint": ckpt_path.name,
        "versions": {"ssl_aug": __version__, "torch": torch.__version__,
                     "torchvision": torchvision.__version__,
                     "python": platform.python_version()},
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in files.items()},
    }
    if with_head:
        metadata["head_keys"] = sorted({k.split(".", 1)[0] for k in head})

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SslAugError(f"could not create export folder {out}: {exc.strerror or exc}") from None
    (out / METADATA).unlink(missing_ok=True)  # a half-replaced directory must not look complete
    for name, data in files.items():
        atomic_write_bytes(out / name, data)
    for stale in OLD_FILES + ("encoder.onnx", BACKBONE_FILE, HEAD_FILE):  # from an earlier export there
        if stale not in files:
            (out / stale).unlink(missing_ok=True)
    atomic_write_json(out / METADATA, metadata)
    return out
