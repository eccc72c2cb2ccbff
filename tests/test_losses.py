"""Losses against independent references (plain loops, numpy, closed forms) and invariants."""

import math
import os
import socket

import numpy as np
import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.losses import nt_xent, nt_xent_multiview, sinkhorn, swav_loss


def ref_nt_xent(views, tau):
    """Plain-loop multi-view NT-Xent: views is V lists of N vectors (float64 math)."""
    rows = []
    for v, batch in enumerate(views):
        for i, x in enumerate(batch):
            x = [float(c) for c in x]
            norm = math.sqrt(sum(c * c for c in x))
            rows.append((v, i, [c / norm for c in x]))

    def sim(a, b):
        return sum(p * q for p, q in zip(a[2], b[2])) / tau

    total = 0.0
    for ai, a in enumerate(rows):
        denom = sum(math.exp(sim(a, b)) for bi, b in enumerate(rows) if bi != ai)
        positives = [p for pi, p in enumerate(rows) if pi != ai and p[1] == a[1]]
        terms = [math.log(math.exp(sim(a, p)) / denom) for p in positives]
        total += -sum(terms) / len(terms)
    return total / len(rows)


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("n", [1, 3, 8])
def test_nt_xent_matches_plain_loop(tau, n):
    g = torch.Generator().manual_seed(n)
    z_a, z_b = torch.randn(n, 5, generator=g), torch.randn(n, 5, generator=g)
    got = nt_xent(z_a, z_b, tau).item()
    assert got == pytest.approx(ref_nt_xent([z_a.tolist(), z_b.tolist()], tau), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("v,n,tau", [(3, 4, 0.2), (4, 2, 0.5), (6, 3, 0.1)])
def test_nt_xent_multiview_matches_plain_loop(v, n, tau):
    z = torch.randn(v, n, 7, generator=torch.Generator().manual_seed(v * 10 + n))
    want = ref_nt_xent([z[i].tolist() for i in range(v)], tau)
    assert nt_xent_multiview(z, tau).item() == pytest.approx(want, rel=1e-5)
    assert nt_xent_multiview(list(z), tau).item() == pytest.approx(want, rel=1e-5)


def test_nt_xent_two_views_equals_multiview_and_is_symmetric():
    z_a, z_b = torch.randn(6, 4), torch.randn(6, 4)
    assert torch.allclose(nt_xent(z_a, z_b, 0.3), nt_xent_multiview(torch.stack([z_a, z_b]), 0.3))
    assert torch.allclose(nt_xent(z_a, z_b, 0.3), nt_xent(z_b, z_a, 0.3))


def test_nt_xent_invariances():
    z_a, z_b = torch.randn(10, 8), torch.randn(10, 8)
    perm = torch.randperm(10)
    base = nt_xent(z_a, z_b, 0.5)
    assert torch.allclose(nt_xent(z_a[perm], z_b[perm], 0.5), base, atol=1e-6)
    assert torch.allclose(nt_xent(3.0 * z_a, 0.2 * z_b, 0.5), base, atol=1e-6)  # normalised inside
    # Breaking the pairing (shifting one view by one image) makes the positives random: the loss goes up.
    noisy = z_a + 0.05 * torch.randn(10, 8)
    assert nt_xent(z_a, noisy.roll(1, 0), 0.5) > nt_xent(z_a, noisy, 0.5) + 1.0


def test_nt_xent_collapse_is_log_of_candidates():
    z = torch.ones(5, 3)
    assert nt_xent(z, z, 0.5).item() == pytest.approx(math.log(2 * 5 - 1), rel=1e-6)
    assert nt_xent_multiview(torch.ones(4, 5, 3), 0.2).item() == pytest.approx(math.log(4 * 5 - 1), rel=1e-6)


def test_nt_xent_gradients_finite_and_correct():
    z_a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z_b = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z_a, z_b))
    z = torch.randn(3, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: nt_xent_multiview(x, 0.5), (z,))
    z32 = torch.randn(2, 64, 16, requires_grad=True)
    nt_xent_multiview(z32, 0.05).backward()
    assert torch.isfinite(z32.grad).all() and z32.grad.abs().sum() > 0


