"""Linear probe on frozen features: standardise, train one linear layer (Adam, full- or mini-batch on
CPU) with a held-out validation split for early stopping and a small weight-decay sweep; report
top-1/top-5, per-class accuracy and expected calibration error. Optional augmentation mode recomputes
features every epoch from augmented images."""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.calibration import expected_calibration_error, negative_log_likelihood
from ssl_aug.evaluation.features import check_images, encode, extract_features
from ssl_aug.evaluation.knn import classification_metrics


class LinearClassifier(nn.Module):
    """(N, D) features -> (N, C) logits = Linear((f - mean) / std)."""

    def __init__(self, dim: int, num_classes: int, mean: torch.Tensor | None = None, std: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim) if mean is None else mean.clone())
        self.register_buffer("std", torch.ones(dim) if std is None else std.clone())
        self.linear = nn.Linear(dim, num_classes)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.linear((f - self.mean) / self.std)


def _check(train_f, train_y, test_f, test_y, num_classes):
    for name, f, y in (("train", train_f, train_y), ("test", test_f, test_y)):
        if f.ndim != 2:
            raise SslAugError(f"{name} features must be 2-D (N, D), got shape {tuple(f.shape)}")
        if y.ndim != 1 or y.shape[0] != f.shape[0]:
            raise SslAugError(f"{name} labels have shape {tuple(y.shape)}; expected ({f.shape[0]},), one per row")
    if train_f.shape[1] != test_f.shape[1]:
        raise SslAugError(f"feature dims differ: train D={train_f.shape[1]} vs test D={test_f.shape[1]}; they must match")
    c = int(max(int(train_y.max()), int(test_y.max())) + 1) if num_classes is None else int(num_classes)
    for name, y in (("train", train_y), ("test", test_y)):
        if int(y.min()) < 0 or int(y.max()) >= c:
            raise SslAugError(f"{name} labels span {int(y.min())}..{int(y.max())}; allowed 0..{c - 1} (num_classes={c})")
    return c


