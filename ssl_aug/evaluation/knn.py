"""Weighted kNN classification (Wu et al. 2018) on L2-normalised features with faiss.

Scores: for query q with neighbours n_1..n_k, score[q, c] = sum_{i: y(n_i) = c} exp(sim(q, n_i) / T),
sim = cosine similarity; prediction = argmax (lowest class index on an exact tie).

Exact search ("flat" index or the torch backend) returns the predictions of that definition computed
exactly (float64 similarities, ties in similarity -> lower train index): see knn_exact for the rounding
certificate and the re-solve of near-tied queries. The "ivf" index is approximate (faiss IndexIVFFlat);
knn_evaluate then measures its agreement with exact search on a sample of queries.

Leave-one-out: when the queries are the bank's own images (e.g. eval.test_split = "train"), pass
self_index so that a query never votes for itself (similarity 1, weight e^(1/T)).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation.base import Evaluator, EvaluatorConfig, pct, register_evaluator
from ssl_aug.evaluation.knn_exact import finish

INDEXES = ("flat", "ivf")


# ----------------------------------------------------------------------------------------- validation
def _check_inputs(train_features, train_labels, test_features, num_classes, test_labels=None):
    """Validate shapes/labels; return (train_f, train_y int64, test_f, num_classes) as CPU tensors."""
    tf = torch.as_tensor(train_features)
    qf = torch.as_tensor(test_features)
    ty = torch.as_tensor(train_labels)
    if tf.ndim != 2 or qf.ndim != 2:
        raise SslAugError(f"features must be 2-D (N, D); got train {tuple(tf.shape)} and test {tuple(qf.shape)}")
    if tf.shape[1] != qf.shape[1]:
        raise SslAugError(f"feature dims differ: train D={tf.shape[1]} vs test D={qf.shape[1]}; they must match")
    if tf.shape[0] == 0:
        raise SslAugError("train_features is empty; need at least 1 training row")
    if ty.ndim != 1 or ty.shape[0] != tf.shape[0]:
        raise SslAugError(f"train_labels has shape {tuple(ty.shape)}; expected ({tf.shape[0]},), one label per train row")
    if test_labels is not None:
        qy = torch.as_tensor(test_labels)
        if qy.ndim != 1 or qy.shape[0] != qf.shape[0]:
            raise SslAugError(f"test_labels has shape {tuple(qy.shape)}; expected ({qf.shape[0]},), one per test row")
    if ty.dtype.is_floating_point or ty.dtype == torch.bool:
        raise SslAugError(f"train_labels must be integer class ids, got dtype {ty.dtype}")
    ty = ty.long().cpu()
    lo, hi = int(ty.min()), int(ty.max())
    if lo < 0:
        raise SslAugError(f"train_labels contains {lo}; allowed class ids are 0..C-1 (unlabeled rows cannot vote)")
    if num_classes is None:
        num_classes = hi + 1
    if hi >= num_classes:
        raise SslAugError(f"train_labels contains {hi} but num_classes={num_classes}; allowed ids are 0..{num_classes - 1}")
    return tf.float().cpu(), ty, qf.float().cpu(), int(num_classes)


MIN_TEMPERATURE = 0.002  # exp(1 / T) stays below float64's largest value (exp(709))


def _check_params(ks, temperature, n_train):
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise SslAugError(f"k must be >= 1, got {ks}")
    if not MIN_TEMPERATURE <= temperature < math.inf:
        raise SslAugError(f"kNN temperature {temperature} is not allowed; use a finite number >= {MIN_TEMPERATURE} "
                          "(the vote weights exp(similarity / T) overflow below it)")
    if max(ks) > n_train:
        warnings.warn(f"k={max(ks)} > number of training rows {n_train}; using k={n_train} where larger", stacklevel=3)
        ks = [min(k, n_train) for k in ks]
    return ks


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1).contiguous()


# ----------------------------------------------------------------------------------------- search backends
def _faiss_threads():
    import faiss

    faiss.omp_set_num_threads(max(1, torch.get_num_threads()))
    return faiss


def build_index(train_f: torch.Tensor, index: str = "flat", nlist: int | None = None, nprobe: int = 16, seed: int = 0):
    """faiss inner-product index over L2-normalised train features (N, D).
    index="flat": exact IndexFlatIP. index="ivf": IndexIVFFlat (approximate), nlist lists (default
    ~4*sqrt(N)), nprobe lists searched per query; trained on up to 256*nlist rows."""
    faiss = _faiss_threads()
    x = np.ascontiguousarray(train_f.numpy(), dtype=np.float32)
    d = x.shape[1]
    if index == "flat":
        idx = faiss.IndexFlatIP(d)
    elif index == "ivf":
        n = x.shape[0]
        nlist = int(nlist or max(1, min(n // 39, round(4 * math.sqrt(n)))))
        if not 1 <= nlist <= n:
            raise SslAugError(f"nlist must be in 1..{n} (number of train rows), got {nlist}")
        quantizer = faiss.IndexFlatIP(d)
        idx = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(n, size=min(n, 256 * nlist), replace=False)] if n > 256 * nlist else x
        idx.cp.seed = seed
        idx.train(sample)
        idx.nprobe = int(max(1, min(nprobe, nlist)))
    else:
        raise SslAugError(f"index must be one of {INDEXES}, got {index!r}")
    idx.add(x)
    return idx


def faiss_search(index, q: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, D) queries -> (sims (m,k) float32 sorted decreasing, ids (m,k) int64; -1 = none found)."""
    _faiss_threads()
    d, i = index.search(np.ascontiguousarray(q.numpy(), dtype=np.float32), k)
    return torch.from_numpy(d), torch.from_numpy(i)


