"""Export trained encoders in torchvision format and load them back anywhere.

`export_encoder(run_or_checkpoint, out_dir)` writes into `out_dir`:

- ``backbone.pt``  the backbone's state_dict. ResNets use torchvision's key layout:
  ``torchvision.models.resnet18(num_classes=...)`` loads it with strict=True apart from ``fc``.
  ``cifar_*`` ResNets change the stem first: ``m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)``
  and ``m.maxpool = nn.Identity()``. Set ``m.fc = nn.Identity()`` to get the features.
- ``encoder.ts``   TorchScript of preprocessing + backbone: uint8 [0, 255] or float [0, 1] images
  (N, 3, H, W) -> features (N, D). Loads with plain ``torch.jit.load``, no ssl_aug needed.
- ``head.pt``      with ``with_head=True``: the projector / prototypes state_dict ("projector.*",
  "prototypes.*").
- ``encoder.json`` metadata (architecture, stem, input size, mean/std, feature dim, recipe, data set,
  epoch, eval results, versions, sha256 of every weight file). Written last: an export directory
  with encoder.json is complete. Every file is written to a temp name and renamed into place.

`load_encoder(path)` checks the sha256, reads backbone.pt with ``torch.load(weights_only=True)``
and returns an eval-mode `Encoder` (uint8/float images -> features) carrying the metadata.
`encoder_from_checkpoint(path)` rebuilds the backbone of a training checkpoint for evaluation.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import os
import pickle
import platform
import secrets
import warnings
from pathlib import Path

import torch
from torch import nn

from ssl_aug import __version__
from ssl_aug.checkpoint import latest_checkpoint, load_checkpoint
from ssl_aug.errors import SslAugError, one_line_parser

FORMAT = "ssl_aug.encoder"
FORMAT_VERSION = 1
METADATA = "encoder.json"
BACKBONE_FILE = "backbone.pt"
SCRIPT_FILE = "encoder.ts"
HEAD_FILE = "head.pt"
CIFAR_STEM = "conv1 = Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); maxpool = Identity()"
TORCHVISION_STEM = ("torchvision default: conv1 = Conv2d(3, 64, kernel_size=7, stride=2, padding=3, "
                    "bias=False); maxpool = MaxPool2d(3, 2, 1)")
MIN_TORCH = (1, 13)  # first release with torch.load(weights_only=True)


class Encoder(nn.Module):
    """Preprocessing + backbone: images (N, 3, H, W) uint8 [0, 255] or float [0, 1] -> (N, D) features.

    Attributes: `mean`, `std` (tuples of 3 floats), `feature_dim`, `metadata` (dict; empty when scripted).
    """

    def __init__(self, backbone: nn.Module, mean, std, feature_dim: int, metadata: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.feature_dim = int(feature_dim)
        self.metadata = dict(metadata or {})
        self.register_buffer("norm_mean", torch.tensor(self.mean).view(1, 3, 1, 1))
        self.register_buffer("norm_std", torch.tensor(self.std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.size(1) != 3:
            raise SslAugError("encoder input must be images (N, 3, H, W), got shape "
                              + str(list(images.shape)))
        if images.dtype == torch.uint8:
            x = images.to(self.norm_mean.dtype) / 255.0
        elif images.is_floating_point():
            x = images.to(self.norm_mean.dtype)
        else:
            raise SslAugError("encoder input must be uint8 [0, 255] or float [0, 1] images, "
                              "got an integer dtype")
        return self.backbone((x - self.norm_mean) / self.norm_std)


# ----------------------------------------------------------------------------------------- helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    """Write bytes to a temp file next to `path`, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 honours the umask (tempfile.mkstemp would leave the export owner-only)
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise SslAugError(f"could not write {path}: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


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


def _check_torch_version() -> None:
    parts = torch.__version__.split("+")[0].split(".")
    version = tuple(int(p) if p.isdigit() else 0 for p in parts[:2])
    if version < MIN_TORCH or "weights_only" not in inspect.signature(torch.load).parameters:
        raise SslAugError(f"torch {torch.__version__} is too old to load weights safely; need torch >= "
                          f"{MIN_TORCH[0]}.{MIN_TORCH[1]} (torch.load(weights_only=True))")


def _first_mismatches(expected: dict, got: dict, limit: int = 3) -> str:
    """Describe the first differing keys/shapes between two state_dicts (for one-line errors)."""
    missing = [k for k in expected if k not in got][:limit]
    unexpected = [k for k in got if k not in expected][:limit]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in got and tuple(got[k].shape) != tuple(v.shape)][:limit]
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if unexpected:
        parts.append("unexpected " + ", ".join(unexpected))
    if shapes:
        parts.append("shape " + ", ".join(shapes))
    return "; ".join(parts)


