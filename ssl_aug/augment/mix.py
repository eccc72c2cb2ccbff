"""Batch mixing with per-image parameters from a CPU torch.Generator (seeded = replayable): MixUp, CutMix,
CutOut, GridMix, saliency-guided CutMix (SaliencyMix / Puzzle Mix spirit) and SnapMix.

Each returns `Mixed(images, targets, lam, perm)`: images (N,C,H,W) float; targets (N,K) soft labels
(None when no labels were given; rows sum to 1 except for SnapMix, whose weights come from activation
mass); lam (N,) weight of each image's own content (per image: lambda is drawn once per image, not per
batch); perm (N,) the partner index (identity for CutOut). `mix_batch(mode, ...)` dispatches by name and
`parse_mix(table)` validates a recipe's `{mode, alpha, p}` table."""

from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.registry import check_keys


class Mixed(NamedTuple):
    images: torch.Tensor
    targets: Optional[torch.Tensor]
    lam: torch.Tensor
    perm: torch.Tensor


MIX_MODES = ("mixup", "cutmix", "cutout", "gridmix", "saliency_cutmix", "snapmix")
LABEL_FREE_MODES = ("mixup", "cutmix", "gridmix", "saliency_cutmix")  # usable without class labels (i-Mix)


def check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
        raise SslAugError(f"mix: alpha={alpha!r} is not allowed; use a number > 0")
    return float(alpha)


def check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise SslAugError(f"mix: p={p!r} is not allowed; use a probability in [0, 1]")
    return float(p)


def check_mode(mode, allowed=MIX_MODES) -> str:
    if mode not in allowed:
        raise SslAugError(f"mix: mode={mode!r} is not allowed; use one of {', '.join(allowed)}")
    return mode


def parse_mix(table, allowed=MIX_MODES) -> dict:
    """Validate a recipe table {mode, alpha=1.0, p=1.0, grid=4, cutout_size=8} -> a complete dict."""
    if not isinstance(table, dict):
        raise SslAugError(f"mix must be a table {{mode, alpha, p}}, got {table!r}")
    known = ("mode", "alpha", "p", "grid", "cutout_size")
    check_keys(sorted(table), known, "mix key")
    out = {"mode": check_mode(table.get("mode"), allowed), "alpha": check_alpha(table.get("alpha", 1.0)),
           "p": check_p(table.get("p", 1.0)), "grid": table.get("grid", 4), "cutout_size": table.get("cutout_size", 8)}
    for key in ("grid", "cutout_size"):
        if isinstance(out[key], bool) or not isinstance(out[key], int) or out[key] < 1:
            raise SslAugError(f"mix: {key}={out[key]!r} is not allowed; use an integer >= 1")
    return out


def _gen(generator):
    return generator if generator is not None else torch.Generator().manual_seed(int(torch.randint(0, 2 ** 62, (1,))))


def _beta(alpha: float, n: int, g: torch.Generator) -> torch.Tensor:
    check_alpha(alpha)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def _soft(labels, num_classes, n):
    if labels is None:
        return None
    if labels.ndim == 1:
        if num_classes is None:
            raise SslAugError("mix: integer labels need num_classes; pass num_classes=K or one-hot (N, K) labels")
        return torch.nn.functional.one_hot(labels.long(), num_classes).float()
    if labels.ndim == 2 and labels.shape[0] == n:
        return labels.float()
    raise SslAugError(f"mix: labels of shape {tuple(labels.shape)} are not allowed; use (N,) ints or (N, K)")


def _prep(images, labels, num_classes):
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise SslAugError("mix: images must be a (N, C, H, W) tensor")
    x = images if images.is_floating_point() else images.float()
    return x, _soft(labels, num_classes, x.shape[0])


def _mix_targets(y, lam, perm):
    if y is None:
        return None
    lam = lam.to(y.device)[:, None]
    return y * lam + y[perm] * (1 - lam)