def test_nt_xent_bfloat16_inputs_computed_in_float32():
    z_a, z_b = torch.randn(8, 4), torch.randn(8, 4)
    out = nt_xent(z_a.bfloat16(), z_b.bfloat16(), 0.5)
    assert out.dtype == torch.float32
    want = nt_xent(z_a.bfloat16().float(), z_b.bfloat16().float(), 0.5)
    assert out.item() == pytest.approx(want.item(), rel=1e-6)


def test_loss_errors_are_one_line():
    with pytest.raises(SslAugError, match="temperature=0"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), 0)
    with pytest.raises(SslAugError, match=r"\(V, N, D\)"):
        nt_xent_multiview(torch.randn(1, 2, 3), 0.5)
    with pytest.raises(SslAugError, match="epsilon"):
        sinkhorn(torch.randn(2, 3), 0.0)
    with pytest.raises(SslAugError, match="crops_for_assign"):
        swav_loss([torch.randn(2, 3)] * 2, crops_for_assign=(2,))


def ref_sinkhorn_numpy(scores, eps, iters):
    """facebookresearch/swav's distributed_sinkhorn on one rank, K x B orientation, in numpy."""
    q = np.exp(np.asarray(scores, dtype=np.float64) / eps).T  # (K, B)
    k, b = q.shape
    q /= q.sum()
    for _ in range(iters):
        q /= q.sum(axis=1, keepdims=True)
        q /= k
        q /= q.sum(axis=0, keepdims=True)
        q /= b
    return (q * b).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b,k,iters", [(8, 5, 3), (32, 10, 1), (5, 40, 7)])
def test_sinkhorn_matches_numpy_reference(dtype, b, k, iters):
    scores = torch.randn(b, k, generator=torch.Generator().manual_seed(b + k)).clamp(-1, 1)
    q = sinkhorn(scores, 0.05, iters, dtype=dtype)
    assert q.shape == (b, k) and q.dtype == torch.float32
    ref = ref_sinkhorn_numpy(scores.double().numpy(), 0.05, iters)
    np.testing.assert_allclose(q.numpy(), ref, rtol=2e-4 if dtype == torch.float32 else 1e-6, atol=1e-7)
    # The row step comes last: every row of the codes is a distribution.
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, atol=1e-5)


def test_sinkhorn_marginals_at_convergence():
    scores = torch.randn(24, 6, generator=torch.Generator().manual_seed(0)) * 0.1
    q = sinkhorn(scores, 0.05, iterations=200, dtype=torch.float64)
    assert torch.allclose(q.sum(1), torch.ones(24), atol=1e-4)
    assert torch.allclose(q.sum(0), torch.full((6,), 24 / 6), atol=1e-4)
    assert (q >= 0).all()


def test_sinkhorn_stable_for_large_scores_and_row_equivariant():
    scores = torch.randn(16, 8) * 50  # exp(1000) would overflow without the global shift
    q = sinkhorn(scores, 0.05, 3)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)
    perm = torch.randperm(16)
    s = torch.randn(16, 8)
    assert torch.allclose(sinkhorn(s[perm], 0.05, 3), sinkhorn(s, 0.05, 3)[perm], atol=1e-6)


def test_sinkhorn_extreme_scores_match_float64_log_domain_reference():
    # scores / epsilon up to ~400: exp() overflows float32 (and a dominated row underflows) in the
    # plain algorithm; the result must still match an exact float64 log-domain reference.
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(12, 9, generator=g) * 5
    log_q = scores.double().numpy() / 0.05
    for _ in range(3):
        m = log_q.max(axis=0, keepdims=True)
        log_q = log_q - (m + np.log(np.exp(log_q - m).sum(axis=0, keepdims=True))) - np.log(9)
        m = log_q.max(axis=1, keepdims=True)
        log_q = log_q - (m + np.log(np.exp(log_q - m).sum(axis=1, keepdims=True))) - np.log(12)
    ref = np.exp(log_q) * 12
    for dtype in (torch.float32, torch.float64):
        np.testing.assert_allclose(sinkhorn(scores, 0.05, 3, dtype=dtype).numpy(), ref, rtol=1e-3, atol=1e-6)