# --------------------------------------------------------------------------- architectures
def _torchvision_name(arch: str) -> str | None:
    """torchvision constructor name for ResNet backbones ('cifar_resnet18' -> 'resnet18'), else None."""
    name = arch[len("cifar_"):] if arch.startswith("cifar_") else arch
    return name if name.startswith("resnet") and name[len("resnet"):].isdigit() else None


def _stem(arch: str) -> str:
    if _torchvision_name(arch) is None:
        return "ssl_aug"
    return CIFAR_STEM if arch.startswith("cifar_") else TORCHVISION_STEM


def torchvision_backbone(arch: str) -> nn.Module:
    """The documented torchvision module for a ResNet backbone name, fc = Identity (features out).

    cifar_* names get the CIFAR stem: 3x3 stride-1 conv1 without bias, no max-pool.
    """
    import torchvision

    name = _torchvision_name(arch)
    if name is None or not hasattr(torchvision.models, name):
        raise SslAugError(f"backbone {arch!r} has no torchvision equivalent; torchvision layouts exist for "
                          "resnet18, resnet34, resnet50, ... and their cifar_ variants")
    model = getattr(torchvision.models, name)(weights=None)
    if arch.startswith("cifar_"):
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    model.feature_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model


def _build_backbone(arch: str, args: dict) -> nn.Module:
    from ssl_aug.models import build_backbone

    return build_backbone(arch, **args)


def _load_strict(module: nn.Module, state: dict, what: str) -> nn.Module:
    """module.load_state_dict(state, strict=True), with a one-line error naming the first mismatches."""
    expected = module.state_dict()
    if state.keys() != expected.keys() or any(state[k].shape != v.shape for k, v in expected.items()):
        raise SslAugError(f"{what} (architecture mismatch: {_first_mismatches(expected, state)})")
    module.load_state_dict(state, strict=True)
    return module


# ------------------------------------------------------------------------------ checkpoints
def _resolve_checkpoint(run_or_checkpoint) -> tuple[Path, Path | None]:
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


def _backbone_spec(config: dict) -> tuple[str, dict]:
    model = config.get("model") if isinstance(config, dict) else None
    if not isinstance(model, dict) or not isinstance(model.get("backbone"), str):
        raise SslAugError("checkpoint config has no model.backbone; it is not an ssl_aug training checkpoint")
    return model["backbone"], dict(model.get("backbone_args") or {})


def _load_backbone(arch: str, args: dict, state: dict, source) -> nn.Module:
    """build_backbone(arch, **args) with `state` loaded strictly; one-line error on any mismatch."""
    return _load_strict(_build_backbone(arch, args), state, f"{source} does not hold a {arch!r} backbone")


def _read_checkpoint(path: Path, device) -> dict:
    _check_torch_version()
    ckpt = load_checkpoint(path, map_location=device)
    if not isinstance(ckpt.get("model"), dict):
        raise SslAugError(f"checkpoint {path} has no 'model' state_dict")
    return ckpt


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
    with config["augment"]["mean"/"std"] first.
    """
    ckpt_path, _ = _resolve_checkpoint(path)
    ckpt = _read_checkpoint(ckpt_path, device)
    config = ckpt.get("config") or {}
    arch, args = _backbone_spec(config)
    state, _ = _split_model_state(ckpt["model"], _method_name(config))
    backbone = _load_backbone(arch, args, state, f"checkpoint {ckpt_path}")
    return backbone.to(device).eval(), config


def _view_spec(config: dict):
    """The recipe's [augment] ViewSpec (defaults for keys it leaves out), built as the trainer does."""
    from ssl_aug.augment import ViewSpec
    from ssl_aug.config import AUGMENT_EXTRA_KEYS

    augment = config.get("augment") or {}
    return ViewSpec.from_dict({k: v for k, v in augment.items() if k not in AUGMENT_EXTRA_KEYS})


