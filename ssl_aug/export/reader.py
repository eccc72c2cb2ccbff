"""Read an export directory back: metadata, sha256-checked weights, the eval-mode `Encoder`.

`load_encoder(path)` checks the sha256 of model.safetensors against encoder.json, reads it (no pickle)
and returns an eval-mode `Encoder` (PIL images, uint8 / float [0, 1] tensors (N, 3, H, W) -> (N, D)
features) carrying the metadata. `load_head(path)` returns the head's state_dict. Exports of format
version 1 (backbone.pt, head.pt read with ``torch.load(weights_only=True)``) still load.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import json
import pickle
from pathlib import Path

import torch

from ssl_aug.errors import SslAugError
from ssl_aug.export.encoder import Encoder, build_and_load, load_strict, torchvision_backbone, torchvision_name

__all__ = ["read_metadata", "read_weights", "load_encoder", "load_head", "check_torch_version",
           "FORMAT", "FORMAT_VERSION", "METADATA", "WEIGHTS_FILE", "BACKBONE_FILE", "PROGRAM_FILE",
           "HEAD_FILE", "OLD_FILES"]

FORMAT = "ssl_aug.encoder"
FORMAT_VERSION = 2
METADATA = "encoder.json"
WEIGHTS_FILE = "model.safetensors"
BACKBONE_FILE = "backbone.pt"  # torchvision ResNet layout (ResNets only); every backbone in version 1
PROGRAM_FILE = "encoder.pt2"
HEAD_FILE = "head.safetensors"
OLD_FILES = ("encoder.ts", "head.pt")  # written by format version 1
MIN_TORCH = (1, 13)  # first release with torch.load(weights_only=True)


def check_torch_version() -> None:
    """Refuse (one line) a torch too old for ``torch.load(weights_only=True)``."""
    parts = torch.__version__.split("+")[0].split(".")
    version = tuple(int(p) if p.isdigit() else 0 for p in parts[:2])
    if version < MIN_TORCH or "weights_only" not in inspect.signature(torch.load).parameters:
        raise SslAugError(f"torch {torch.__version__} is too old to load weights safely; need torch >= "
                          f"{MIN_TORCH[0]}.{MIN_TORCH[1]} (torch.load(weights_only=True))")


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
    """The state_dict in an exported file (safetensors, or torch.load(weights_only=True) for .pt files)
    after checking its sha256 against the metadata."""
    path = folder / name
    expected = ((metadata.get("files") or {}).get(name) or {}).get("sha256")
    if expected is None:
        raise SslAugError(f"{folder / METADATA} lists no sha256 for {name}; re-export the encoder")
    if not path.is_file():
        raise SslAugError(f"weight file {path} is missing (expected sha256 {expected})")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != expected:
        raise SslAugError(f"weight file {path} was altered: sha256 {actual} != {expected} "
                          f"recorded in {METADATA}")
    if name.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load as load_safetensors

        try:
            return {k: v.to(device) for k, v in load_safetensors(data).items()}
        except (SafetensorError, ValueError) as exc:
            raise SslAugError(f"{path} is not a readable safetensors file ({str(exc)[:160]})") from None
    check_torch_version()
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
    features, normalising with the exported mean/std; other float ranges are refused. ResNets are
    rebuilt from torchvision directly.
    """
    folder, metadata = read_metadata(path)
    weights = WEIGHTS_FILE if WEIGHTS_FILE in (metadata.get("files") or {}) else BACKBONE_FILE
    state = read_weights(folder, metadata, weights, device)
    arch = metadata.get("architecture")
    if not isinstance(arch, str):
        raise SslAugError(f"{folder / METADATA} has no architecture name; re-export the encoder")
    if torchvision_name(arch) is not None:
        backbone = load_strict(torchvision_backbone(arch), state,
                               f"{folder / weights} does not hold a {arch!r} backbone")
    else:
        args = dict(metadata.get("backbone_args") or {})
        backbone = build_and_load(arch, args, state, folder / weights)
    norm = metadata.get("normalization") or {}
    encoder = Encoder(backbone, norm.get("mean"), norm.get("std"), metadata.get("feature_dim"), metadata)
    return encoder.to(device).eval()


def load_head(path, device="cpu") -> dict:
    """The exported head state_dict ("projector.*", "prototypes.*", ...), sha256-checked."""
    folder, metadata = read_metadata(path)
    files = metadata.get("files") or {}
    name = next((n for n in (HEAD_FILE, "head.pt") if n in files), None)
    if name is None:
        raise SslAugError(f"{folder} has no {HEAD_FILE}; export with --with-head")
    return read_weights(folder, metadata, name, device)
