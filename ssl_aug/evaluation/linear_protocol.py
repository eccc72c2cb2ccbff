"""The SimCLR linear-evaluation protocol: a linear layer on the frozen backbone, trained with SGD (momentum
0.9, Nesterov, no weight decay, lr 0.1 x batch / 256, cosine schedule) on augmented crops (RandomResizedCrop
scale 0.08-1 + horizontal flip, a fresh draw every epoch), 90 epochs by default (`epochs` for CPU budgets);
top-1 / top-5 on the clean centre images. Slower than the fast probe on precomputed features
(evaluation.linear), because every step encodes its crops."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.data.image_store import pixels
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.features import check_images, extract_features, module_device
from ssl_aug.evaluation.knn import classification_metrics

EPOCHS = 90


def crop_flip(size: int, mean, std):
    """uint8 (N, 3, H, W), generator -> normalised float crops (N, 3, size, size): RandomResizedCrop
    (scale 0.08-1, ratio 3/4-4/3) and horizontal flip p 0.5, nothing else (the batched view engine)."""
    from ssl_aug.augment import OPS, MultiView, ViewSpec

    changes: dict = {}
    for op in OPS.values():
        changes.update(op.off())
    changes.update(scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5)
    views = MultiView(ViewSpec(size=size, mean=tuple(mean), std=tuple(std)).replace(**changes), 1)
    return lambda x, g: views(x, g)[0]


def linear_protocol(encoder: nn.Module, mean, std, train, test, num_classes: int | None = None,
                    epochs: int = EPOCHS, batch_size: int = 256, lr: float | None = None, seed: int = 0,
                    progress: bool = False) -> dict:
    """train/test: (uint8 images (N, 3, H, W), labels (N,)). Returns {"top1", "top5", "per_class", "epochs",
    "lr", "batch_size", "protocol": "simclr"}."""
    from tqdm.auto import tqdm

    (tr_x, tr_y), (te_x, te_y) = train, test
    check_images(tr_x, "train images")
    check_images(te_x, "test images")
    if epochs < 1 or batch_size < 1:
        raise SslAugError(f"linear_protocol needs epochs >= 1 and batch_size >= 1, got {epochs} and {batch_size}")
    tr_y, te_y = torch.as_tensor(tr_y).long().cpu(), torch.as_tensor(te_y).long().cpu()
    c = int(num_classes or max(int(tr_y.max()), int(te_y.max())) + 1)
    device = module_device(encoder)
    lr = 0.1 * batch_size / 256 if lr is None else float(lr)
    augment = crop_flip(int(tr_x.shape[-1]), mean, std)
    dim = extract_features(encoder, tr_x[:2], mean, std, progress=False, normalize=False).shape[1]
    torch.manual_seed(seed)
    head = nn.Linear(dim, c).to(device)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=0.0)
    steps = epochs * -(-len(tr_y) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    g = torch.Generator().manual_seed(seed)
    was_training = encoder.training
    encoder.eval()
    try:
        for _ in tqdm(range(epochs), desc="linear protocol", disable=not progress, leave=False):
            perm = torch.randperm(len(tr_y), generator=g)
            for i in range(0, len(perm), batch_size):
                idx = perm[i:i + batch_size]
                with torch.no_grad():
                    f = encoder(augment(pixels(tr_x[idx]), g).to(device)).float().flatten(1)
                loss = F.cross_entropy(head(f), tr_y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    finally:
        encoder.train(was_training)
    te_f = extract_features(encoder, te_x, mean, std, progress=False, normalize=False)
    with torch.no_grad():
        logits = head.cpu()(te_f)
    return {**classification_metrics(logits, te_y, c), "epochs": epochs, "lr": lr, "batch_size": batch_size,
            "protocol": "simclr"}


@register_evaluator("linear_protocol")
class LinearProtocolEvaluator(Evaluator):
    """SimCLR linear evaluation: SGD on augmented crops, frozen backbone, 90 epochs (`epochs` for CPU budgets)."""

    @dataclass
    class Config(EvaluatorConfig):
        epochs: int = EPOCHS
        batch_size: int = 256
        lr: float = 0.0   # 0: 0.1 x batch_size / 256

        def __post_init__(self):
            if self.epochs < 1 or self.batch_size < 1 or self.lr < 0:
                raise SslAugError(f"eval.linear_protocol needs epochs >= 1, batch_size >= 1, lr >= 0; got "
                                  f"{self.epochs}, {self.batch_size}, {self.lr}")

    def run(self, ctx) -> dict:
        c = self.config
        return linear_protocol(ctx.encoder, ctx.mean, ctx.std, ctx.train, ctx.test, ctx.num_classes, c.epochs,
                               c.batch_size, c.lr or None, ctx.seed, ctx.progress)

    def rows(self, r: dict) -> list:
        return [(f"linear protocol (SimCLR: SGD on crops, {r['epochs']} epochs, lr {r['lr']:g})", pct(r["top1"]),
                 pct(r["top5"]), "-")]

    def flat(self, r: dict) -> dict:
        return {"linear_protocol_top1": r["top1"], "linear_protocol_top5": r["top5"]}
