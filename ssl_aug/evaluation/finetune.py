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
import math
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
from ssl_aug.io import atomic_write_json
from ssl_aug.recipe_checks import MAX_INT
from ssl_aug.registry import check_keys
from ssl_aug.runlock import hold_run_folder
from ssl_aug.train.loop import EpochLoop
from ssl_aug.train.metrics import MetricsLog
from ssl_aug.train.signals import PreemptionGuard

__all__ = ["FinetuneConfig", "FinetuneLoop", "finetune", "last_stage_modules", "TRAINABLE"]

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


class FinetuneLoop(EpochLoop):
    """Fine-tuning epochs on the shared loop (ssl_aug.train.loop): shuffled batches of the training split,
    validation, early stopping on the validation loss. With a run directory the state after every epoch is
    saved (finetune_state.pt, only when every weight and optimiser value is finite) and the run resumes
    from it (same settings only); a signal stops it after the batch in progress, keeping the last epoch's
    state. `state`: {"epoch", "best_loss", "best_acc", "best_epoch", "since", "best" (model state), "lines"}."""

    saves_mid_epoch = False
    continue_hint = "continue with the same command (it resumes from the saved state)"

    def __init__(self, model, opt, sched, train, train_idx, val_idx, mean, std, num_classes, cfg, run, progress):
        super().__init__(MetricsLog(Path(run or ".") / "metrics.jsonl", enabled=run is not None), progress)
        self.model, self.opt, self.sched, self.cfg, self.run_dir = model, opt, sched, cfg, run
        self.train_x, self.train_y = train
        self.train_idx, self.val_idx, self.mean, self.std, self.num_classes = train_idx, val_idx, mean, std, num_classes
        self.device = module_device(model)
        self.per_epoch = -(-len(train_idx) // cfg.batch_size)  # batches per epoch; `step` counts batches
        self.state_file = run / "finetune_state.pt" if run is not None else None
        self.state = {"epoch": 0, "best_loss": float("inf"), "best_acc": 0.0, "best_epoch": 0, "since": 0,
                      "best": None, "lines": 0}

    # ----------------------------------------------------------------- state
    def start(self, resume) -> bool:
        if self.run_dir is None:
            return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        resumed = super().start(resume)
        atomic_write_json(self.run_dir / "config.json", {"finetune": dataclasses.asdict(self.cfg),
                                                         "num_classes": self.num_classes})
        return resumed

    def resume_path(self, resume) -> Path | None:
        return self.state_file if resume and self.state_file.is_file() else None

    def read_state(self, path: Path) -> dict:
        ckpt = load_weights_only(path, map_location=self.device)
        if ckpt["config"] != dataclasses.asdict(self.cfg):
            raise SslAugError(f"{path} was written with other fine-tuning settings; use another run directory "
                              "or delete it")
        return ckpt

    def load_state_dict(self, ckpt: dict, path: Path) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.state = ckpt["state"]
        self.epoch, self.metrics.lines = self.state["epoch"], self.state["lines"]
        self.step = self.epoch * self.per_epoch

    def state_dict(self) -> dict:
        self.state["lines"] = self.metrics.lines
        return {"config": dataclasses.asdict(self.cfg), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(), "state": self.state}

    def write_state(self, state: dict) -> Path:
        return atomic_save(state, self.state_file)

    def check_state_finite(self) -> None:
        """end_epoch checked the loss, the weights and the optimiser state of this epoch (one host read)."""

    # ----------------------------------------------------------------- loop
    def should_continue(self) -> bool:
        return self.state["epoch"] < self.cfg.epochs and self.state["since"] < self.cfg.patience

    def begin_epoch(self, fresh: bool) -> None:
        self.g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.epoch)
        self.order = self.train_idx[torch.randperm(len(self.train_idx), generator=self.g)]
        self.total = torch.zeros((), dtype=torch.float64, device=self.device)

    def epoch_done(self) -> bool:
        return self.step >= (self.epoch + 1) * self.per_epoch

    def bar_spec(self) -> tuple[int, int, str]:
        return self.per_epoch, 0, f"fine-tune {self.epoch + 1}/{self.cfg.epochs}"

    def batches(self):
        return (self.order[i:i + self.cfg.batch_size] for i in range(0, len(self.order), self.cfg.batch_size))

    def train_step(self, idx: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Row indices (B,) -> (loss, B) after one AdamW step on their mixed, cropped and flipped images."""
        cfg, device = self.cfg, self.device
        x = normalize_images(pixels(self.train_x[idx]).to(device), self.mean, self.std)
        y = self.train_y[idx].to(device)
        train_mode(self.model, cfg)
        x, targets = _mixed_batch(self.model, x, y, self.num_classes, cfg, self.g)
        loss = _soft_ce(self.model(x), targets, cfg.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        return loss, len(idx)

    def after_step(self, out, bar) -> None:
        loss, n = out
        self.total += loss.detach().double() * n

    def stop_requested(self) -> bool:
        return self.guard.signum is not None  # one process: no collective

    def end_epoch(self) -> dict:
        """Validation, the non-finite check, early stopping bookkeeping -> the epoch record."""
        epoch, state, y_val = self.epoch, self.state, self.train_y[self.val_idx]
        val_logits = _logits(self.model, self.train_x[self.val_idx], self.mean, self.std)
        val_loss = F.cross_entropy(val_logits, y_val)
        if bool(nonfinite_flag([self.total, val_loss, *training_tensors(self.model, self.opt)])):  # one host read
            kept = f"; the state after epoch {epoch} is kept in {self.state_file}" if self.run_dir and epoch else ""
            raise SslAugError(f"fine-tuning became non-finite (NaN/inf loss, weights or optimiser state) in epoch "
                              f"{epoch + 1}{kept}; lower lr (now {self.cfg.lr}) or check the encoder")
        val_loss = float(val_loss)
        val_acc = float((val_logits.argmax(1) == y_val).double().mean())
        state["epoch"] = self.epoch = epoch + 1
        if val_loss < state["best_loss"]:
            state.update(best_loss=val_loss, best_acc=val_acc, best_epoch=epoch + 1, since=0,
                         best={k: v.detach().clone() for k, v in self.model.state_dict().items()})
        else:
            state["since"] += 1
        return {"type": "epoch", "epoch": epoch + 1, "train_loss": float(self.total) / len(self.train_idx),
                "val_loss": val_loss, "val_top1": val_acc, "lr": self.opt.param_groups[0]["lr"]}

    def save_at_epoch_end(self) -> bool:
        return self.run_dir is not None

    def stop_line(self, signum: int) -> str:
        epoch = self.epoch
        kept = f"the state after epoch {epoch} is kept in {self.state_file}" if self.run_dir and epoch else \
            "nothing to keep yet"
        where = f"in epoch {epoch + 1}" if self.should_continue() else f"after epoch {epoch}, its last"
        return f"fine-tuning stopped {where}; {kept}; {self.guard.continue_hint}"

    def stop_report(self) -> tuple[int, None]:
        return self.epoch, None


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
    run = Path(run_dir) if run_dir is not None else None
    loop = FinetuneLoop(model, opt, sched, (tr_x, tr_y), train_idx, val_idx, mean, std, c, cfg, run, progress)
    with hold_run_folder(run, enabled=run is not None), PreemptionGuard() as guard:  # one writer; clean stops
        loop.run(resume, guard)
    state = loop.state
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
