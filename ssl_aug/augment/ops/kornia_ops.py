"""Any kornia.augmentation 2-D op in a view. Recipe form (flat view field `kornia`, a list of tables, applied
in list order after the built-in ops, before normalisation):

    [augment]
    kornia = [{op = "RandomErasing", p = 0.5}, {op = "RandomPerspective", distortion_scale = 0.3, p = 0.5}]

`op` names a class of kornia.augmentation (an AugmentationBase2D that keeps the image size); the other
keys are its constructor arguments. Parameters are drawn per image on the CPU with the op's own
`forward_parameters` under a seed taken from the view's generator, stored in ViewParams as
`kornia{i}.{key}` ((N, ...) tensors; keys shared by the batch are stored repeated and end in "@"), and
replayed with `op(x, params=...)` on the images' device, so `MultiView.apply` reproduces a call exactly.
Kornia's own apply selects the gated images by index, which reads a mask back to the host on a GPU:
views with kornia ops (and the per-image policies, grouped on the host) are not sync-free.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from ssl_aug.augment.ops.base import Op
from ssl_aug.errors import SslAugError

_PER_SAMPLE: dict = {}


def _signature(cls) -> str:
    try:
        return f"{cls.__name__}{inspect.signature(cls)}"
    except (TypeError, ValueError):
        return cls.__name__


def build_kornia_op(entry) -> torch.nn.Module:
    """{op = "Name", **kwargs} -> the kornia module; one-line SslAugError naming the op and its signature."""
    import kornia.augmentation as K
    if not isinstance(entry, dict) or not isinstance(entry.get("op"), str):
        raise SslAugError(f"view spec: kornia entry {entry!r} is not allowed; use a table like "
                          f'{{op = "RandomErasing", p = 0.5}}')
    name = entry["op"]
    kwargs = {k: _tuples(v) for k, v in entry.items() if k != "op"}  # kornia's hints ask for tuples
    cls = getattr(K, name, None)
    if not (inspect.isclass(cls) and issubclass(cls, K.AugmentationBase2D)):
        allowed = sorted(n for n in dir(K) if inspect.isclass(getattr(K, n)) and issubclass(getattr(K, n), K.AugmentationBase2D)
                         and not n.endswith("Base2D"))
        raise SslAugError(f"view spec: kornia op {name!r} is not allowed; use a kornia.augmentation 2-D op: "
                          f"{', '.join(allowed)}")
    try:
        inspect.signature(cls).bind(**kwargs)
        for k in ("p", "p_batch"):  # kornia does not check its probabilities
            v = kwargs.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{k}={v!r} is not a probability in [0, 1]")
        return cls(**kwargs)
    except Exception as e:  # noqa: BLE001 - any constructor complaint becomes one line
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SslAugError(f"view spec: kornia op {name} with {kwargs} is not allowed ({msg}); "
                          f"signature: {_signature(cls)}") from None


def per_sample_keys(key, generate: Callable[[torch.Size], dict], shape: tuple) -> set:
    """Which parameter keys have one row per image: generated once at batch 2 and 3 (RNG forked)."""
    if key not in _PER_SAMPLE:
        with torch.random.fork_rng(devices=[]):
            a, b = generate(torch.Size((2, *shape[1:]))), generate(torch.Size((3, *shape[1:])))
        _PER_SAMPLE[key] = {k for k in a if torch.is_tensor(a[k]) and a[k].ndim and a[k].shape[0] == 2
                            and b[k].shape[0] == 3}
    return _PER_SAMPLE[key]


def capture(prefix: str, generate: Callable[[torch.Size], dict], shape: tuple, seed: int, cache_key) -> dict:
    """Kornia parameters of a batch of `shape` drawn under `seed` -> flat {prefix.key: (N, ...)}."""
    n = shape[0]
    rows = per_sample_keys(cache_key, generate, shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = generate(torch.Size(shape))
    out = {}
    for k, v in params.items():
        if k == "forward_input_shape":
            continue  # rebuilt from the input at apply time
        if not torch.is_tensor(v):
            try:
                v = torch.as_tensor(v)
            except (TypeError, ValueError, RuntimeError):
                raise SslAugError(f"kornia parameter {prefix}.{k} of type {type(v).__name__} cannot be captured for "
                                  f"replay; use an op whose parameters are tensors") from None
        if k in rows:
            out[f"{prefix}.{k}"] = v
        else:
            out[f"{prefix}.{k}@"] = v.unsqueeze(0).expand(n, *v.shape).clone()
    return out


def unpack(prefix: str, p, rows=None, shape=None) -> dict:
    """The kornia params dict of `prefix` from ViewParams p (optionally only `rows`)."""
    out = {}
    for k, v in p.as_dict().items():
        if k.startswith(prefix + "."):
            name = k[len(prefix) + 1:]
            if rows is not None:
                v = v[rows]
            out[name.rstrip("@")] = v[0] if name.endswith("@") else v
    if shape is not None:
        out["forward_input_shape"] = torch.tensor(list(shape))
    return out


def _tuples(v):
    return tuple(_tuples(a) for a in v) if isinstance(v, (list, tuple)) else v


def _lists(v):
    if isinstance(v, dict):
        return {k: _lists(a) for k, a in v.items()}
    return [_lists(a) for a in v] if isinstance(v, (list, tuple)) else v


@dataclass
class KorniaOps:
    """`kornia`: list of {op = "<kornia.augmentation class>", **its arguments}."""
    kornia: tuple = ()

    def __post_init__(self):
        if not isinstance(self.kornia, (list, tuple)):
            raise SslAugError(f"view spec: kornia={self.kornia!r} is not allowed; use a list of tables like "
                              f'[{{op = "RandomErasing", p = 0.5}}]')
        self.kornia = tuple(_lists(e) for e in self.kornia)  # TOML form: tuples as lists, so specs compare equal
        self.modules = [build_kornia_op(e) for e in self.kornia]


class KorniaOp(Op):
    name, config, stage, nested = "kornia", KorniaOps, 60, False

    def active(self, cfg) -> bool:
        return bool(cfg.kornia)

    def sample(self, cfg, n, size, height, width, g):
        out = {}
        for i, mod in enumerate(cfg.modules):
            seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
            out.update(capture(f"kornia{i}", mod.forward_parameters, (n, 3, size, size), seed, (repr(mod), size)))
        return out

    def apply(self, x, cfg, p, ctx):
        for i, mod in enumerate(cfg.modules):
            params = {k: (v if k == "forward_input_shape" else v.to(x.device, non_blocking=True))
                      for k, v in unpack(f"kornia{i}", p, shape=x.shape).items()}
            y = mod(x, params=params)
            if y.shape != x.shape:
                raise SslAugError(f"view spec: kornia op {type(mod).__name__} changed the view shape "
                                  f"{tuple(x.shape)} -> {tuple(y.shape)}; use ops that keep the size")
            x = y.clamp_(0.0, 1.0)
        return x

    def probe(self) -> dict:
        raise SslAugError("op 'kornia' is probed by naming a kornia.augmentation class, e.g. 'RandomErasing'")

    def off(self) -> dict:
        return {"kornia": []}