def torch_search(train_f: torch.Tensor, q: torch.Tensor, k: int, chunk: int = 8192):
    """Brute-force reference: chunked (q @ train_chunk.T) + topk, merged; never the full (m, N) matrix
    when N > chunk. Returns (sims (m,k) float32 sorted decreasing, ids (m,k) int64)."""
    best_s = best_i = None
    for j in range(0, train_f.shape[0], chunk):
        s = q @ train_f[j:j + chunk].T
        kk = min(k, s.shape[1])
        v, i = torch.topk(s, kk, dim=1)
        i += j
        if best_s is not None:
            v, pos = torch.topk(torch.cat([best_s, v], 1), min(k, best_s.shape[1] + kk), dim=1)
            i = torch.gather(torch.cat([best_i, i], 1), 1, pos)
        best_s, best_i = v, i
    return best_s, best_i


# ----------------------------------------------------------------------------------------- public API
def _check_self_index(self_index, m: int, n: int) -> torch.Tensor | None:
    """None / True (queries are the train rows in order) / (M,) ints in -1..N-1 -> None or (M,) int64."""
    if self_index is None or self_index is False:
        return None
    if self_index is True:
        if m != n:
            raise SslAugError(f"self_index=True needs the queries to be the train rows (M == N), got M={m}, N={n}")
        return torch.arange(n)
    si = torch.as_tensor(self_index)
    if si.shape != (m,) or si.dtype.is_floating_point or si.dtype == torch.bool:
        raise SslAugError(f"self_index must be True or ({m},) integer train rows (-1 = none), got "
                          f"{tuple(si.shape)} {si.dtype}")
    si = si.long().cpu()
    if si.numel() and (int(si.min()) < -1 or int(si.max()) >= n):
        raise SslAugError(f"self_index values must be in -1..{n - 1}, got {int(si.min())}..{int(si.max())}")
    return si


def _drop_self(sims: torch.Tensor, idx: torch.Tensor, si: torch.Tensor):
    """(m, K+1) candidates -> (m, K) without each query's own row (or without the last when absent)."""
    hit = (idx == si[:, None]) & (si[:, None] >= 0)
    hit[:, -1] |= ~hit.any(1)
    keep = ~hit
    m, k = idx.shape
    return sims[keep].view(m, k - 1), idx[keep].view(m, k - 1)