def test_distributed_helpers_are_noops_without_a_group(monkeypatch):
    from ssl_aug import distributed as d

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert d.init_from_env().type in ("cpu", "cuda")
    assert (d.world_size(), d.rank(), d.is_main(), d.is_initialized()) == (1, 0, True, False)
    x = torch.randn(3, 2)
    assert d.gather_with_grad(x) is x and d.all_reduce_sum(x) is x and d.all_reduce_max(x) is x
    d.barrier()
    d.cleanup()


def test_swav_loss_hand_built_case():
    # Symmetric 2x2 scores keep Sinkhorn's proportions: q0 = [[p, 1-p], [1-p, p]], p = sigmoid(a/eps).
    a, b, T, eps = 0.3, 0.7, 0.5, 0.25
    s0 = torch.tensor([[a, 0.0], [0.0, a]])
    s1 = torch.tensor([[0.0, b], [b, 0.0]])
    p = 1 / (1 + math.exp(-a / eps))
    r = 1 / (1 + math.exp(-b / eps))
    # crop 1 predicts q0: CE = log(1 + e^{b/T}) - (1 - p) b/T (both rows equal by symmetry)
    l_from_0 = math.log(1 + math.exp(b / T)) - (1 - p) * b / T
    # crop 0 predicts q1 = [[1-r, r], [r, 1-r]]: CE = log(1 + e^{a/T}) - (1 - r) a/T
    l_from_1 = math.log(1 + math.exp(a / T)) - (1 - r) * a / T
    got0 = swav_loss([s0, s1], T, eps, iterations=3, crops_for_assign=(0,))
    assert got0.item() == pytest.approx(l_from_0, rel=1e-6)
    got01, codes = swav_loss([s0, s1], T, eps, iterations=3, crops_for_assign=(0, 1), return_codes=True)
    assert got01.item() == pytest.approx((l_from_0 + l_from_1) / 2, rel=1e-6)
    assert torch.allclose(codes[0], torch.tensor([[p, 1 - p], [1 - p, p]]), atol=1e-6)


def test_swav_loss_three_crops_averages_over_other_crops():
    g = torch.Generator().manual_seed(3)
    s = [torch.randn(6, 4, generator=g) for _ in range(3)]
    T = 0.1
    q0 = torch.tensor(ref_sinkhorn_numpy(s[0].numpy(), 0.05, 3), dtype=torch.float32)
    q1 = torch.tensor(ref_sinkhorn_numpy(s[1].numpy(), 0.05, 3), dtype=torch.float32)

    def ce(q, x):
        return -(q * torch.log_softmax(x / T, 1)).sum(1).mean()

    want = ((ce(q0, s[1]) + ce(q0, s[2])) / 2 + (ce(q1, s[0]) + ce(q1, s[2])) / 2) / 2
    assert swav_loss(s, T, 0.05, 3, (0, 1)).item() == pytest.approx(want.item(), rel=1e-5)


def test_swav_loss_queue_rows_join_sinkhorn_only():
    s = [torch.randn(4, 5) for _ in range(2)]
    queue = [torch.randn(8, 5), torch.randn(8, 5)]
    _, codes = swav_loss(s, 0.1, 0.05, 3, (0, 1), queue_scores=queue, return_codes=True)
    for i in range(2):
        want = ref_sinkhorn_numpy(torch.cat([queue[i], s[i]]).numpy(), 0.05, 3)[-4:]
        np.testing.assert_allclose(codes[i].numpy(), want, rtol=2e-4, atol=1e-7)
    assert not torch.allclose(codes[0], swav_loss(s, 0.1, 0.05, 3, (0, 1), return_codes=True)[1][0])


def test_swav_loss_collapse_is_log_k_and_permutation_invariant():
    k = 7
    uniform = swav_loss([torch.zeros(5, k)] * 4, 0.1, 0.05, 3, (0, 1))
    assert uniform.item() == pytest.approx(math.log(k), rel=1e-6)
    # Uniform predictions give ln K whatever the codes (code rows sum to 1).
    s = [torch.randn(5, k), torch.zeros(5, k)]
    assert swav_loss(s, 0.1, 0.05, 3, (0,)).item() == pytest.approx(math.log(k), rel=1e-6)
    s = [torch.randn(9, k) for _ in range(3)]
    perm = torch.randperm(9)
    permuted = swav_loss([x[perm] for x in s], 0.1, 0.05, 3)
    assert torch.allclose(swav_loss(s, 0.1, 0.05, 3), permuted, atol=1e-6)


