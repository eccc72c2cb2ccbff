"""Supervised fine-tuning of a pretrained encoder (SimCLR's semi-supervised protocol) with label mixing.

encoder (normalised float (N,3,H,W) -> (N,D)) + a linear head, trained on all labels or a class-balanced
fraction of them (1 % / 10 %), with a held-out validation split of that subset for early stopping (the
state with the lowest validation loss is kept). Training views: random crop (4 px zero padding) + flip,
then the batch mixing of `FinetuneConfig.mix` (none | mixup | cutmix | cutout | gridmix | saliency_cutmix |
snapmix) and label smoothing. Saliency for saliency_cutmix and the class-activation maps of SnapMix are
input gradients of the true-class logit (|d logit_y / dx| summed over channels): our backbones pool
globally, so Grad-CAM's spatial features are not exposed. Reports top-1/top-5, per-class accuracy, ECE
(15 bins), NLL, the reliability bins and, with `tta`, the same with 10-crop/flip test-time augmentation.

In a run directory (locked, one writer): config.json, metrics.jsonl (one line per epoch), finetune_state.pt
(resume; saved only when finite), finetune.json (the report), reliability.png; all written atomically.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import signal
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.augment.mix import MIX_MODES, check_alpha, check_p, mix_batch
from ssl_aug.checkpoint import atomic_save, load_weights_only, nonfinite_flag, training_tensors
from ssl_aug.data.image_store import image_batches, pixels
from ssl_aug.data.subset import balanced_subset
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.calibration import calibration_report
from ssl_aug.evaluation.features import check_images, module_device, normalize_images
from ssl_aug.evaluation.groups import group_metrics, predictions
from ssl_aug.evaluation.knn import classification_metrics
from ssl_aug.evaluation.trainable_parts import TRAINABLE, last_stage_modules, set_trainable, train_mode
from ssl_aug.evaluation.tta import VIEWS, tta_predict
from ssl_aug.io import append_line, atomic_write_json, atomic_write_text
from ssl_aug.recipe_checks import MAX_INT
from ssl_aug.registry import check_keys
from ssl_aug.runlock import hold_run_folder
from ssl_aug.train.signals import PreemptionGuard, TrainingInterrupted, say_stop

__all__ = ["FinetuneConfig", "finetune", "last_stage_modules", "TRAINABLE"]

@dataclass
class FinetuneConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3  # AdamW, cosine schedule
    weight_decay: float = 1e-4
    trainable: str = "all"  # all | last_stage | head
    freeze_bn: bool = False  # BatchNorm statistics and affine parameters kept as pretrained
    mix: str = "none"
    mix_alpha: float = 1.0
    mix_p: float = 1.0  # per-image probability of being mixed
    cutout_size: int = 8
    grid: int = 4
    label_smoothing: float = 0.0
    label_fraction: float = 1.0  # class-balanced fraction of the training labels, in (0, 1]
    val_fraction: float = 0.1
    patience: int = 10
    crop_flip: bool = True
    tta: bool = False
    tta_views: str = "ten_crop"
    seed: int = 0

    def __post_init__(self):
        for key in ("epochs", "batch_size", "patience", "cutout_size", "grid", "seed"):
            value, low = getattr(self, key), 0 if key == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
                raise SslAugError(f"finetune {key}={value!r} is not allowed; use an integer in [{low}, {MAX_INT}]")
        for key in ("lr", "weight_decay", "mix_alpha", "mix_p", "label_fraction", "val_fraction", "label_smoothing"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SslAugError(f"finetune {key}={value!r} is not allowed; use a finite number")
        for key in ("freeze_bn", "crop_flip", "tta"):
            if not isinstance(getattr(self, key), bool):
                raise SslAugError(f"finetune {key}={getattr(self, key)!r} is not allowed; use true or false")
        if self.trainable not in TRAINABLE:
            raise SslAugError(f"finetune trainable={self.trainable!r} is not allowed; use one of {', '.join(TRAINABLE)}")
        if self.mix not in ("none",) + MIX_MODES:
            raise SslAugError(f"finetune mix={self.mix!r} is not allowed; use one of none, {', '.join(MIX_MODES)}")
        check_alpha(self.mix_alpha)
        check_p(self.mix_p)
        if not 0 < self.label_fraction <= 1:
            raise SslAugError(f"finetune label_fraction={self.label_fraction!r} is not allowed; use a number in (0, 1]")
        if not 0 < self.val_fraction < 1:
            raise SslAugError(f"finetune val_fraction={self.val_fraction!r} is not allowed; use a number in (0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise SslAugError(f"finetune label_smoothing={self.label_smoothing!r} is not allowed; use [0, 1)")
        if not 0 < self.lr <= 1e3 or self.weight_decay < 0:  # AdamW's step overflows float32 near lr 3e37
            raise SslAugError(f"finetune lr={self.lr!r} / weight_decay={self.weight_decay!r}: use 0 < lr <= 1000, "
                              "weight_decay >= 0")
        if self.tta_views not in VIEWS:
            raise SslAugError(f"finetune tta_views={self.tta_views!r} is not allowed; use one of {', '.join(VIEWS)}")

    @classmethod
    def from_dict(cls, data: dict) -> "FinetuneConfig":
        names = [f.name for f in dataclasses.fields(cls)]
        check_keys(sorted(data), names, "finetune key")
        return cls(**data)


class _Classifier(nn.Module):
    """encoder + linear head: normalised images (N,3,H,W) -> logits (N, C)."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int):
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.head(self.encoder(x).flatten(1))


