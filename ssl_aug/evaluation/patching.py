"""Model patching objectives: a linear probe (frozen features) or a fine-tuned encoder trained with ERM,
group DRO over (class, group) cells, or the class-conditional CLAMP variant (worst subgroup within each
class), optionally with a consistency term between an image and its subgroup-changed version
(`subgroup_changer`: the nuisance op's recolouring). Reports come with the subgroup metrics.

    patched_probe(train_f (N,D), train_y (N,), train_g (N,), test_f (M,D), test_y, test_g, objective="clamp")
    patched_finetune(encoder, mean, std, (x_uint8, y, g) train, (x, y, g) test, objective="group_dro",
                     consistency=1.0, change=subgroup_changer())
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ssl_aug.augment.ops.nuisance import Nuisance, recolor_nuisance
from ssl_aug.data.groups import check_nonempty, require_groups
from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.features import check_images
from ssl_aug.evaluation.groups import group_metrics, predictions
from ssl_aug.evaluation.linear import LinearClassifier
from ssl_aug.losses.group_dro import GroupDRO, consistency_loss

__all__ = ["OBJECTIVES", "build_objective", "patched_probe", "patched_finetune", "subgroup_changer"]

OBJECTIVES = ("erm", "group_dro", "clamp")


def build_objective(objective: str, num_classes: int, num_groups: int, eta: float = 0.01):
    """-> f(per-image losses (N,), labels (N,), groups (N,)) -> 0-d loss (stateful for the DRO kinds)."""
    if objective not in OBJECTIVES:
        raise SslAugError(f"unknown patching objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    if objective == "erm":
        return lambda losses, y, g: losses.mean()
    if objective == "group_dro":  # Sagawa: groups = (class, attribute) cells
        dro = GroupDRO(num_classes * num_groups, eta=eta)
        return lambda losses, y, g: dro(losses, y * num_groups + g)
    dro = GroupDRO(num_groups, eta=eta, class_conditional=True, num_classes=num_classes)
    return lambda losses, y, g: dro(losses, g, labels=y)


def _setup(train_y, train_g, test_y, test_g, classes, group_names, objective):
    if objective != "erm":
        train_g = require_groups(train_g, f"objective {objective!r}")
    test_g = require_groups(test_g, "subgroup evaluation")
    ty, qy = torch.as_tensor(train_y).long().cpu(), torch.as_tensor(test_y).long().cpu()
    c = len(classes) if classes is not None else int(max(int(ty.max()), int(qy.max()))) + 1
    tg = torch.zeros_like(ty) if train_g is None else torch.as_tensor(train_g).long().cpu()
    g = len(group_names) if group_names is not None else int(max(int(tg.max()), int(test_g.max()))) + 1
    names = list(group_names) if group_names is not None else [str(i) for i in range(g)]
    if train_g is not None:
        check_nonempty(tg, names, "train")
    return ty, tg, qy, test_g.cpu(), c, g


def patched_probe(train_f, train_y, train_g, test_f, test_y, test_g, objective: str = "erm", eta: float = 0.01,
                  epochs: int = 300, lr: float = 0.01, weight_decay: float = 1e-4, seed: int = 0,
                  classes: Sequence[str] | None = None, group_names: Sequence[str] | None = None) -> dict:
    """Full-batch Adam linear probe on standardised features with the chosen objective.
    Returns {"objective", "top1", **group_metrics}."""
    ty, tg, qy, qg, c, g = _setup(train_y, train_g, test_y, test_g, classes, group_names, objective)
    tf, qf = torch.as_tensor(train_f).float().cpu(), torch.as_tensor(test_f).float().cpu()
    if tf.ndim != 2 or qf.ndim != 2 or tf.shape[1] != qf.shape[1] or tf.shape[0] != ty.shape[0]:
        raise SslAugError(f"features must be (N, D) train / (M, D) test with one label per row; got "
                          f"{tuple(tf.shape)} and {tuple(qf.shape)}")
    torch.manual_seed(seed)
    model = LinearClassifier(tf.shape[1], c, tf.mean(0), tf.std(0).clamp_min(1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    obj = build_objective(objective, c, g, eta)
    for _ in range(epochs):
        loss = obj(F.cross_entropy(model(tf), ty, reduction="none"), ty, tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = predictions(model(qf))
    m = group_metrics(pred, qy, qg, classes, group_names)
    return {"objective": objective, "top1": m["average"], **m}


def subgroup_changer(palette=None, tol: float = 0.03) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """-> change(x float (N,3,H,W) in [0, 1], generator) recolouring each image's nuisance patch to a random
    palette colour (the nuisance op with p = 1; default palette: the embedded patch colours)."""
    cfg = Nuisance(p=1.0, tol=tol, **({} if palette is None else {"palette": palette}))
    pal = torch.tensor(cfg.palette)

    def change(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        target = torch.randint(0, len(pal), (x.shape[0],), generator=gen)
        return recolor_nuisance(x, pal, target, torch.ones(x.shape[0], dtype=torch.bool), cfg.tol)
    return change


def patched_finetune(encoder: nn.Module, mean, std, train, test, objective: str = "erm", consistency: float = 0.0,
                     change: Callable | None = None, eta: float = 0.01, epochs: int = 5, batch_size: int = 128,
                     lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0,
                     classes: Sequence[str] | None = None, group_names: Sequence[str] | None = None) -> dict:
    """Fine-tune encoder + linear head (AdamW) on train = (images uint8 (N,3,H,W), labels, groups) with the
    objective, + consistency * JS(pred(x), pred(change(x))) when consistency > 0. The encoder is trained
    in place. Returns {"objective", "consistency", "top1", **group_metrics} on test = (images, labels, groups)."""
    (tx, ty_in, tg_in), (qx, qy_in, qg_in) = train, test
    check_images(tx, "train images")
    check_images(qx, "test images")
    if not consistency >= 0:
        raise SslAugError(f"consistency={consistency!r} is not allowed; allowed: a weight >= 0")
    if consistency > 0 and change is None:
        change = subgroup_changer()
    ty, tg, qy, qg, c, g = _setup(ty_in, tg_in, qy_in, qg_in, classes, group_names, objective)
    device = next(encoder.parameters()).device
    m_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    norm = lambda x: (x - m_t) / s_t  # noqa: E731
    torch.manual_seed(seed)
    with torch.no_grad():
        dim = encoder(norm(tx[:2].to(device).float() / 255)).shape[1]
    model = nn.Sequential(encoder, nn.Linear(dim, c)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    obj = build_objective(objective, c, g, eta)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(tx.shape[0], generator=gen)
        for i in range(0, tx.shape[0], batch_size):
            idx = perm[i:i + batch_size]
            x = tx[idx].to(device).float() / 255
            y, gb = ty[idx].to(device), tg[idx].to(device)
            logits = model(norm(x))
            loss = obj(F.cross_entropy(logits, y, reduction="none"), y, gb)
            if consistency > 0:
                loss = loss + consistency * consistency_loss(logits, model(norm(change(x.cpu(), gen).to(device))))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(norm(qx[i:i + 512].to(device).float() / 255)).cpu()
                            for i in range(0, qx.shape[0], 512)])
    m = group_metrics(predictions(scores), qy, qg, classes, group_names)
    return {"objective": objective, "consistency": float(consistency), "top1": m["average"], **m}