def knn_scores(train_features, train_labels, test_features, ks: Sequence[int] = (200,), temperature: float = 0.1,
               num_classes: int | None = None, backend: str = "faiss", index: str = "flat", nlist: int | None = None,
               nprobe: int = 16, query_chunk: int = 4096, normalize: bool = True, progress: bool = False,
               return_stats: bool = False, margin: int = 32, self_index=None):
    """Several k in one search: returns {k: float64 scores (M, C)} (and stats if return_stats).

    train_features (N, D), train_labels (N,) ints in 0..C-1, test_features (M, D); features are
    L2-normalised here unless normalize=False (then they must already be unit rows). backend "faiss"
    (index "flat" exact / "ivf" approximate) or "torch" (chunked mm + topk reference). The search asks
    for max(k)+margin neighbours once (the margin lets near-ties be re-solved from the candidates);
    queries are processed query_chunk at a time (bounded memory). self_index: leave-one-out, query i
    never votes for train row self_index[i] (-1 = none); True = the queries are the train rows in order."""
    from tqdm.auto import tqdm

    tf, ty, qf, c = _check_inputs(train_features, train_labels, test_features, num_classes)
    si = _check_self_index(self_index, qf.shape[0], tf.shape[0])
    loo = si is not None and bool((si >= 0).any())
    if loo and tf.shape[0] < 2:
        raise SslAugError("leave-one-out kNN needs at least 2 train rows, got 1")
    n_min = tf.shape[0] - int(loo)          # the smallest bank a query sees
    ks = _check_params(ks, temperature, n_min)
    if backend not in ("faiss", "torch"):
        raise SslAugError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    if normalize:
        tf, qf = _normalize(tf), _normalize(qf)
    kq = min(max(ks) + margin, n_min)
    approx = backend == "faiss" and index != "flat"
    faiss_index = build_index(tf, index, nlist, nprobe) if backend == "faiss" else None
    parts = {k: [] for k in set(ks)}
    resolved = 0
    for i in tqdm(range(0, qf.shape[0], query_chunk), desc="knn", disable=not progress, leave=False):
        q = qf[i:i + query_chunk]
        kk = kq + (si is not None)
        sims, idx = faiss_search(faiss_index, q, kk) if faiss_index is not None else torch_search(tf, q, kk)
        s_i = None if si is None else si[i:i + query_chunk]
        if s_i is not None:
            sims, idx = _drop_self(sims, idx, s_i)
        s, n = finish(tf, ty, q, sims, idx, ks, temperature, c, approx, s_i)
        resolved += n
        for k in parts:
            parts[k].append(s[k])
    out = {k: (torch.cat(v) if v else torch.zeros(0, c, dtype=torch.float64)) for k, v in parts.items()}
    stats = {"resolved_rows": resolved, "index": index if backend == "faiss" else "torch", "leave_one_out": loo}
    return (out, stats) if return_stats else out


def knn_classify(train_features, train_labels, test_features, k: int = 200, temperature: float = 0.1,
                 num_classes: int | None = None, **kw) -> torch.Tensor:
    """Weighted-vote kNN scores (M, C) float64: score[q, c] = sum over the k nearest train rows of class c
    of exp(cos_sim / temperature). Prediction = scores.argmax(1). kw: see knn_scores (backend, index, ...)."""
    scores = knn_scores(train_features, train_labels, test_features, (k,), temperature, num_classes, **kw)
    return next(iter(scores.values()))


def classification_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int | None = None) -> dict:
    """scores (M, C), labels (M,) -> {"top1", "top5", "per_class": [acc per class (nan if absent)]}.
    Ranking uses a stable descending sort (ties -> lower class index)."""
    labels = torch.as_tensor(labels).long().cpu()
    c = scores.shape[1] if num_classes is None else num_classes
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :5]
    hit1 = order[:, 0] == labels
    hit5 = (order == labels[:, None]).any(1)
    m = max(1, labels.shape[0])
    count = torch.bincount(labels, minlength=c).double()
    correct = torch.bincount(labels[hit1], minlength=c).double()
    per_class = torch.where(count > 0, correct / count.clamp_min(1), torch.tensor(float("nan"), dtype=torch.float64))
    return {"top1": float(hit1.sum()) / m, "top5": float(hit5.sum()) / m, "per_class": per_class.tolist()}