def test_swav_loss_gradient_is_softmax_minus_codes():
    s = [torch.randn(6, 4, requires_grad=True) for _ in range(3)]
    T, n_assign, n_crops = 0.2, 2, 3
    loss, codes = swav_loss(s, T, 0.05, 3, (0, 1), return_codes=True)
    loss.backward()
    assert all(torch.isfinite(x.grad).all() for x in s)
    # Crop 2 predicts both q0 and q1: grad = sum_a (softmax(s2/T) - q_a) / (T * B * (C-1) * |assign|).
    sm = torch.softmax(s[2].detach() / T, 1)
    want = ((sm - codes[0]) + (sm - codes[1])) / (T * 6 * (n_crops - 1) * n_assign)
    assert torch.allclose(s[2].grad, want, atol=1e-6)


# ---------------------------------------------------------------- 2-process gloo equivalence
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, data, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        n = data["z"].shape[1] // world
        sl = slice(rank * n, (rank + 1) * n)
        z = data["z"][:, sl].clone().requires_grad_(True)
        loss2 = nt_xent(z[0], z[1], 0.3, gather=True)
        (g2,) = torch.autograd.grad(loss2, z)
        m = data["zm"].shape[1] // world
        zm = data["zm"][:, rank * m : (rank + 1) * m].clone().requires_grad_(True)
        loss_m = nt_xent_multiview(zm, 0.2, gather=True)
        (gm,) = torch.autograd.grad(loss_m, zm)
        b = data["scores"][0].shape[0] // world
        scores = [s[rank * b : (rank + 1) * b] for s in data["scores"]]
        q = sinkhorn(scores[0], 0.05, 3, distributed=True)
        sw = swav_loss(scores, 0.1, 0.05, 3, (0, 1), distributed=True)
        out = {"loss2": loss2.detach(), "g2": g2, "loss_m": loss_m.detach(), "gm": gm, "q": q, "swav": sw}
        torch.save(out, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gather_and_sinkhorn_match_single_process(tmp_path):
    import torch.multiprocessing as mp

    world = 2
    g = torch.Generator().manual_seed(0)
    data = {
        "z": torch.randn(2, 8, 6, generator=g, dtype=torch.float64),
        "zm": torch.randn(3, 6, 5, generator=g, dtype=torch.float64),
        "scores": [torch.randn(10, 7, generator=g) for _ in range(3)],
    }
    mp.spawn(_worker, args=(world, _free_port(), data, str(tmp_path)), nprocs=world, join=True)
    res = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]

    z = data["z"].clone().requires_grad_(True)
    loss2 = nt_xent(z[0], z[1], 0.3)
    (g2,) = torch.autograd.grad(loss2, z)
    zm = data["zm"].clone().requires_grad_(True)
    loss_m = nt_xent_multiview(zm, 0.2)
    (gm,) = torch.autograd.grad(loss_m, zm)
    # The global loss is the mean of the rank losses; each rank's gradient (before DDP divides by the
    # world size) is world x the single-process gradient of the global loss for its rows.
    assert abs(sum(r["loss2"] for r in res) / world - loss2) <= 1e-5
    assert abs(sum(r["loss_m"] for r in res) / world - loss_m) <= 1e-5
    assert torch.allclose(torch.cat([r["g2"] for r in res], dim=1) / world, g2, atol=1e-5)
    assert torch.allclose(torch.cat([r["gm"] for r in res], dim=1) / world, gm, atol=1e-5)
    q = sinkhorn(data["scores"][0], 0.05, 3)
    assert torch.allclose(torch.cat([r["q"] for r in res]), q, atol=1e-5)
    single = swav_loss(data["scores"], 0.1, 0.05, 3, (0, 1))
    assert abs(sum(r["swav"] for r in res) / world - single) <= 1e-5