def _eval_results(ckpt: dict, run_dir: Path | None) -> dict:
    """Known results: run_dir/eval.json (when it evaluated this checkpoint's step), the last epoch record
    and the kNN-monitor records of the checkpoint's history."""
    results = {}
    eval_file = run_dir / "eval.json" if run_dir is not None else None
    if eval_file is not None and eval_file.is_file():
        try:
            evaluation = json.loads(eval_file.read_text())
        except json.JSONDecodeError as exc:
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


def _script(encoder: Encoder, input_size: int | None) -> bytes:
    """TorchScript bytes of `encoder`; backbones that cannot be scripted are traced (features only)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated in torch >= 2.9
        try:
            scripted = torch.jit.script(encoder)
        except Exception:  # noqa: BLE001 - any TorchScript front-end failure: trace the backbone instead
            size = input_size or 32
            example = torch.rand(2, 3, size, size, device=encoder.norm_mean.device)
            traced = torch.jit.trace(encoder.backbone, example)
            scripted = torch.jit.script(Encoder(traced, encoder.mean, encoder.std, encoder.feature_dim))
        buf = io.BytesIO()
        torch.jit.save(scripted, buf)
    return buf.getvalue()


# ----------------------------------------------------------------------------------- export
def export_encoder(run_or_checkpoint, out_dir, with_head: bool = False) -> Path:
    """Write backbone.pt, encoder.ts, encoder.json (and head.pt) for a run dir or checkpoint.

    Returns `out_dir` as a Path. See the module docstring for the file formats.
    """
    import torchvision

    ckpt_path, run_dir = _resolve_checkpoint(run_or_checkpoint)
    ckpt = _read_checkpoint(ckpt_path, "cpu")
    config = ckpt.get("config") or {}
    arch, args = _backbone_spec(config)
    state, head = _split_model_state(ckpt["model"], _method_name(config))
    backbone = _load_backbone(arch, args, state, f"checkpoint {ckpt_path}").eval()
    spec = _view_spec(config)
    mean, std, size = list(spec.mean), list(spec.std), spec.size
    feature_dim = int(getattr(backbone, "feature_dim"))
    if with_head and not head:
        raise SslAugError(f"checkpoint {ckpt_path} has no projector/prototypes weights to export; "
                          "drop --with-head")

    exported = backbone.state_dict()
    if _torchvision_name(arch) is not None:  # the promise: torchvision's module loads it strictly (fc aside)
        _load_strict(torchvision_backbone(arch), exported,
                     f"backbone {arch!r} does not match torchvision's {_torchvision_name(arch)} layout")
    files = {BACKBONE_FILE: _torch_bytes(exported),
             SCRIPT_FILE: _script(Encoder(backbone, mean, std, feature_dim), size)}
    if with_head:
        files[HEAD_FILE] = _torch_bytes(head)

    tv_name = _torchvision_name(arch)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": arch,
        "backbone_args": _jsonable(args),
        "stem": _stem(arch),
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
        "files": {name: {"sha256": _sha256(data), "bytes": len(data)} for name, data in files.items()},
    }
    if with_head:
        metadata["head_keys"] = sorted({k.split(".", 1)[0] for k in head})

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / METADATA).unlink(missing_ok=True)  # a half-replaced directory must not look complete
    for name, data in files.items():
        _atomic_write(out / name, data)
    if not with_head:
        (out / HEAD_FILE).unlink(missing_ok=True)
    _atomic_write(out / METADATA, (json.dumps(metadata, indent=2) + "\n").encode())
    return out


# ------------------------------------------------------------------------------------- load
def read_metadata(path) -> tuple[Path, dict]:
    """(export directory, encoder.json contents) for an export directory or a file inside it."""
    path = Path(path)
    if not path.exists():
        raise SslAugError(f"{path} does not exist; give a directory written by `ssl-aug export`")
    folder = path.parent if path.is_file() else path
    meta_file = folder / METADATA
    if not meta_file.is_file():
        raise SslAugError(f"{folder} has no {METADATA}; give a directory written by `ssl-aug export` "
                          "(export training runs first, or use encoder_from_checkpoint)")
    try:
        metadata = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SslAugError(f"{meta_file} is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise SslAugError(f"{meta_file} is not ssl_aug encoder metadata (expected format '{FORMAT}')")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SslAugError(f"{meta_file} has format_version {version!r}; this ssl_aug reads versions <= "
                          f"{FORMAT_VERSION}: upgrade ssl_aug")
    norm = metadata.get("normalization") or {}
    if not all(isinstance(norm.get(k), list) and len(norm[k]) == 3 for k in ("mean", "std")) \
            or not isinstance(metadata.get("feature_dim"), int):
        raise SslAugError(f"{meta_file} lacks normalization mean/std (3 numbers each) or feature_dim; "
                          "re-export the encoder")
    return folder, metadata


def read_weights(folder: Path, metadata: dict, name: str, device="cpu") -> dict:
    """torch.load(weights_only=True) of an exported file after checking its sha256 against the metadata."""
    _check_torch_version()
    path = folder / name
    expected = ((metadata.get("files") or {}).get(name) or {}).get("sha256")
    if expected is None:
        raise SslAugError(f"{folder / METADATA} lists no sha256 for {name}; re-export the encoder")
    if not path.is_file():
        raise SslAugError(f"weight file {path} is missing (expected sha256 {expected})")
    data = path.read_bytes()
    actual = _sha256(data)
    if actual != expected:
        raise SslAugError(f"weight file {path} was altered: sha256 {actual} != {expected} "
                          f"recorded in {METADATA}")
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else "unpickling error"
        raise SslAugError(f"refused to load {path}: it holds objects other than tensors "
                          f"(torch.load weights_only=True: {reason})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise SslAugError(f"{path} is not a readable torch file ({str(exc).splitlines()[0][:160]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SslAugError(f"{path} is not a state_dict (expected a dict of tensors)")
    return state


def load_encoder(path, device="cpu") -> Encoder:
    """Load an exported encoder (directory or its encoder.json) as an eval-mode `Encoder` on `device`.

    The returned module maps uint8 [0, 255] or float [0, 1] images (N, 3, H, W) to (N, feature_dim)
    features, normalising with the exported mean/std. ResNets are rebuilt from torchvision directly.
    """
    folder, metadata = read_metadata(path)
    state = read_weights(folder, metadata, BACKBONE_FILE, device)
    arch = metadata.get("architecture")
    if not isinstance(arch, str):
        raise SslAugError(f"{folder / METADATA} has no architecture name; re-export the encoder")
    if _torchvision_name(arch) is not None:
        backbone = _load_strict(torchvision_backbone(arch), state,
                                f"{folder / BACKBONE_FILE} does not hold a {arch!r} backbone")
    else:
        args = dict(metadata.get("backbone_args") or {})
        backbone = _load_backbone(arch, args, state, folder / BACKBONE_FILE)
    norm = metadata.get("normalization") or {}
    encoder = Encoder(backbone, norm.get("mean"), norm.get("std"), metadata.get("feature_dim"), metadata)
    return encoder.to(device).eval()


def load_head(path, device="cpu") -> dict:
    """The exported projector/prototypes state_dict ("projector.*", "prototypes.*"), sha256-checked."""
    folder, metadata = read_metadata(path)
    if HEAD_FILE not in (metadata.get("files") or {}):
        raise SslAugError(f"{folder} has no {HEAD_FILE}; export with --with-head")
    return read_weights(folder, metadata, HEAD_FILE, device)


# -------------------------------------------------------------------------------------- CLI
def export_main(argv=None) -> int:
    """`ssl-aug export RUN_OR_CHECKPOINT --out DIR [--with-head]`; SslAugError propagates to the CLI."""
    parser = one_line_parser(prog="ssl-aug export",
                             description="Export a trained encoder (torchvision state_dict, "
                                         "TorchScript, encoder.json metadata).")
    parser.add_argument("run_or_checkpoint", metavar="RUN_OR_CHECKPOINT",
                        help="run directory (uses checkpoints/last.pt) or checkpoint file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
    parser.add_argument("--with-head", action="store_true", help="also write head.pt (projector, prototypes)")
    args = parser.parse_args(argv)
    out = export_encoder(args.run_or_checkpoint, args.out, with_head=args.with_head)
    meta = json.loads((out / METADATA).read_text())
    names = ", ".join(meta["files"]) + ", " + METADATA
    print(f"exported {meta['architecture']} ({meta['feature_dim']}-d features, epoch {meta['epoch']}) "
          f"to {out}: {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(export_main())