def _split(n: int, val_fraction: float, seed: int):
    if not 0 < val_fraction < 1:
        raise SslAugError(f"val_fraction must be in (0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(n * val_fraction)))
    return perm[n_val:], perm[:n_val]


def _val(model, f, y) -> tuple[float, float]:
    """(cross-entropy, accuracy) on held-out features."""
    with torch.no_grad():
        logits = model(f)
        return float(F.cross_entropy(logits, y)), float((logits.argmax(1) == y).double().mean())


def _fit(model: LinearClassifier, batches: Callable[[int], list[tuple[torch.Tensor, torch.Tensor]]],
         val_f, val_y, epochs: int, lr: float, weight_decay: float, patience: int):
    """Adam + cosine LR; keeps the state with the lowest validation loss; stops after `patience` epochs
    without improvement. batches(epoch) -> list of (features, labels). Returns (val accuracy of the kept
    state, epochs run)."""
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    best, best_acc, best_state, since, epoch = float("inf"), 0.0, None, 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        for f, y in batches(epoch):
            loss = F.cross_entropy(model(f), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        loss, acc = _val(model, val_f, val_y)     # one host read per epoch, not per step
        if loss < best:
            best, best_acc, best_state, since = loss, acc, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            since += 1
            if since >= patience:
                break
    model.load_state_dict(best_state)
    return best_acc, epoch


def _report(model, test_f, test_y, c) -> dict:
    with torch.no_grad():
        logits = model(test_f)
    probs = logits.softmax(1)
    return {**classification_metrics(logits, test_y, c), "ece": expected_calibration_error(probs, test_y),
            "nll": negative_log_likelihood(probs, test_y)}


def _minibatches(f, y, batch_size, seed):
    def batches(epoch):
        if batch_size is None or batch_size >= f.shape[0]:
            return [(f, y)]
        perm = torch.randperm(f.shape[0], generator=torch.Generator().manual_seed(seed * 100003 + epoch))
        return [(f[perm[i:i + batch_size]], y[perm[i:i + batch_size]]) for i in range(0, f.shape[0], batch_size)]
    return batches


def linear_probe(train_features, train_labels, test_features, test_labels, num_classes: int | None = None,
                 epochs: int = 100, lr: float = 0.05, weight_decays: Sequence[float] = (0.0, 1e-5, 1e-4, 1e-3),
                 batch_size: int | None = None, val_fraction: float = 0.1, patience: int = 10, seed: int = 0) -> dict:
    """Linear probe on precomputed features.

    train_features (N, D), train_labels (N,), test_features (M, D), test_labels (M,).
    Standardises with train statistics, holds out val_fraction of train for early stopping and picks
    the weight decay with the best validation accuracy; batch_size=None = full batch.
    Returns {"top1", "top5", "per_class", "ece", "val_top1", "weight_decay", "epochs", "sweep":
    {wd: val_top1}, "classifier": LinearClassifier (maps the same kind of features to logits)}."""
    tf, ty = torch.as_tensor(train_features).float().cpu(), torch.as_tensor(train_labels).long().cpu()
    qf, qy = torch.as_tensor(test_features).float().cpu(), torch.as_tensor(test_labels).long().cpu()
    c = _check(tf, ty, qf, qy, num_classes)
    if epochs < 1 or not weight_decays:
        raise SslAugError(f"need epochs >= 1 and at least one weight decay, got epochs={epochs} weight_decays={weight_decays}")
    tr, va = _split(tf.shape[0], val_fraction, seed)
    mean, std = tf[tr].mean(0), tf[tr].std(0).clamp_min(1e-6)
    best = None
    sweep = {}
    for wd in weight_decays:
        torch.manual_seed(seed)
        model = LinearClassifier(tf.shape[1], c, mean, std)
        val, ep = _fit(model, _minibatches(tf[tr], ty[tr], batch_size, seed), tf[va], ty[va], epochs, lr, wd, patience)
        sweep[float(wd)] = val
        if best is None or val > best[0]:
            best = (val, float(wd), ep, model)
    val, wd, ep, model = best
    return {**_report(model, qf, qy, c), "val_top1": val, "weight_decay": wd, "epochs": ep, "sweep": sweep,
            "classifier": model}


def linear_probe_augmented(encoder: nn.Module, mean, std, train_images: torch.Tensor, train_labels,
                           test_images: torch.Tensor, test_labels,
                           augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                           num_classes: int | None = None, epochs: int = 20, lr: float = 1e-2,
                           weight_decay: float = 0.0, batch_size: int = 256, val_fraction: float = 0.1,
                           patience: int = 5, normalize: bool = True, seed: int = 0, amp: bool = False) -> dict:
    """Linear probe with on-the-fly augmentation: every epoch the training features are recomputed from
    augment(train_images_uint8 (N,3,H,W), generator) -> normalised float images (N,3,h,w); validation and
    test use clean images. Same report as linear_probe (no weight-decay sweep)."""
    check_images(train_images, "train_images")
    check_images(test_images, "test_images")
    ty, qy = torch.as_tensor(train_labels).long().cpu(), torch.as_tensor(test_labels).long().cpu()
    clean_tr = extract_features(encoder, train_images, mean, std, progress=False, normalize=normalize, amp=amp)
    qf = extract_features(encoder, test_images, mean, std, progress=False, normalize=normalize, amp=amp)
    c = _check(clean_tr, ty, qf, qy, num_classes)
    tr, va = _split(train_images.shape[0], val_fraction, seed)
    stats = clean_tr[tr]
    model = LinearClassifier(stats.shape[1], c, stats.mean(0), stats.std(0).clamp_min(1e-6))
    gen = torch.Generator().manual_seed(seed)
    imgs = train_images[tr]

    def batches(epoch):
        f = encode(encoder, augment(imgs, gen), normalize=normalize, amp=amp)
        return _minibatches(f, ty[tr], batch_size, seed)(epoch)

    torch.manual_seed(seed)
    val, ep = _fit(model, batches, clean_tr[va], ty[va], epochs, lr, weight_decay, patience)
    return {**_report(model, qf, qy, c), "val_top1": val, "weight_decay": float(weight_decay), "epochs": ep,
            "classifier": model}


@register_evaluator("linear")
class LinearEvaluator(Evaluator):
    """Linear probe on frozen, precomputed features (weight-decay sweep, early stopping on a held-out
    part of the bank): top-1 / top-5, per class, ECE; its classifier is shared with later evaluators (TTA)."""

    @dataclass
    class Config(EvaluatorConfig):
        epochs: int = 100
        lr: float = 0.05
        weight_decays: list = field(default_factory=lambda: [0.0, 1e-5, 1e-4, 1e-3])
        val_fraction: float = 0.1
        patience: int = 10

    def run(self, ctx) -> dict:
        c = self.config
        te_f = ctx.features("test")
        r = linear_probe(ctx.features("train"), ctx.train[1], te_f, ctx.test[1], num_classes=ctx.num_classes,
                         epochs=c.epochs, lr=c.lr, weight_decays=tuple(c.weight_decays), val_fraction=c.val_fraction,
                         patience=c.patience, seed=ctx.seed)
        classifier = ctx.shared["linear_classifier"] = r.pop("classifier")
        if ctx.test_groups is not None:
            from ssl_aug.evaluation.groups import group_metrics, predictions

            with torch.no_grad():
                pred = predictions(classifier(te_f))
            r["groups"] = group_metrics(pred, ctx.test[1], ctx.test_groups, ctx.classes, ctx.group_names)
        return r

    def rows(self, m: dict) -> list:
        return [(f"linear probe (wd={m['weight_decay']:g})", pct(m["top1"]), pct(m["top5"]), f"{m['ece']:.4f}")]