def _probe_encoder(encoder, images, mean, std, input_size):
    """Feature dim; one-line errors for an encoder that does not fit the data (size or channels)."""
    h = images.shape[-1]
    if input_size is not None and int(input_size) != h:
        raise SslAugError(f"the encoder expects {input_size} px inputs but the data has {h} px images; "
                          f"fine-tune on data of size {input_size}")
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    if convs and convs[0].in_channels != images.shape[1]:
        raise SslAugError(f"the encoder expects {convs[0].in_channels}-channel inputs but the data has "
                          f"{images.shape[1]} channels")
    was = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            out = encoder(normalize_images(pixels(images[:2]).to(module_device(encoder)), mean, std))
    except RuntimeError as exc:
        raise SslAugError(f"the encoder does not accept the data's {tuple(images.shape[1:])} images: "
                          f"{str(exc).splitlines()[0]}") from None
    finally:
        encoder.train(was)
    return out.flatten(1).shape[1]


def _crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop after zero padding by `pad` pixels + horizontal flip p=0.5, per image, batched."""
    n, _, h, w = x.shape
    p = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
    cols = torch.arange(w, device=x.device)[None]
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + ox[:, None]
    rows = torch.arange(h, device=x.device)[None] + oy[:, None]
    return p[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def _input_saliency(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """|d logit_y / d x| summed over channels (N,H,W); model buffers (BN statistics) left untouched."""
    from ssl_aug.methods.base import preserved_norm_buffers

    x = x.detach().requires_grad_(True)
    with preserved_norm_buffers(model):
        logit = model(x).gather(1, y[:, None]).sum()
        grad, = torch.autograd.grad(logit, x)
    return grad.abs().sum(1)


def _soft_ce(logits, targets, smoothing):
    if smoothing:
        mass = targets.sum(1, keepdim=True)
        targets = targets * (1 - smoothing) + smoothing * mass / targets.shape[1]
    return -(targets * torch.log_softmax(logits.float(), 1)).sum(1).mean()


@torch.no_grad()
def _logits(model, images_uint8, mean, std, batch_size=512):
    device = module_device(model)
    model.eval()
    out = [model(normalize_images(x.to(device), mean, std)).float().cpu()
           for x in image_batches(images_uint8, batch_size)]
    return torch.cat(out)


def _split_labels(labels, cfg: FinetuneConfig, num_classes: int):
    n = labels.shape[0]
    size = int(round(cfg.label_fraction * n))
    if size < num_classes:
        raise SslAugError(f"label_fraction={cfg.label_fraction} keeps {size} images, fewer than the "
                          f"{num_classes} classes; use a larger fraction")
    subset = balanced_subset(labels, size, cfg.seed) if size < n else torch.arange(n)
    perm = subset[torch.randperm(len(subset), generator=torch.Generator().manual_seed(cfg.seed + 1))]
    n_val = max(1, int(round(len(perm) * cfg.val_fraction)))
    if len(perm) - n_val < 1:
        raise SslAugError(f"the labelled subset ({len(perm)} images) is too small to hold out a validation split")
    return perm[n_val:].sort().values, perm[:n_val].sort().values


def _mixed_batch(model, x, y, num_classes, cfg: FinetuneConfig, g):
    """-> (images, soft targets (B, C)) after crop/flip and mixing (mixing gated per image by mix_p)."""
    if cfg.crop_flip:
        x = _crop_flip(x, g)
    onehot = F.one_hot(y, num_classes).float()
    if cfg.mix == "none":
        return x, onehot
    gate = (torch.rand(x.shape[0], generator=g) < cfg.mix_p).to(x.device)
    saliency = _input_saliency(model, x, y) if cfg.mix in ("saliency_cutmix", "snapmix") else None
    m = mix_batch(cfg.mix, x, onehot, cfg.mix_alpha, generator=g, saliency=saliency, cams=saliency,
                  grid=cfg.grid, cutout_size=cfg.cutout_size)
    return (torch.where(gate[:, None, None, None], m.images, x),
            torch.where(gate[:, None], m.targets.to(onehot), onehot))


def _report(probs, labels, c):
    return {**classification_metrics(probs, labels, c), **calibration_report(probs, labels, 15)}


def _start_or_resume(run: Path, cfg, c, model, opt, sched, state, resume, device) -> dict:
    """Load finetune_state.pt (same settings only) and trim metrics.jsonl to it, or start afresh."""
    run.mkdir(parents=True, exist_ok=True)
    saved = run / "finetune_state.pt"
    if resume and saved.is_file():
        ckpt = load_weights_only(saved, map_location=device)
        if ckpt["config"] != dataclasses.asdict(cfg):
            raise SslAugError(f"{saved} was written with other fine-tuning settings; use another run directory "
                              "or delete it")
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
        atomic_write_text(run / "metrics.jsonl", "".join(x + "\n" for x in lines[:state["lines"]]))
    else:
        (run / "metrics.jsonl").unlink(missing_ok=True)
    atomic_write_json(run / "config.json", {"finetune": dataclasses.asdict(cfg), "num_classes": c})
    return state


def _stop_line(guard, run, epoch: int) -> None:
    """A signal arrived: one line saying what is kept and how to continue, then exit 143 / 130."""
    kept = (f"the state after epoch {epoch} is kept in {run / 'finetune_state.pt'}" if run is not None and epoch
            else "nothing to keep yet")
    say_stop(f"ssl-aug: {signal.Signals(guard.signum).name}: fine-tuning stopped in epoch {epoch + 1}; {kept}; "
             f"{guard.continue_hint}")
    raise TrainingInterrupted(guard.signum, epoch)


def _train_epochs(model, opt, sched, state, train, train_idx, val_idx, mean, std, c, cfg, run, guard, progress):
    """The epoch loop: batches, validation, early stopping; with a run directory the state after every epoch
    is saved, only when every weight and optimiser value is finite. A signal stops it at the next batch."""
    from tqdm.auto import tqdm

    tr_x, tr_y = train
    device = module_device(model)
    per_epoch = -(-len(train_idx) // cfg.batch_size)  # the guard counts batches: a second signal says what is lost
    guard.continue_hint = "continue with the same command (it resumes from the saved state)"
    guard.step = state["epoch"] * per_epoch
    guard.saved_step = guard.step if run is not None and state["epoch"] else None
    bar = tqdm(total=cfg.epochs, initial=state["epoch"], desc="fine-tune", disable=not progress, leave=False)
    while state["epoch"] < cfg.epochs and state["since"] < cfg.patience:
        epoch = state["epoch"]
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        order = train_idx[torch.randperm(len(train_idx), generator=g)]
        total = torch.zeros((), dtype=torch.float64, device=device)
        for i in range(0, len(order), cfg.batch_size):
            if guard.signum is not None:
                _stop_line(guard, run, epoch)
            idx = order[i:i + cfg.batch_size]
            x = normalize_images(pixels(tr_x[idx]).to(device), mean, std)
            y = tr_y[idx].to(device)
            train_mode(model, cfg)
            x, targets = _mixed_batch(model, x, y, c, cfg, g)
            loss = _soft_ce(model(x), targets, cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.detach().double() * len(idx)
            guard.step += 1
        val_logits = _logits(model, tr_x[val_idx], mean, std)
        val_loss = F.cross_entropy(val_logits, tr_y[val_idx])
        if bool(nonfinite_flag([total, val_loss, *training_tensors(model, opt)])):  # one host read per epoch
            kept = f"; the state after epoch {epoch} is kept in {run / 'finetune_state.pt'}" if run and epoch else ""
            raise SslAugError(f"fine-tuning became non-finite (NaN/inf loss, weights or optimiser state) in epoch "
                              f"{epoch + 1}{kept}; lower lr (now {cfg.lr}) or check the encoder")
        val_loss = float(val_loss)
        val_acc = float((val_logits.argmax(1) == tr_y[val_idx]).double().mean())
        state["epoch"] = epoch + 1
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_acc=val_acc, best_epoch=epoch + 1, since=0,
                         best={k: v.detach().clone() for k, v in model.state_dict().items()})
        else:
            state["since"] += 1
        record = {"type": "epoch", "epoch": epoch + 1, "train_loss": float(total) / len(train_idx),
                  "val_loss": val_loss, "val_top1": val_acc, "lr": opt.param_groups[0]["lr"]}
        if run is not None:
            append_line(run / "metrics.jsonl", json.dumps(record), what="metrics log")
            state["lines"] += 1
            guard.saving = True  # a second signal waits for the write
            try:
                atomic_save({"config": dataclasses.asdict(cfg), "model": model.state_dict(),
                             "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "state": state},
                            run / "finetune_state.pt")
            finally:
                guard.saving = False
            guard.saved_step = guard.step
        bar.update(1)
        bar.set_postfix(val_loss=f"{val_loss:.3f}", val_top1=f"{val_acc:.3f}")
    bar.close()


def finetune(encoder: nn.Module, mean, std, train, test, cfg: FinetuneConfig | dict | None = None,
             run_dir: str | Path | None = None, num_classes: int | None = None, input_size: int | None = None,
             resume: bool = True, progress: bool = True, test_groups=None, classes=None, group_names=None) -> dict:
    """Fine-tune a copy of `encoder` (left untouched) on train = (uint8 (N,3,H,W), labels (N,)); evaluate on test
    (test_groups (M,): + "groups" of evaluation.groups). Returns {"top1", "top5", "per_class", "ece", "nll",
    "reliability", "val_top1", "val_loss", "best_epoch", "epochs_run", "num_labelled", "config", ["tta"]}."""
    cfg = FinetuneConfig.from_dict(cfg) if isinstance(cfg, dict) else (cfg or FinetuneConfig())
    (tr_x, tr_y), (te_x, te_y) = train, test
    check_images(tr_x, "train images")
    check_images(te_x, "test images")
    tr_y, te_y = torch.as_tensor(tr_y).long().cpu(), torch.as_tensor(te_y).long().cpu()
    c = int(num_classes or max(int(tr_y.max()), int(te_y.max())) + 1)
    encoder = copy.deepcopy(encoder)
    device = module_device(encoder)
    dim = _probe_encoder(encoder, tr_x, mean, std, input_size)
    train_idx, val_idx = _split_labels(tr_y, cfg, c)
    torch.manual_seed(cfg.seed)
    model = _Classifier(encoder, dim, c).to(device)
    params = set_trainable(model, cfg)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = -(-len(train_idx) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps)
    state = {"epoch": 0, "best_loss": float("inf"), "best_acc": 0.0, "best_epoch": 0, "since": 0, "best": None,
             "lines": 0}
    run = Path(run_dir) if run_dir is not None else None
    with hold_run_folder(run, enabled=run is not None), PreemptionGuard() as guard:  # one writer; clean stops
        if run is not None:
            state = _start_or_resume(run, cfg, c, model, opt, sched, state, resume, device)
        _train_epochs(model, opt, sched, state, (tr_x, tr_y), train_idx, val_idx, mean, std, c, cfg, run, guard,
                      progress)
    model.load_state_dict(state["best"])
    model.eval()
    probs = _logits(model, te_x, mean, std).double().softmax(1)
    report = {**_report(probs, te_y, c), "val_top1": state["best_acc"], "val_loss": state["best_loss"],
              "best_epoch": state["best_epoch"], "epochs_run": state["epoch"], "num_labelled": len(train_idx) + len(val_idx),
              "config": dataclasses.asdict(cfg)}
    if test_groups is not None:
        report["groups"] = group_metrics(predictions(probs), te_y, test_groups, classes, group_names)
    if cfg.tta:
        plain, tta = tta_predict(model, lambda z: z, te_x, mean, std, views=cfg.tta_views, outputs="logits",
                                 normalize=False)
        t = _report(tta, te_y, c)
        report["tta"] = {"views": cfg.tta_views, "top1": t["top1"], "top5": t["top5"], "ece": t["ece"], "nll": t["nll"],
                         "delta_top1": t["top1"] - report["top1"]}
    if run is not None:
        atomic_write_json(run / "finetune.json", report)
        from ssl_aug.evaluation.plots import plot_reliability

        plot_reliability(report["reliability"], run / "reliability.png",
                         title=f"fine-tuned, mix={cfg.mix}: top-1 {report['top1']:.3f}, ECE {report['ece']:.3f}")
    return report
