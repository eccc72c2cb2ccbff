"""Exactness of the kNN vote: the rounding certificate and the exact re-solve of uncertain queries.

Both search backends return the top neighbours by float32 inner products, whose error against the exact
product of the same float32 vectors is at most delta = sim_error_bound(D) for unit vectors. For every
query and every class c other than the voted top-1 class t, the certificate checks that t's lead over c
exceeds the largest change rounding can cause: each weight moves by a relative rho = expm1(delta / T),
and rows within 2*delta of the k-th similarity may swap in or out of the top k (at most
n_swap = min(inside band, outside band) swaps); a swap can only lower t's lead over c by removing a row of
class t or adding a row of class c, each worth at most w_b = exp((s_k + 3 delta) / T). Rows failing it
(near-ties, exact ties between duplicates) are re-solved exactly: float64 similarities (the product of
two float32 numbers is exact in float64), ties in similarity broken by the lower train index, float64
votes.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

_U32 = 2.0 ** -24


def sim_error_bound(dim: int) -> float:
    """Max |float32 dot - exact dot| for two unit vectors of dimension `dim` (gamma_D, with slack)."""
    g = dim * _U32
    return 1.01 * g / (1.0 - g) + 1e-7


def votes(sims: torch.Tensor, idx: torch.Tensor, train_y: torch.Tensor, ks: Sequence[int], temperature: float,
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


def uncertain(sims: torch.Tensor, labels: torch.Tensor, scores: dict[int, torch.Tensor], ks, unlisted: torch.Tensor,
              delta: float, temperature: float) -> torch.Tensor:
    """(m,) bool: rows whose exact top-1 could differ from the one voted on float32 similarities.

    sims (m, K) sorted decreasing, labels (m, K) their classes, scores {k: (m, C)} from votes(),
    unlisted (m,) bool: the bank holds rows outside the K listed ones (they could enter the top k)."""
    m, kq = sims.shape
    bad = torch.zeros(m, dtype=torch.bool)
    rho = math.expm1(delta / temperature) * 1.001 + 1e-12
    s64 = sims.double()
    for k in set(ks):
        sc = scores[k]
        top = sc.argmax(1, keepdim=True)                                   # first maximum: lowest class index
        hi = sc.gather(1, top)
        lose_top = gain = torch.zeros(m, 1, dtype=torch.float64)
        if k < kq:
            sk, snext = s64[:, k - 1:k], s64[:, k:k + 1]
            in_band = s64[:, :k] <= snext + 2 * delta                        # might drop out of the top k
            out_band = s64[:, k:] >= sk - 2 * delta                          # might enter it
            n_swap = torch.minimum(in_band.sum(1), out_band.sum(1)).double()[:, None]
            w_b = torch.exp((sk + 3 * delta) / temperature) * (1 + rho)
            in_top = (in_band & (labels[:, :k] == top)).sum(1, keepdim=True).double()
            out_c = torch.zeros_like(sc).scatter_add_(1, labels[:, k:], out_band.double())
            lose_top = torch.minimum(n_swap, in_top) * w_b
            gain = torch.minimum(n_swap, out_c) * w_b
            bad |= unlisted & (s64[:, -1] >= sk[:, 0] - 2 * delta)     # an unlisted row might enter: no bound
        if sc.shape[1] > 1:
            short = (hi - sc) <= (hi + sc) * rho + lose_top + gain
            short.scatter_(1, top, False)
            bad |= short.any(1)
    return bad


def _mask_self(sims: torch.Tensor, cols: torch.Tensor, self_index: torch.Tensor | None) -> torch.Tensor:
    """Set sims[i, j] = -inf where cols[i, j] is query i's own train row (leave-one-out)."""
    if self_index is None:
        return sims
    return sims.masked_fill(cols == self_index[:, None], float("-inf"))


def exact_candidates(train_f, train_y, q, ids, ks, temperature, num_classes, chunk: int = 64):
    """Exact float64 votes for rows q (r, D) whose exact top-k lies among candidate ids (r, K') (the
    query's own row already removed): candidates re-scored in float64 (one batched product per chunk),
    ordered by (similarity desc, train index asc)."""
    out = {k: [] for k in set(ks)}
    kmax = max(ks)
    for i in range(0, q.shape[0], chunk):
        ids_i = torch.sort(ids[i:i + chunk], dim=1).values            # index ascending: tie-break
        x = train_f.index_select(0, ids_i.flatten()).view(*ids_i.shape, -1).double()
        sims = torch.bmm(x, q[i:i + chunk].double()[:, :, None])[:, :, 0]
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kmax]
        v = votes(torch.gather(sims, 1, order), torch.gather(ids_i, 1, order), train_y, ks, temperature, num_classes)
        for k in out:
            out[k].append(v[k])
    return {k: torch.cat(v) for k, v in out.items()}


def exact_rows(train_f: torch.Tensor, train_y: torch.Tensor, q: torch.Tensor, ks, temperature: float,
               num_classes: int, self_index: torch.Tensor | None = None, chunk: int = 64) -> dict[int, torch.Tensor]:
    """Exact float64 kNN votes for a few query rows q (r, D) against the whole train set (minus each
    query's own row self_index (r,), -1 = none): ties in similarity -> lower train index (stable sort)."""
    kmax = max(ks)
    out = {k: [] for k in set(ks)}
    cols = torch.arange(train_f.shape[0])[None, :]
    for i in range(0, q.shape[0], chunk):
        qd = q[i:i + chunk].double()
        sims = torch.cat([qd @ train_f[j:j + 16384].double().T for j in range(0, train_f.shape[0], 16384)], dim=1)
        sims = _mask_self(sims, cols, None if self_index is None else self_index[i:i + chunk])
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices[:, :kmax]
        v = votes(torch.gather(sims, 1, order), order, train_y, ks, temperature, num_classes)
        for k in out:
            out[k].append(v[k])
    return {k: torch.cat(v) for k, v in out.items()}


def finish(train_f, train_y, q, sims, idx, ks, temperature, num_classes, approx: bool,
           self_index: torch.Tensor | None = None):
    """Votes for a chunk of queries q (m, D) from their candidates sims/idx (m, K); uncertain rows
    re-solved exactly unless approx. self_index (m,): the train row that is the query itself (already
    removed from idx), -1 = none. -> ({k: scores (m, C) float64}, number of rows re-solved)."""
    scores = votes(sims, idx, train_y, ks, temperature, num_classes)
    if approx:
        return scores, 0
    n, kq = train_f.shape[0], idx.shape[1]
    bank = torch.full((q.shape[0],), n) if self_index is None else n - (self_index >= 0).long()
    unlisted = kq < bank
    delta = sim_error_bound(train_f.shape[1])
    labels = train_y[idx.clamp_min(0)]
    rows = uncertain(sims, labels, scores, ks, unlisted, delta, temperature).nonzero().flatten()
    if rows.numel():
        # the candidate list holds the exact top-k when every unlisted row is > 2 delta below the k-th
        kmax = max(ks)
        covered = ~unlisted[rows] | (sims[rows, -1].double() < sims[rows, kmax - 1].double() - 2 * delta)
        for sel, from_candidates in ((rows[covered], True), (rows[~covered], False)):
            if sel.numel() == 0:
                continue
            if from_candidates:
                exact = exact_candidates(train_f, train_y, q[sel], idx[sel], ks, temperature, num_classes)
            else:
                exact = exact_rows(train_f, train_y, q[sel], ks, temperature, num_classes,
                                   None if self_index is None else self_index[sel])
            for k in scores:
                scores[k][sel] = exact[k]
    return scores, int(rows.numel())
