"""Quality gating of extra (e.g. synthetic) images: a linear classifier on a frozen encoder's features,
trained on the real labelled reference data, scores every candidate; a labelled candidate is kept when
the predicted class agrees with its label and the confidence (max class probability) is >= C, an
unlabelled one when its confidence is >= C (it is kept with the predicted class as its label).

    ssl-aug data gate CANDIDATES --encoder ENC --reference DATA --min-confidence C --out DIR [--with-reference]
    (the command line lives in ssl_aug/cli/gate.py)

CANDIDATES: a folder of npz shards (x (N,H,W,3) uint8, optional y), one .npz file, or a class-per-folder
image tree (decoded into the cache, at the reference size). The candidates are only read, never
modified or deleted. DIR gets train_00000.npz (the kept images; with --with-reference the reference
images first, so DIR is directly a "real + gated" training set: data.name = "npz", data.root = DIR,
split "train"), classes.txt, gate_report.json (kept / rejected per class, the classifier's
held-out accuracy) and confidence_histogram.png.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.features import extract_features
from ssl_aug.evaluation.linear import LinearClassifier
from ssl_aug.io import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["gate", "score_candidates", "fit_gate_classifier", "load_candidates", "check_confidence"]


def fit_gate_classifier(features: torch.Tensor, labels: torch.Tensor, num_classes: int, epochs: int = 300,
                        lr: float = 0.01, weight_decay: float = 1e-4, holdout: float = 0.2, seed: int = 0):
    """Full-batch Adam linear classifier on standardised features (N, D) -> (classifier, held-out accuracy
    of a fit on the other 1 - holdout, or None for tiny sets). The returned classifier uses all images."""
    def fit(f, y):
        torch.manual_seed(seed)
        model = LinearClassifier(f.shape[1], num_classes, f.mean(0), f.std(0).clamp_min(1e-6))
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(epochs):
            loss = F.cross_entropy(model(f), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return model.eval()

    acc = None
    n_val = int(len(labels) * holdout)
    if n_val >= num_classes:
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        probe = fit(features[perm[n_val:]], labels[perm[n_val:]])
        with torch.no_grad():
            acc = float((probe(features[perm[:n_val]]).argmax(1) == labels[perm[:n_val]]).double().mean())
    return fit(features, labels), acc


def score_candidates(classifier, features: torch.Tensor, labels: torch.Tensor, min_confidence: float):
    """-> (keep (N,) bool, predicted (N,), confidence (N,)): labelled rows need agreement and confidence,
    unlabelled rows (-1) confidence only."""
    check_confidence(min_confidence)
    with torch.no_grad():
        probs = classifier(features).softmax(1)
    conf, pred = probs.max(1)
    keep = (conf >= min_confidence) & ((labels < 0) | (pred == labels))
    return keep, pred, conf


def check_confidence(c) -> float:
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0.0 <= c <= 1.0:
        raise SslAugError(f"--min-confidence {c!r} is not allowed; allowed: a probability in [0, 1]")
    return float(c)


def load_candidates(path, size: int):
    """Candidate images -> (images uint8 (N,3,H,W), labels (N,) with -1 = unlabelled, class names, or None
    when npz shards name none: then labels are read as the reference's class ids)."""
    from ssl_aug.data.npz import load_shards, read_classes, sorted_shards

    p = Path(path).expanduser()
    if p.is_file() and p.suffix == ".npz":
        names = read_classes(p.parent)  # None without classes.txt / meta.json: labels are reference class ids
        ds = load_shards([p], "candidates", names)
    elif p.is_dir() and any(p.glob("*.npz")):
        names = read_classes(p)
        ds = load_shards(sorted_shards(p.glob("*.npz")), "candidates", names)
    elif p.is_dir():
        from ssl_aug.data.imagefolder import load_imagefolder

        ds = load_imagefolder("train", p, size=size, verbose=False)  # decoded into the cache, never in place
        names = ds.classes
    else:
        raise SslAugError(f"candidates {p} not found: give a folder of npz shards, an .npz file or an image folder")
    return ds.images, ds.labels, names


def gate(encoder, mean, std, reference, candidates, min_confidence: float, out_dir, with_reference: bool = False,
         candidate_classes=None, batch_size: int = 512, seed: int = 0, source: str = "", progress: bool = False) -> dict:
    """Gate `candidates` = (images uint8 (N,3,H,W), labels (N,)) against `reference` (an ImageDataset with
    labels) and write the kept set and the report into out_dir (see the module docstring). Returns the report."""
    min_confidence = check_confidence(min_confidence)
    cx, cy = candidates
    cy = torch.as_tensor(cy).long()
    rx, ry = reference.images, reference.labels
    if cx.ndim != 4 or cx.shape[1] != rx.shape[1] or cx.shape[2:] != rx.shape[2:]:
        raise SslAugError(f"candidates are {tuple(cx.shape[1:])} (channels, height, width) but the reference images "
                          f"are {tuple(rx.shape[1:])}; give candidates of the reference's size and channel count")
    classes = list(reference.classes)
    if candidate_classes is not None and len(candidate_classes) and list(candidate_classes) != classes \
            and int(cy.max()) >= 0:
        raise SslAugError(f"candidate classes {list(candidate_classes)[:5]} differ from the reference classes "
                          f"{classes[:5]}; labels must mean the same classes")
    if cy.numel() and int(cy.max()) >= len(classes):
        raise SslAugError(f"candidate labels reach {int(cy.max())}; allowed -1 (unlabelled) or 0..{len(classes) - 1}")
    lab = ry >= 0
    if int(lab.sum()) < len(classes):
        raise SslAugError(f"the reference has {int(lab.sum())} labelled images; the gate needs labelled real data")
    try:
        rf = extract_features(encoder, rx[lab], mean, std, batch_size=batch_size, progress=progress)
    except RuntimeError as e:
        raise SslAugError(f"the encoder does not match the reference images {tuple(rx.shape[1:])}: "
                          f"{str(e).splitlines()[0]}") from None
    cf = extract_features(encoder, cx, mean, std, batch_size=batch_size, progress=progress)
    clf, held_out = fit_gate_classifier(rf, ry[lab], len(classes), seed=seed)
    keep, pred, conf = score_candidates(clf, cf, cy, min_confidence)
    kept_labels = torch.where(cy >= 0, cy, pred)[keep]
    out = Path(out_dir).expanduser()
    _check_out(out, source)
    xs, ys = [cx[keep]], [kept_labels]
    if with_reference:
        xs, ys = [rx] + xs, [ry] + ys
    x = torch.cat(xs).permute(0, 2, 3, 1).contiguous().numpy()
    y = torch.cat(ys).numpy().astype(np.int64)
    atomic_write(out / "train_00000.npz", lambda f: np.savez(f, x=x, y=y), what="gated shard")
    atomic_write_text(out / "classes.txt", "".join(c + "\n" for c in classes))
    per_class = {}
    for i, name in enumerate(classes):
        sel = torch.where(cy >= 0, cy, pred) == i
        per_class[name] = {"kept": int((keep & sel).sum()), "rejected": int((~keep & sel).sum())}
    hist, edges = np.histogram(conf.numpy(), bins=20, range=(0.0, 1.0))
    report = {"source": source, "min_confidence": min_confidence, "candidates": int(len(cy)),
              "kept": int(keep.sum()), "rejected": int((~keep).sum()), "labelled": int((cy >= 0).sum()),
              "rejected_disagreeing": int(((cy >= 0) & (pred != cy)).sum()),
              "rejected_unconfident": int((~keep & (conf < min_confidence)).sum()),
              "reference_images": int(lab.sum()), "classifier_held_out_accuracy": held_out,
              "with_reference": bool(with_reference), "images_written": int(len(y)), "per_class": per_class,
              "confidence_histogram": {"edges": edges.tolist(), "counts": hist.tolist()},
              "kept_mask": keep.tolist()}
    atomic_write_json(out / "gate_report.json", report)
    from ssl_aug.evaluation.plots import plot_confidence_histogram

    plot_confidence_histogram(conf.numpy(), keep.numpy(), min_confidence, out / "confidence_histogram.png",
                              title=f"gate: {report['kept']} of {report['candidates']} kept (C = {min_confidence:g})")
    return report


def _check_out(out: Path, source: str) -> None:
    if out.exists() and not out.is_dir():
        raise SslAugError(f"--out {out} is a file; give a folder for the kept shards and the report")
    if source:
        src = Path(source).expanduser().resolve()
        src_dir = src if src.is_dir() else src.parent
        if out.resolve() == src_dir or out.resolve().is_relative_to(src_dir) and src.is_dir():
            raise SslAugError(f"--out {out} is inside the candidates {src}; the gate never writes there, choose "
                              "another folder")
    out.mkdir(parents=True, exist_ok=True)