def knn_evaluate(train_f, train_y, test_f, test_y, ks: Sequence[int] = (200,), temperature: float = 0.1,
                 num_classes: int | None = None, agreement_queries: int = 1000, **kw) -> dict:
    """kNN accuracy for every k in `ks` from one search; kw: see knn_scores (index, nlist, nprobe, self_index...).
    Returns {"k": ks[0], "temperature", "top1", "top5", "per_class" (for ks[0]), "by_k": {k: {...}},
    "index", "resolved_rows", "leave_one_out"} — resolved_rows = queries re-solved exactly because of
    near-ties. With the approximate index="ivf" also "ivf_agreement": the fraction of top-1 predictions
    (first k) equal to exact search, measured on "ivf_agreement_queries" (up to agreement_queries,
    a seeded random sample of the queries)."""
    tf, _, qf, c = _check_inputs(train_f, train_y, test_f, num_classes, test_labels=test_y)
    qy = torch.as_tensor(test_y).long().cpu()
    if qy.numel() and (int(qy.min()) < 0 or int(qy.max()) >= c):
        raise SslAugError(f"test_labels must be in 0..{c - 1}, got values {int(qy.min())}..{int(qy.max())}")
    ks_in = [int(k) for k in ks]
    scores, stats = knn_scores(train_f, train_y, test_f, ks_in, temperature, c, return_stats=True, **kw)
    n = tf.shape[0] - int(stats["leave_one_out"])
    by_k = {k: classification_metrics(scores[min(k, n)], qy, c) for k in ks_in}
    out = {"k": ks_in[0], "temperature": float(temperature), **by_k[ks_in[0]], "by_k": by_k, **stats}
    if kw.get("backend", "faiss") == "faiss" and kw.get("index", "flat") != "flat" and qf.shape[0]:
        m = min(qf.shape[0], max(1, int(agreement_queries)))
        rows = torch.randperm(qf.shape[0], generator=torch.Generator().manual_seed(0))[:m].sort().values
        si = _check_self_index(kw.get("self_index"), qf.shape[0], tf.shape[0])
        exact_kw = {key: v for key, v in kw.items() if key not in ("index", "nlist", "nprobe", "self_index")}
        exact = knn_scores(train_f, train_y, qf[rows], (min(ks_in[0], n),), temperature, c, index="flat",
                           self_index=None if si is None else si[rows], **exact_kw)
        approx_pred = scores[min(ks_in[0], n)][rows].argmax(1)
        out["ivf_agreement"] = float((approx_pred == next(iter(exact.values())).argmax(1)).double().mean())
        out["ivf_agreement_queries"] = m
    return out


@register_evaluator("knn")
class KnnEvaluator(Evaluator):
    """Weighted kNN (Wu et al. 2018) on L2-normalised features: top-1 / top-5 per k, per class, and with
    subgroup labels the accuracy per (class, group). Leave-one-out when the queries are the bank."""

    @dataclass
    class Config(EvaluatorConfig):
        k: list = field(default_factory=lambda: [200])  # one k or several (the first is the headline)
        temperature: float = 0.1
        index: str = "flat"  # "ivf": faiss IVF (approximate; agreement with exact search reported)
        nlist: int = 0
        nprobe: int = 16

    def run(self, ctx) -> dict:
        c = self.config
        ks = tuple(c.k) if isinstance(c.k, (list, tuple)) else (int(c.k),)
        kw = {"index": c.index, "nlist": c.nlist or None, "nprobe": c.nprobe,
              "self_index": True if ctx.leave_one_out else None}
        tr_f, te_f = ctx.features("train"), ctx.features("test")
        out = knn_evaluate(tr_f, ctx.train[1], te_f, ctx.test[1], ks=ks, temperature=c.temperature,
                           num_classes=ctx.num_classes, **kw)
        if ctx.test_groups is not None:
            from ssl_aug.evaluation.groups import group_metrics, predictions

            pred = predictions(knn_classify(tr_f, ctx.train[1], te_f, ks[0], c.temperature, ctx.num_classes, **kw))
            out["groups"] = group_metrics(pred, ctx.test[1], ctx.test_groups, ctx.classes, ctx.group_names)
        return out

    def rows(self, r: dict) -> list:
        how = ", leave-one-out" if r.get("leave_one_out") else ""
        if "ivf_agreement" in r:
            how += (f", IVF index: top-1 agrees with exact search on {100 * r['ivf_agreement']:.1f}% of "
                    f"{r['ivf_agreement_queries']} sampled queries")
        return [(f"kNN (k={k}, T={r['temperature']:g}{how})", pct(m["top1"]), pct(m["top5"]), "-")
                for k, m in r["by_k"].items()]
