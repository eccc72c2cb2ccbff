"""Weighted kNN classification (Wu et al. 2018) on L2-normalised features with faiss.

Scores: for query q with neighbours n_1..n_k, score[q, c] = sum_{i: y(n_i) = c} exp(sim(q, n_i) / T),
sim = cosine similarity; prediction = argmax (lowest class index on an exact tie).

Exactness contract (why faiss and the torch brute force give identical predictions). Both search the
top max(k)+margin neighbours with float32 inner products, whose error against the exact product of the
same float32 vectors is at most delta = D * 2^-24 / (1 - D * 2^-24) for unit vectors (any summation
order). From that bound each query gets a certificate (see _uncertain): the top-1/top-2 class score
gap must exceed the largest change that rounding could cause, including neighbours within
2*delta of the k-th swapping in or out. Queries without a certificate (near-ties, including exact ties
between duplicate training points) are re-solved exactly: float64 similarities, ties in similarity
broken by the lower train index, float64 votes. Hence every backend returns the predictions of that
exact definition (top-1). Scores of certified rows can differ across backends by the rounding bound and
by swaps of near-tied neighbours at the k-th position (the certificate covers their effect on top-1);
top-5 is not certified and can differ only on such near-ties.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ssl_aug.errors import SslAugError

_U32 = 2.0 ** -24
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


def _check_params(ks, temperature, n_train):
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise SslAugError(f"k must be >= 1, got {ks}")
    if not temperature > 0:
        raise SslAugError(f"temperature must be > 0, got {temperature}")
    if max(ks) > n_train:
        warnings.warn(f"k={max(ks)} > number of training rows {n_train}; using k={n_train} where larger", stacklevel=3)
        ks = [min(k, n_train) for k in ks]
    return ks


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1).contiguous()


def sim_error_bound(dim: int) -> float:
    """Max |float32 dot - exact dot| for two unit vectors of dimension `dim` (gamma_D, with slack)."""
    g = dim * _U32
    return 1.01 * g / (1.0 - g) + 1e-7


# ----------------------------------------------------------------------------------------- voting
def _votes(sims: torch.Tensor, idx: torch.Tensor, train_y: torch.Tensor, ks: Sequence[int], temperature: float,
           num_classes: int) -> dict[int, torch.Tensor]:
    """sims/idx (m, K) sorted by decreasing similarity (idx -1 = missing) -> {k: float64 scores (m, C)}.
    One scatter per distinct k, accumulated from the smaller k."""
    valid = idx >= 0
    labels = torch.where(valid, train_y[idx.clamp_min(0)], 0)
    w = torch.where(valid, torch.exp(sims.double() / temperature), 0.0)
    scores, out, prev = torch.zeros(sims.shape[0], num_classes, dtype=torch.float64), {}, 0
    for k in sorted(set(ks)):
        scores = scores.scatter_add(1, labels[:, prev:k], w[:, prev:k])
        out[k], prev = scores, k
    return out


def _uncertain(sims: torch.Tensor, scores: dict[int, torch.Tensor], ks, n_train: int, delta: float,
               temperature: float) -> torch.Tensor:
    """(m,) bool: rows whose exact top-1 could differ from the one voted on float32 similarities.

    Each similarity is within delta of exact, so each class score is within a relative rho of exact.
    Near the k-th neighbour, rows within 2*delta of the boundary (inside: n_in, outside: n_out) may swap:
    at most n_swap = min(n_in, n_out) swaps, each moving at most w_b = exp((s_k + 3 delta) / T) of vote
    between two classes. The top-1/top-2 gap is certain if it exceeds both effects."""
    m, kq = sims.shape
    bad = torch.zeros(m, dtype=torch.bool)
    rho = math.expm1(delta / temperature) * 1.001 + 1e-12
    s64 = sims.double()
    for k in set(ks):
        if k < kq:
            sk, snext = s64[:, k - 1:k], s64[:, k:k + 1]
            n_out = (s64[:, k:] >= sk - 2 * delta).sum(1)
            n_in = (s64[:, :k] <= snext + 2 * delta).sum(1)
            n_swap = torch.minimum(n_in, n_out).double()
            w_b = torch.exp((sk[:, 0] + 3 * delta) / temperature)
            swing = 2 * n_swap * w_b * (1 + rho)
            if kq < n_train:   # an unlisted row might enter the top-k: cannot bound it here
                bad |= s64[:, -1] >= sk[:, 0] - 2 * delta
        else:
            n_swap = swing = torch.zeros(m, dtype=torch.float64)
        if scores[k].shape[1] > 1:
            hi, lo = torch.topk(scores[k], 2, dim=1).values.unbind(1)
            bad |= (hi - lo) <= (hi + lo) * rho + swing
    return bad


def _exact_candidates(train_f, train_y, q, ids, ks, temperature, num_classes, chunk: int = 256):
    """Exact float64 votes for rows q (r, D) whose exact top-k lies among candidate ids (r, K'):
    candidates re-scored in float64, ordered by (similarity desc, train index asc)."""
    out = {k: [] for k in set(ks)}
    kmax = max(ks)
    for i in range(0, q.shape[0], chunk):
        ids_i = torch.sort(ids[i:i + chunk], dim=1).values            # index ascending: tie-break
        x = train_f.index_select(0, ids_i.flatten()).view(*ids_i.shape, -1).double()
        sims = (x * q[i:i + chunk].double()[:, None, :]).sum(-1)
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kmax]
        v = _votes(torch.gather(sims, 1, order), torch.gather(ids_i, 1, order), train_y, ks, temperature,
                   num_classes)
        for k in out:
            out[k].append(v[k])
    return {k: torch.cat(v) for k, v in out.items()}


def _exact_rows(train_f: torch.Tensor, train_y: torch.Tensor, q: torch.Tensor, ks, temperature: float,
                num_classes: int, chunk: int = 64) -> dict[int, torch.Tensor]:
    """Exact float64 kNN votes for a few query rows q (r, D) against the whole train set:
    ties in similarity -> lower train index (stable sort)."""
    kmax = max(ks)
    out = {k: [] for k in set(ks)}
    for i in range(0, q.shape[0], chunk):
        qd = q[i:i + chunk].double()
        sims = torch.cat([qd @ train_f[j:j + 16384].double().T for j in range(0, train_f.shape[0], 16384)], dim=1)
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kmax]
        v = _votes(torch.gather(sims, 1, order), order, train_y, ks, temperature, num_classes)
        for k in out:
            out[k].append(v[k])
    return {k: torch.cat(v) for k, v in out.items()}


def _finish(train_f, train_y, q, sims, idx, ks, temperature, num_classes, approx):
    """Votes for a chunk of queries; uncertain rows re-solved exactly. -> ({k: scores}, n_resolved)."""
    scores = _votes(sims, idx, train_y, ks, temperature, num_classes)
    if approx:
        return scores, 0
    n, delta = train_f.shape[0], sim_error_bound(train_f.shape[1])
    rows = _uncertain(sims, scores, ks, n, delta, temperature).nonzero().flatten()
    if rows.numel():
        # the candidate list holds the exact top-k when every unlisted row is > 2 delta below the k-th
        kmax = max(ks)
        covered = (idx.shape[1] >= n) | (sims[rows, -1].double() < sims[rows, kmax - 1].double() - 2 * delta)
        for sel, exact_fn in ((rows[covered], "cand"), (rows[~covered], "full")):
            if sel.numel() == 0:
                continue
            if exact_fn == "cand":
                exact = _exact_candidates(train_f, train_y, q[sel], idx[sel], ks, temperature, num_classes)
            else:
                exact = _exact_rows(train_f, train_y, q[sel], ks, temperature, num_classes)
            for k in scores:
                scores[k][sel] = exact[k]
    return scores, int(rows.numel())


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
def knn_scores(train_features, train_labels, test_features, ks: Sequence[int] = (200,), temperature: float = 0.1,
               num_classes: int | None = None, backend: str = "faiss", index: str = "flat", nlist: int | None = None,
               nprobe: int = 16, query_chunk: int = 4096, normalize: bool = True, progress: bool = False,
               return_stats: bool = False, margin: int = 32):
    """Several k in one search: returns {k: float64 scores (M, C)} (and stats if return_stats).

    train_features (N, D), train_labels (N,) ints in 0..C-1, test_features (M, D); features are
    L2-normalised here unless normalize=False (then they must already be unit rows). backend "faiss"
    (index "flat" exact / "ivf" approximate) or "torch" (chunked mm + topk reference). The search asks
    for max(k)+margin neighbours once (the margin lets near-ties be re-solved from the candidates); queries are processed query_chunk at a time (bounded memory)."""
    from tqdm.auto import tqdm

    tf, ty, qf, c = _check_inputs(train_features, train_labels, test_features, num_classes)
    ks = _check_params(ks, temperature, tf.shape[0])
    if backend not in ("faiss", "torch"):
        raise SslAugError(f"backend must be 'faiss' or 'torch', got {backend!r}")
    if normalize:
        tf, qf = _normalize(tf), _normalize(qf)
    kq = min(max(ks) + margin, tf.shape[0])
    approx = backend == "faiss" and index != "flat"
    faiss_index = build_index(tf, index, nlist, nprobe) if backend == "faiss" else None
    parts = {k: [] for k in set(ks)}
    resolved = 0
    for i in tqdm(range(0, qf.shape[0], query_chunk), desc="knn", disable=not progress, leave=False):
        q = qf[i:i + query_chunk]
        sims, idx = faiss_search(faiss_index, q, kq) if faiss_index is not None else torch_search(tf, q, kq)
        s, n = _finish(tf, ty, q, sims, idx, ks, temperature, c, approx)
        resolved += n
        for k in parts:
            parts[k].append(s[k])
    out = {k: (torch.cat(v) if v else torch.zeros(0, c, dtype=torch.float64)) for k, v in parts.items()}
    return (out, {"resolved_rows": resolved, "index": index if backend == "faiss" else "torch"}) if return_stats else out


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
                 num_classes: int | None = None, **kw) -> dict:
    """kNN accuracy for every k in `ks` from one search.
    Returns {"k": ks[0], "temperature", "top1", "top5", "per_class" (for ks[0]), "by_k": {k: {...}},
    "index", "resolved_rows"} — resolved_rows = queries re-solved exactly because of near-ties."""
    _, _, qf, c = _check_inputs(train_f, train_y, test_f, num_classes, test_labels=test_y)
    qy = torch.as_tensor(test_y).long().cpu()
    if qy.numel() and (int(qy.min()) < 0 or int(qy.max()) >= c):
        raise SslAugError(f"test_labels must be in 0..{c - 1}, got values {int(qy.min())}..{int(qy.max())}")
    ks_in = [int(k) for k in ks]
    scores, stats = knn_scores(train_f, train_y, test_f, ks_in, temperature, c, return_stats=True, **kw)
    n = torch.as_tensor(train_y).shape[0]
    by_k = {k: classification_metrics(scores[min(k, n)], qy, c) for k in ks_in}
    first = by_k[ks_in[0]]
    return {"k": ks_in[0], "temperature": float(temperature), **first, "by_k": by_k, **stats}