def mixup(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
          generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """x_n <- lam_n x_n + (1 - lam_n) x_perm(n), lam_n ~ Beta(alpha, alpha) per image; same for labels."""
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n = x.shape[0]
    lam = _beta(alpha, n, g)
    perm = torch.randperm(n, generator=g)
    lam_d, perm_d = lam.to(x.device), perm.to(x.device)
    w = lam_d.view(n, 1, 1, 1).to(x.dtype)
    out = x * w + x[perm_d] * (1 - w)
    return Mixed(out, _mix_targets(y, lam_d, perm_d), lam_d, perm_d)


def _box_mask(h: int, w: int, top, left, bh, bw, device) -> torch.Tensor:
    """(N,1,H,W) bool, True inside each image's box [top, top+bh) x [left, left+bw)."""
    r = torch.arange(h, device=device)[None, :]
    c = torch.arange(w, device=device)[None, :]
    top, left, bh, bw = (t.to(device)[:, None] for t in (top, left, bh, bw))
    rows = (r >= top) & (r < top + bh)
    cols = (c >= left) & (c < left + bw)
    return (rows[:, :, None] & cols[:, None, :])[:, None]


def _centred_box(n, h, w, ch, cw, g):
    """Boxes of size (ch, cw) (N,) centred uniformly in the image, clipped: top, left, height, width."""
    cy = (torch.rand(n, generator=g) * h).long()
    cx = (torch.rand(n, generator=g) * w).long()
    y0, y1 = (cy - ch // 2).clamp(0, h), (cy + ch - ch // 2).clamp(0, h)
    x0, x1 = (cx - cw // 2).clamp(0, w), (cx + cw - cw // 2).clamp(0, w)
    return y0, x0, y1 - y0, x1 - x0


def cutmix(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
           generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """Paste a box of area ~(1 - lam) from the partner image (lam ~ Beta(alpha, alpha)), box centre
    uniform and clipped at the border; lam is recomputed from the pasted area, labels mixed by area."""
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    lam0 = _beta(alpha, n, g)
    cut = torch.sqrt(1.0 - lam0)
    top, left, bh, bw = _centred_box(n, h, w, (cut * h).long(), (cut * w).long(), g)
    perm = torch.randperm(n, generator=g)
    lam = 1.0 - (bh * bw).float() / (h * w)
    mask = _box_mask(h, w, top, left, bh, bw, x.device)
    perm_d, lam_d = perm.to(x.device), lam.to(x.device)
    out = torch.where(mask, x[perm_d], x)
    return Mixed(out, _mix_targets(y, lam_d, perm_d), lam_d, perm_d)


def cutout(images: torch.Tensor, labels: Optional[torch.Tensor] = None, size: int = 8,
           generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None,
           value: float = 0.0) -> Mixed:
    """Zero (or `value`) a size x size patch per image, centre uniform, clipped at the border (DeVries &
    Taylor). Labels are unchanged; lam is the kept fraction of each image."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise SslAugError(f"cutout: size={size!r} is not allowed; use an integer >= 1 (pixels)")
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    full = torch.full((n,), size, dtype=torch.long)
    top, left, bh, bw = _centred_box(n, h, w, full, full, g)
    mask = _box_mask(h, w, top, left, bh, bw, x.device)
    out = x.masked_fill(mask, value)
    lam = (1.0 - (bh * bw).float() / (h * w)).to(x.device)
    return Mixed(out, y, lam, torch.arange(n, device=x.device))


def gridmix(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0, grid: int = 4,
            generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """GridMix: split every image into grid x grid cells (row/column r of H goes to cell r*grid//H); each
    cell comes from the partner with probability 1 - lam0_n (lam0_n ~ Beta(alpha, alpha)). lam is the
    exact share of pixels kept and labels are mixed by that share."""
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise SslAugError(f"gridmix: grid={grid!r} is not allowed; use an integer >= 1")
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    lam0 = _beta(alpha, n, g)
    cells = torch.rand(n, grid, grid, generator=g) >= lam0[:, None, None]  # True: from the partner
    perm = torch.randperm(n, generator=g)
    rows, cols = torch.arange(h) * grid // h, torch.arange(w) * grid // w
    mask = cells[:, rows][:, :, cols]  # (N, H, W)
    lam = 1.0 - mask.float().mean((1, 2))
    perm_d, lam_d = perm.to(x.device), lam.to(x.device)
    out = torch.where(mask[:, None].to(x.device), x[perm_d], x)
    return Mixed(out, _mix_targets(y, lam_d, perm_d), lam_d, perm_d)


def image_saliency(images: torch.Tensor) -> torch.Tensor:
    """Label-free saliency (N,C,H,W) -> (N,H,W) >= 0: gradient magnitude of the channel mean (central
    differences, replicate border). Used when no model saliency is given."""
    x = images.float().mean(1, keepdim=True)
    p = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    gy = (p[:, :, 2:, 1:-1] - p[:, :, :-2, 1:-1]) / 2
    gx = (p[:, :, 1:-1, 2:] - p[:, :, 1:-1, :-2]) / 2
    return (gx.square() + gy.square()).sqrt()[:, 0]


def box_sums(saliency: torch.Tensor, bh: torch.Tensor, bw: torch.Tensor) -> torch.Tensor:
    """Sum of saliency (N,H,W) over every box of size (bh_n, bw_n) (N,) by its top-left corner: (N,H,W);
    corners whose box would leave the image are NaN."""
    n, h, w = saliency.shape
    s = torch.nn.functional.pad(saliency.double().cumsum(1).cumsum(2), (1, 0, 1, 0))  # (N, H+1, W+1)
    r = torch.arange(h, device=s.device)[None, :, None]
    c = torch.arange(w, device=s.device)[None, None, :]
    bh, bw = bh.to(s.device)[:, None, None], bw.to(s.device)[:, None, None]
    r2, c2 = (r + bh).clamp(max=h), (c + bw).clamp(max=w)
    flat = s.reshape(n, -1)

    def at(rr, cc):
        return flat.gather(1, (rr * (w + 1) + cc).expand(n, h, w).reshape(n, -1)).view(n, h, w)

    sums = at(r2, c2) - at(r.expand(n, h, 1), c2) - at(r2, c.expand(n, 1, w)) + at(r.expand(n, h, 1), c.expand(n, 1, w))
    valid = (r + bh <= h) & (c + bw <= w)
    return torch.where(valid, sums, torch.full_like(sums, float("nan")))


def _paste(x, src, perm, s_top, s_left, d_top, d_left, bh, bw):
    """Copy box (s_top, s_left, bh, bw) of src[perm[n]] into box (d_top, d_left) of x[n]; returns (out, mask)."""
    n, _, h, w = x.shape
    dev = x.device
    r, c = torch.arange(h, device=dev)[None], torch.arange(w, device=dev)[None]
    rs = (r - d_top.to(dev)[:, None] + s_top.to(dev)[:, None]).clamp(0, h - 1)  # (N, H) source rows
    cs = (c - d_left.to(dev)[:, None] + s_left.to(dev)[:, None]).clamp(0, w - 1)
    moved = src[perm.to(dev)[:, None, None], :, rs[:, :, None], cs[:, None, :]].permute(0, 3, 1, 2)
    mask = _box_mask(h, w, d_top, d_left, bh, bw, dev)
    return torch.where(mask, moved, x), mask


def _argbox(sums: torch.Tensor, largest: bool):
    """(top, left) per image of the largest / smallest non-NaN box sum (first in row-major order on ties)."""
    n, h, w = sums.shape
    fill = float("-inf") if largest else float("inf")
    flat = torch.nan_to_num(sums, nan=fill).reshape(n, -1)
    idx = flat.argmax(1) if largest else flat.argmin(1)
    return idx // w, idx % w


def saliency_cutmix(images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
                    saliency: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                    num_classes: Optional[int] = None) -> Mixed:
    """Saliency-guided CutMix: box side sqrt(1 - lam0) * (H, W) (lam0 ~ Beta(alpha, alpha)); cut the box
    with the largest saliency sum from the partner and paste it where the image's own saliency sum is
    smallest. saliency: (N,H,W) >= 0 (e.g. input gradients of a model), default `image_saliency`.
    lam = kept area; labels mixed by area."""
    x, y = _prep(images, labels, num_classes)
    g = _gen(generator)
    n, _, h, w = x.shape
    sal = image_saliency(x) if saliency is None else saliency.detach().float()
    if sal.shape != (n, h, w):
        raise SslAugError(f"saliency_cutmix: saliency of shape {tuple(sal.shape)} is not allowed; use ({n}, {h}, {w})")
    cut = torch.sqrt(1.0 - _beta(alpha, n, g))
    bh, bw = (cut * h).long(), (cut * w).long()
    perm = torch.randperm(n, generator=g)
    s_top, s_left = _argbox(box_sums(sal[perm.to(sal.device)], bh, bw), largest=True)
    d_top, d_left = _argbox(box_sums(sal, bh, bw), largest=False)
    out, _ = _paste(x, x, perm, s_top.cpu(), s_left.cpu(), d_top.cpu(), d_left.cpu(), bh, bw)
    lam = (1.0 - (bh * bw).float() / (h * w)).to(x.device)
    perm_d = perm.to(x.device)
    return Mixed(out, _mix_targets(y, lam, perm_d), lam, perm_d)


def _random_box(n, h, w, lam0, g):
    cut = torch.sqrt(1.0 - lam0)
    return _centred_box(n, h, w, (cut * h).long(), (cut * w).long(), g)


def snap_weights(cams: torch.Tensor, perm: torch.Tensor, box_a, box_b) -> tuple[torch.Tensor, torch.Tensor]:
    """SnapMix label weights: cams (N,H,W) >= 0, perm (N,), boxes (top, left, height, width) of (N,) ->
    rho_a = 1 - share of CAM_n inside box_a[n], rho_b = share of CAM_perm(n) inside box_b[n]; (1, 0) when
    either box is empty (nothing is pasted)."""
    n, h, w = cams.shape
    dev = cams.device
    cam = cams.detach().double().clamp_min(0)
    cam = cam / cam.sum((1, 2), keepdim=True).clamp_min(1e-12)
    in_a = (cam * _box_mask(h, w, *box_a, dev)[:, 0]).sum((1, 2))
    in_b = (cam[perm] * _box_mask(h, w, *box_b, dev)[:, 0]).sum((1, 2))
    empty = ((box_a[2] * box_a[3] == 0) | (box_b[2] * box_b[3] == 0)).to(dev)
    rho_a = torch.where(empty, torch.ones_like(in_a), 1 - in_a).float()
    rho_b = torch.where(empty, torch.zeros_like(in_b), in_b).float()
    return rho_a, rho_b


def snapmix(images: torch.Tensor, labels: torch.Tensor, cams: torch.Tensor, alpha: float = 1.0,
            generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None) -> Mixed:
    """SnapMix (Huang et al. 2021): a box of the partner (own size, from its own lam) is resized into a
    box of the image (bilinear); label weights come from class-activation mass, not area:
    rho_a = 1 - CAM_a(box_a) / CAM_a(all), rho_b = CAM_b(box_b) / CAM_b(all); targets = rho_a y + rho_b y_perm
    (rows need not sum to 1). cams: (N,H,W) >= 0 activation maps of each image for its own class."""
    x, y = _prep(images, labels, num_classes)
    if y is None:
        raise SslAugError("snapmix needs class labels (its weights are class-activation mass); use another mode")
    g = _gen(generator)
    n, _, h, w = x.shape
    if not isinstance(cams, torch.Tensor) or cams.shape != (n, h, w):
        got = tuple(cams.shape) if isinstance(cams, torch.Tensor) else type(cams).__name__
        raise SslAugError(f"snapmix: cams of shape {got} are not allowed; use ({n}, {h}, {w}) non-negative maps")
    a_top, a_left, a_h, a_w = _random_box(n, h, w, _beta(alpha, n, g), g)
    b_top, b_left, b_h, b_w = _random_box(n, h, w, _beta(alpha, n, g), g)
    perm = torch.randperm(n, generator=g)
    empty = (a_h * a_w == 0) | (b_h * b_w == 0)  # nothing to paste: keep the image and its label
    dev = x.device
    # Sampling grid: target pixel (r, c) in box a reads partner pixel b_top + (r - a_top + 0.5) * b_h / a_h - 0.5.
    r = torch.arange(h, device=dev, dtype=torch.float32)[None]
    c = torch.arange(w, device=dev, dtype=torch.float32)[None]
    f = lambda t: t.to(dev).float()[:, None]  # noqa: E731
    sr = f(b_top) + (r - f(a_top) + 0.5) * f(b_h) / f(a_h).clamp_min(1) - 0.5
    sc = f(b_left) + (c - f(a_left) + 0.5) * f(b_w) / f(a_w).clamp_min(1) - 0.5
    grid = torch.stack([((2 * sc + 1) / w - 1)[:, None, :].expand(n, h, w),
                        ((2 * sr + 1) / h - 1)[:, :, None].expand(n, h, w)], dim=-1)
    moved = torch.nn.functional.grid_sample(x[perm.to(dev)], grid, mode="bilinear", padding_mode="border",
                                            align_corners=False)
    mask = _box_mask(h, w, a_top, a_left, a_h, a_w, dev) & ~empty.to(dev)[:, None, None, None]
    out = torch.where(mask, moved, x)
    rho_a, rho_b = snap_weights(cams.to(dev), perm.to(dev), (a_top, a_left, a_h, a_w), (b_top, b_left, b_h, b_w))
    perm_d = perm.to(dev)
    targets = y.to(dev) * rho_a[:, None] + y.to(dev)[perm_d] * rho_b[:, None]
    return Mixed(out, targets, rho_a, perm_d)


def mix_batch(mode: str, images: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: float = 1.0,
              generator: Optional[torch.Generator] = None, num_classes: Optional[int] = None,
              saliency: Optional[torch.Tensor] = None, cams: Optional[torch.Tensor] = None,
              grid: int = 4, cutout_size: int = 8) -> Mixed:
    """Mix a batch by name (one of MIX_MODES); saliency feeds saliency_cutmix, cams feed snapmix."""
    check_mode(mode)
    kw = dict(generator=generator, num_classes=num_classes)
    if mode == "mixup":
        return mixup(images, labels, alpha, **kw)
    if mode == "cutmix":
        return cutmix(images, labels, alpha, **kw)
    if mode == "cutout":
        return cutout(images, labels, cutout_size, **kw)
    if mode == "gridmix":
        return gridmix(images, labels, alpha, grid, **kw)
    if mode == "saliency_cutmix":
        return saliency_cutmix(images, labels, alpha, saliency, **kw)
    if cams is None:
        raise SslAugError("snapmix needs class activation maps (cams); fine-tuning computes them from the model")
    return snapmix(images, labels, cams, alpha, **kw)


def mix_view(mix: dict, view: torch.Tensor, generator: torch.Generator):
    """i-Mix input mixing of one view batch (N, C, H, W) with a parsed ``mix`` table (:func:`parse_mix`):
    with probability p per image the image is mixed with a partner of the batch. Returns (mixed (N, C, H, W)
    in the view's dtype, lam (N,) own-content weights (1 where not mixed), perm (N,) partner indices)."""
    n = view.shape[0]
    gate = (torch.rand(n, generator=generator) < mix["p"]).to(view.device)
    m = mix_batch(mix["mode"], view, alpha=mix["alpha"], generator=generator, grid=mix["grid"])
    mixed = torch.where(gate[:, None, None, None], m.images.to(view.dtype), view)
    return mixed, torch.where(gate, m.lam, torch.ones_like(m.lam)), m.perm
