"""`ViewSpec`: one family of augmented views. Its fields are those of the registered ops (ops/: crop
size/scale/ratio/flip_p, color_jitter table, grayscale_p, blur table, solarize table, auto_augment,
kornia list, and any op registered later) plus the normalisation mean/std; each op's dataclass
validates its own fields. Mapped to and from recipe dicts (`from_dict` / `to_dict`)."""

from __future__ import annotations

import dataclasses

from ssl_aug.augment.ops import AUTO_AUGMENT, OPS, Blur, ColorJitter, Solarize  # noqa: F401 (re-exported)
from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORM_FIELDS = ("mean", "std")


def _norm(name: str, v) -> tuple:
    ok = isinstance(v, (list, tuple)) and len(v) == 3 and all(
        isinstance(a, (int, float)) and not isinstance(a, bool) for a in v)
    if not ok or (name == "std" and min(v) <= 0):
        raise SslAugError(f"view spec: {name}={v!r} is not allowed; use 3 numbers (RGB)"
                          + (", each > 0" if name == "std" else ""))
    return tuple(float(a) for a in v)


def _from_dict(cls, d, prefix: str):
    if not isinstance(d, dict):
        raise SslAugError(f"view spec: {prefix.rstrip('.') or 'view'}={d!r} is not allowed; use a table")
    allowed = [f.name for f in dataclasses.fields(cls)]
    check_keys(sorted(d), allowed, "key", prefix)
    return cls(**d)


def allowed_keys() -> list[str]:
    return [k for op in OPS.values() for k in op.fields()] + list(NORM_FIELDS)


class ViewSpec:
    """One view family, keyword fields only. Output (3, size, size); crop area fraction in `scale`, aspect
    ratio in `ratio` (RandomResizedCrop), horizontal flip p, colour jitter, grayscale p, blur, solarize,
    optional per-image policy ("randaugment" | "autoaugment"), kornia ops, and normalisation mean/std on
    [0, 1] images. Default: the SimCLR CIFAR view. `spec.cfg(op_name)` is an op's validated config."""

    def __init__(self, **fields):
        check_keys(sorted(fields), allowed_keys(), "key")
        cfgs = {}
        for name, op in OPS.items():
            if op.nested:
                v = fields.get(name, None)
                if v is None:
                    v = op.config()
                elif isinstance(v, dict):
                    v = _from_dict(op.config, v, name + ".")
                elif not isinstance(v, op.config):
                    raise SslAugError(f"view spec: {name}={v!r} is not allowed; use a table of "
                                      f"{', '.join(f.name for f in dataclasses.fields(op.config))}")
                cfgs[name] = v
            else:
                cfgs[name] = op.config(**{k: fields[k] for k in op.fields() if k in fields})
        object.__setattr__(self, "_cfgs", cfgs)
        object.__setattr__(self, "mean", _norm("mean", fields.get("mean", CIFAR_MEAN)))
        object.__setattr__(self, "std", _norm("std", fields.get("std", CIFAR_STD)))

    def cfg(self, op_name: str):
        """The validated config dataclass of a registered op (its defaults if the spec predates the op)."""
        c = self._cfgs.get(op_name)
        return OPS[op_name].config() if c is None else c

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        for op_name, op in OPS.items():
            if name in op.fields():
                c = self.cfg(op_name)
                return c if op.nested else getattr(c, name)
        raise AttributeError(f"ViewSpec has no field {name!r}")

    def __setattr__(self, name, value):
        raise AttributeError("ViewSpec is immutable; use spec.replace(...)")

    def fields(self) -> dict:
        """{key: value} of every view field (nested ops as their config dataclasses)."""
        out = {}
        for op_name, op in OPS.items():
            c = self.cfg(op_name)
            if op.nested:
                out[op_name] = c
            else:
                out.update({f.name: getattr(c, f.name) for f in dataclasses.fields(c)})
        return dict(out, mean=self.mean, std=self.std)

    def __eq__(self, other) -> bool:
        return isinstance(other, ViewSpec) and self.fields() == other.fields()

    __hash__ = None

    def __repr__(self) -> str:
        return "ViewSpec(" + ", ".join(f"{k}={v!r}" for k, v in self.fields().items()) + ")"

    @classmethod
    def from_dict(cls, d: dict) -> "ViewSpec":
        """Build from a recipe table (keys as the field names; nested tables for color_jitter, blur,
        solarize; a list of tables for kornia). Unknown keys raise SslAugError listing the allowed ones."""
        if not isinstance(d, dict):
            raise SslAugError(f"view spec: view={d!r} is not allowed; use a table")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain dict (lists for pairs) that `from_dict` maps back to an equal spec."""
        def plain(v):
            if isinstance(v, (tuple, list)):
                return [plain(a) for a in v]
            if isinstance(v, dict):
                return {k: plain(a) for k, a in v.items()}
            if dataclasses.is_dataclass(v):
                return plain(dataclasses.asdict(v))
            return v
        return {k: plain(v) for k, v in self.fields().items()}

    def replace(self, **changes) -> "ViewSpec":
        """A validated copy with some fields changed (nested fields may be given as dicts of changes)."""
        cur = self.fields()
        for name, v in list(changes.items()):
            if name in OPS and OPS[name].nested and isinstance(v, dict):
                changes[name] = dataclasses.replace(cur[name], **v)
        return ViewSpec(**dict(cur, **changes))
