"""Invariance probe: how similar are an encoder's embeddings of x and t(x), relative to random pairs?

score(t) = (mean cos(f(x), f(t(x))) - sim_rand) / (1 - sim_rand), sim_rand = mean cos(f(x_i), f(x_j))
over random pairs i != j. Identity -> 1; "as different as a random image" -> 0 (can go below 0).
Transforms are fixed-strength torchvision.transforms.v2.functional ops on batched uint8 tensors; for
the colour-jitter components the score is averaged over the two directions (factor 1-s and 1+s, hue -h
and +h). Any registered augmentation op, or any kornia.augmentation 2-D op, can be probed by name:
`invariance_probe(..., ops={"blur": {"sigma": [1.5, 1.5]}, "RandomErasing": {}})` (see `op_transform`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Callable

import torch
import torchvision.transforms.v2.functional as TF
from torch import nn

from ssl_aug.data.image_store import pixels
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, register_evaluator
from ssl_aug.evaluation.features import check_images, extract_features

Transform = Callable[[torch.Tensor], torch.Tensor]


def _crop(scale: float) -> Transform:
    def f(x):
        h, w = x.shape[-2:]
        ch, cw = max(1, round(h * scale ** 0.5)), max(1, round(w * scale ** 0.5))
        return TF.resized_crop(x, (h - ch) // 2, (w - cw) // 2, ch, cw, [h, w], antialias=True)
    return f


def _jitter(b: float, c: float, s: float, h: float) -> Transform:
    def f(x):
        x = TF.adjust_brightness(x, b)
        x = TF.adjust_contrast(x, c)
        x = TF.adjust_saturation(x, s)
        return TF.adjust_hue(x, h)
    return f


def _blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    k = max(3, int(0.1 * x.shape[-1]) // 2 * 2 + 1)
    return TF.gaussian_blur(x, [k, k], [sigma, sigma])


def default_transforms(jitter=(0.4, 0.4, 0.4, 0.1), crop_scale: float = 0.25) -> dict[str, list[Transform]]:
    """Family name -> list of uint8 (N,3,H,W) -> uint8 transforms (score = mean over the list).
    Strengths: SimCLR CIFAR jitter (0.4, 0.4, 0.4, 0.1) at its extremes, centre crop of 25% area
    resized back, grayscale, Gaussian blur (kernel ~10% of the size, sigma 1.5), solarize at 128."""
    b, c, s, h = jitter
    return {
        "identity": [lambda x: x],
        "crop_scale": [_crop(crop_scale)],
        "flip": [TF.hflip],
        "color_jitter": [_jitter(1 + b, 1 + c, 1 + s, h), _jitter(1 - b, 1 - c, 1 - s, -h)],
        "brightness": [lambda x: TF.adjust_brightness(x, 1 + b), lambda x: TF.adjust_brightness(x, 1 - b)],
        "contrast": [lambda x: TF.adjust_contrast(x, 1 + c), lambda x: TF.adjust_contrast(x, 1 - c)],
        "saturation": [lambda x: TF.adjust_saturation(x, 1 + s), lambda x: TF.adjust_saturation(x, 1 - s)],
        "hue": [lambda x: TF.adjust_hue(x, h), lambda x: TF.adjust_hue(x, -h)],
        "grayscale": [lambda x: TF.rgb_to_grayscale(x, num_output_channels=3)],
        "blur": [_blur],
        "solarize": [lambda x: TF.solarize(x, 128)],
    }


def op_transform(name: str, seed: int = 0, **cfg) -> Transform:
    """uint8 (N,3,H,W) square images -> uint8: the registered op `name` (ssl_aug.augment.list_ops()) or the
    kornia.augmentation class `name`, forced on (probability 1, the op's probe setting, overridden by
    `cfg`) in an otherwise identity view (full-image crop, no flip, colour, blur...), its per-image
    parameters drawn from `seed`."""
    from ssl_aug.augment import OPS, MultiView, ViewSpec

    changes: dict = {}
    for op in OPS.values():
        changes.update(op.off())
    if name in OPS:
        op = OPS[name]
        probe = op.probe()
        if op.nested:
            changes[name] = {**changes.get(name, {}), **probe.get(name, {}), **cfg}
        else:
            changes.update(probe, **cfg)
    else:
        import kornia.augmentation as K
        if not isinstance(getattr(K, name, None), type):
            raise SslAugError(f"invariance probe: unknown op {name!r}; use one of {', '.join(OPS)} "
                              f"or a kornia.augmentation class name such as 'RandomErasing'")
        changes["kornia"] = [{"op": name, "p": 1.0, **cfg}]

    def f(x: torch.Tensor) -> torch.Tensor:
        spec = ViewSpec(size=int(x.shape[-1]), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)).replace(**changes)
        v = MultiView(spec, 1)(x, torch.Generator().manual_seed(seed))[0]
        return v.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return f


def op_transforms(ops) -> dict[str, list[Transform]]:
    """{op name: its config overrides} (or a list of names) -> {name: [transform]} for `invariance_probe`."""
    ops = {name: {} for name in ops} if isinstance(ops, (list, tuple)) else dict(ops)
    return {name: [op_transform(name, **cfg)] for name, cfg in ops.items()}


def invariance_probe(encoder: nn.Module, images_uint8: torch.Tensor, mean, std,
                     transforms: dict[str, list[Transform]] | None = None, batch_size: int = 512,
                     seed: int = 0, amp: bool = False, ops=None) -> dict:
    """images_uint8 (N,3,H,W), N >= 2 -> {"sim_rand": float, "families": {name: {"sim": mean cos(x, t(x)),
    "score": normalised score, "variance": kernel-view penalty}}}. variance (Dao et al. 2019: augmentation
    ~ averaging features over transforms + a data-dependent variance term) = mean over images of
    1/K sum_k |f_k - mean_k f_k|^2 over the K L2-normalised features of x and its transformed versions:
    how much the transform spreads the representation (0 = invariant; 2 transforms apart: (1 - cos) / 2). `ops` ({name: cfg} or [names]) adds registered / kornia ops by name
    (without `transforms`, after the default families)."""
    check_images(images_uint8, "images_uint8")
    n = images_uint8.shape[0]
    if n < 2:
        raise SslAugError(f"invariance_probe needs at least 2 images, got {n}")
    transforms = default_transforms() if transforms is None else dict(transforms)
    if ops:
        transforms.update(op_transforms(ops))
    feats = lambda x: extract_features(encoder, x, mean, std, batch_size=batch_size, progress=False, amp=amp)  # noqa: E731
    f0 = feats(images_uint8).double()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    partner = torch.empty_like(perm)
    partner[perm] = perm.roll(1)                       # a random derangement: i -> partner[i] != i
    sim_rand = float((f0 * f0[partner]).sum(1).mean())
    out = {}
    for name, fns in transforms.items():
        views = [feats(fn(images_uint8)).double() for fn in fns]
        sim = sum(float((f0 * v).sum(1).mean()) for v in views) / len(views)
        stack = torch.stack([f0] + views)  # (K, N, D): the clean image and its K - 1 transformed versions
        variance = float((stack - stack.mean(0)).square().sum(2).mean())
        out[name] = {"sim": sim, "score": (sim - sim_rand) / max(1e-12, 1 - sim_rand), "variance": variance}
    return {"sim_rand": sim_rand, "families": out}


def compare_invariance(encoders: dict[str, nn.Module], images_uint8: torch.Tensor, mean, std, **kw) -> tuple[dict, str]:
    """Probe several encoders (e.g. {"trained": enc, "random init": baseline}) on the same images.
    Returns ({name: invariance_probe result}, Markdown table: one row per family, one column per encoder)."""
    results = {name: invariance_probe(enc, images_uint8, mean, std, **kw) for name, enc in encoders.items()}
    return results, invariance_table(results)


def invariance_table(results: dict[str, dict]) -> str:
    """Markdown table, families as rows and encoders as columns: each cell "score (variance)", i.e. the
    invariance score and the kernel-view variance penalty of that transform (plus the sim_rand row)."""
    names = list(results)
    families = list(next(iter(results.values()))["families"]) if results else []
    lines = ["| transform: score (feature variance) | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for fam in families:
        cells = []
        for n in names:
            entry = results[n]["families"][fam]
            cells.append(f"{entry['score']:.3f}" + (f" ({entry['variance']:.3g})" if "variance" in entry else ""))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    lines.append("| (sim of random pairs) | " + " | ".join(f"{results[n]['sim_rand']:.3f}" for n in names) + " |")
    return "\n".join(lines)


@register_evaluator("invariance")
class InvarianceEvaluator(Evaluator):
    """Invariance probe on the first `images` queries: per transform family, how close an image's
    features stay to its transformed version's (1 = invariant, 0 = as far as a random image)."""

    @dataclass
    class Config(EvaluatorConfig):
        images: int = 1000
        ops: list = field(default_factory=list)  # also probe these registered / kornia ops by name

        def __post_init__(self):
            if self.ops:
                op_transforms(self.ops)  # unknown names: one line when the evaluator is built, before any work

    def run(self, ctx) -> dict:
        return invariance_probe(ctx.encoder, pixels(ctx.test[0][:self.config.images]), ctx.mean, ctx.std,
                                batch_size=ctx.batch_size, seed=ctx.seed, amp=ctx.amp, ops=self.config.ops or None)

    def section(self, result: dict) -> str:
        return ("Invariance (1 = invariant, 0 = as different as a random image):\n\n"
                + invariance_table({"encoder": result}))

    def flat(self, result: dict) -> dict:
        return {f"invariance_{family}": v["score"] for family, v in (result.get("families") or {}).items()}
