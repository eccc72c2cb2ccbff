"""Tests of ssl_aug.evaluation.knn: kNN against independent references (plain loops, numpy, torch brute
force), leave-one-out, the IVF index and its measured agreement, and the benchmark's machine line."""

import warnings

import numpy as np
import pytest
import torch

from ssl_aug.errors import SslAugError
from ssl_aug.evaluation import evaluate_encoder, format_report, knn_classify, knn_evaluate, knn_scores
from test_evaluation import cifar_subset


def knn_numpy(train_f, train_y, test_f, k, T, C, exclude=None):
    """Plain-loop reference: float64 cosine sims, neighbours sorted by (sim desc, index asc);
    exclude[q] (if given, -1 = none): a train row query q never counts (leave-one-out)."""
    tr = train_f.numpy().astype(np.float64)
    te = test_f.numpy().astype(np.float64)
    tr /= np.linalg.norm(tr, axis=1, keepdims=True)
    te /= np.linalg.norm(te, axis=1, keepdims=True)
    out = np.zeros((te.shape[0], C))
    for q in range(te.shape[0]):
        sims = [float(np.dot(te[q].astype(np.float32).astype(np.float64), tr[j])) for j in range(tr.shape[0])]
        rows = [j for j in range(len(sims)) if exclude is None or j != exclude[q]]
        order = sorted(rows, key=lambda j: (-sims[j], j))[:k]
        for j in order:
            out[q, int(train_y[j])] += np.exp(sims[j] / T)
    return out


def clustered(n, m, d, c, noise, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    ty, qy = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (m,), generator=g)
    return (centers[ty] + noise * torch.randn(n, d, generator=g), ty,
            centers[qy] + noise * torch.randn(m, d, generator=g), qy)


# ------------------------------------------------------------------------------------------------ kNN
def test_knn_weighting_hand_case():
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    test = torch.tensor([[2.0, 0.0]])                 # sims: 1, 0, 1/sqrt2, -1
    s = knn_classify(train, labels, test, k=3, temperature=0.5, num_classes=3)
    expected = [np.exp(1 / 0.5), np.exp(0 / 0.5) + np.exp(2 ** -0.5 / 0.5), 0.0]
    np.testing.assert_allclose(s[0].numpy(), expected, rtol=1e-6)
    s1 = knn_classify(train, labels, test, k=1, temperature=0.5, num_classes=3)
    np.testing.assert_allclose(s1[0].numpy(), [np.exp(2.0), 0, 0], rtol=1e-6)


@pytest.mark.parametrize("noise", [1.0, 6.0])
def test_knn_faiss_equals_torch_and_numpy_reference(noise):
    tf, ty, qf, qy = clustered(600, 120, 32, 7, noise)
    ref = knn_numpy(tf, ty, qf, 50, 0.1, 7)
    for backend in ("faiss", "torch"):
        s = knn_classify(tf, ty, qf, k=50, temperature=0.1, num_classes=7, backend=backend)
        assert torch.equal(s.argmax(1), torch.from_numpy(ref.argmax(1)))
        np.testing.assert_allclose(s.numpy(), ref, rtol=2e-4)


def test_knn_ties_in_similarity_follow_lower_index():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(40, 16, generator=g)
    train = torch.cat([base, base, base])             # every point three times, with different labels
    labels = torch.cat([torch.zeros(40), torch.ones(40), torch.full((40,), 2.0)]).long()
    labels = labels[torch.randperm(120, generator=g)]
    test = base[:25] + 0.01 * torch.randn(25, 16, generator=g)
    for k in (1, 2, 4, 5):
        ref = knn_numpy(train, labels, test, k, 0.1, 3)
        for backend in ("faiss", "torch"):
            for margin in (1, 32):                # 1: too few candidates -> exact search over all rows
                s = knn_classify(train, labels, test, k=k, temperature=0.1, num_classes=3, backend=backend,
                                 margin=margin)
                assert torch.equal(s.argmax(1), torch.from_numpy(ref.argmax(1))), (k, backend, margin)


def test_knn_random_features_faiss_identical_to_bruteforce():
    tf, ty, qf, qy = clustered(20000, 2000, 128, 10, 8.0, seed=3)   # hard: many near-ties at k=200
    a, st = knn_scores(tf, ty, qf, (10, 200), 0.1, 10, return_stats=True)
    b = knn_scores(tf, ty, qf, (10, 200), 0.1, 10, backend="torch")
    for k in (10, 200):
        assert torch.equal(a[k].argmax(1), b[k].argmax(1))
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=0)
    assert st["resolved_rows"] < 2000


def test_knn_real_cifar_pixels_identical_to_bruteforce():
    xtr, ytr, xte, yte = cifar_subset(3000, 300)
    flat = lambda x: (lambda f: f - f.mean(1, keepdim=True))(x.flatten(1).float())  # noqa: E731
    tf, qf = flat(xtr), flat(xte)
    a = knn_evaluate(tf, ytr, qf, yte, ks=(20, 200))
    b = knn_evaluate(tf, ytr, qf, yte, ks=(20, 200), backend="torch")
    sa, sb = knn_classify(tf, ytr, qf, 200), knn_classify(tf, ytr, qf, 200, backend="torch")
    assert torch.equal(sa.argmax(1), sb.argmax(1))
    ref = knn_numpy(tf, ytr, qf[:40], 200, 0.1, 10)
    assert torch.equal(sa[:40].argmax(1), torch.from_numpy(ref.argmax(1)))
    assert a["by_k"][200]["top1"] == b["by_k"][200]["top1"] > 0.2      # raw pixels beat chance (0.1)
    assert len(a["per_class"]) == 10 and 0 <= a["top1"] <= a["top5"] <= 1


def test_several_k_in_one_pass_equal_separate_runs():
    tf, ty, qf, qy = clustered(1000, 200, 16, 5, 2.0)
    multi = knn_scores(tf, ty, qf, (1, 7, 50, 200), 0.07, 5)
    for k in (1, 7, 50, 200):
        torch.testing.assert_close(multi[k], knn_classify(tf, ty, qf, k, 0.07, 5), rtol=0, atol=0)
    r = knn_evaluate(tf, ty, qf, qy, ks=(50, 1))
    assert r["k"] == 50 and set(r["by_k"]) == {1, 50}
    assert r["top1"] == r["by_k"][50]["top1"]


def test_knn_per_class_and_top5_match_plain_computation():
    tf, ty, qf, qy = clustered(500, 300, 8, 6, 3.0)
    r = knn_evaluate(tf, ty, qf, qy, ks=(30,))
    s = knn_classify(tf, ty, qf, 30)
    pred = s.argmax(1)
    for c in range(6):
        m = qy == c
        assert r["per_class"][c] == pytest.approx((pred[m] == c).double().mean().item())
    top5 = torch.from_numpy(np.stack([np.lexsort((np.arange(6), -row))[:5] for row in s.numpy()]))  # ties: lower class
    assert r["top5"] == pytest.approx((top5 == qy[:, None]).any(1).double().mean().item())


def test_k_larger_than_train_clamps_with_one_warning():
    tf, ty, qf, qy = clustered(30, 10, 8, 3, 1.0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        s = knn_classify(tf, ty, qf, k=200, num_classes=3)
    assert len([x for x in w if "k=200" in str(x.message)]) == 1
    torch.testing.assert_close(s, knn_classify(tf, ty, qf, k=30, num_classes=3))


def test_ivf_agrees_with_flat():
    tf, ty, qf, qy = clustered(4000, 500, 32, 10, 2.0)
    flat = knn_classify(tf, ty, qf, 20)
    full = knn_classify(tf, ty, qf, 20, index="ivf", nlist=16, nprobe=16)        # all lists: exhaustive
    assert (full.argmax(1) == flat.argmax(1)).double().mean() >= 0.995
    part = knn_evaluate(tf, ty, qf, qy, ks=(20,), index="ivf", nlist=16, nprobe=4)
    assert part["index"] == "ivf" and part["top1"] > 0.8


def test_knn_errors_are_one_line_sslaugerrors():
    tf, ty, qf, qy = clustered(50, 10, 8, 3, 1.0)
    cases = [lambda: knn_classify(tf, ty, qf[:, :4]),                   # mismatched dims
             lambda: knn_classify(tf, ty[:-1], qf),                     # label count
             lambda: knn_evaluate(tf, ty, qf, qy[:-2]),                 # test label count
             lambda: knn_classify(tf, ty, qf, k=0),
             lambda: knn_classify(tf, ty, qf, temperature=0.0),
             lambda: knn_classify(tf, ty, qf, num_classes=2),           # label 2 out of range
             lambda: knn_classify(tf, ty, qf, index="hnsw")]
    for case in cases:
        with pytest.raises(SslAugError) as e:
            case()
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ leave-one-out
@pytest.mark.parametrize("k", [1, 5, 40])
def test_leave_one_out_matches_plain_loop(k):
    tf, ty, _, _ = clustered(150, 1, 12, 4, 1.5, seed=2)
    for twins in (False, True):
        if twins:                                      # a twin still votes, the query itself does not
            tf, ty = torch.cat([tf, tf[:20]]), torch.cat([ty, (ty[:20] + 1) % 4])
        ref = knn_numpy(tf, ty, tf, k, 0.1, 4, exclude=list(range(tf.shape[0])))
        for backend in ("faiss", "torch"):
            for margin in (1, 32):
                s, st = knn_scores(tf, ty, tf, (k,), 0.1, 4, backend=backend, margin=margin, self_index=True,
                                   return_stats=True)
                assert st["leave_one_out"] is True
                assert torch.equal(s[k].argmax(1), torch.from_numpy(ref.argmax(1))), (backend, margin, twins)
                if not twins:   # with exact twins only top-1 is certified (which twin is k-th may differ)
                    np.testing.assert_allclose(s[k].numpy(), ref, rtol=2e-4)


def test_self_index_subset_of_bank_with_some_rows_unmatched():
    tf, ty, _, _ = clustered(200, 1, 8, 3, 2.0, seed=4)
    perm = torch.randperm(200, generator=torch.Generator().manual_seed(0))[:60]
    si = perm.clone()
    si[::3] = -1                                        # these queries keep their own row
    ref = knn_numpy(tf, ty, tf[perm], 25, 0.1, 3, exclude=si.tolist())
    for backend in ("faiss", "torch"):
        s = knn_classify(tf, ty, tf[perm], 25, 0.1, 3, backend=backend, self_index=si)
        assert torch.equal(s.argmax(1), torch.from_numpy(ref.argmax(1)))
        np.testing.assert_allclose(s.numpy(), ref, rtol=2e-4)


def test_evaluate_encoder_same_split_is_leave_one_out():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 5, (300,), generator=g)       # labels unrelated to the images: chance is 0.2
    enc = torch.nn.Flatten()
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    auto = evaluate_encoder(enc, mean, std, (x, y), (x.clone(), y.clone()), ks=(20,), progress=False)
    forced_off = evaluate_encoder(enc, mean, std, (x, y), (x, y), ks=(20,), progress=False, leave_one_out=False)
    assert forced_off["knn"]["top1"] > 0.95            # the bug: each image votes for itself with weight e^10
    assert auto["knn"]["leave_one_out"] is True and auto["knn"]["top1"] < 0.45
    f = torch.nn.functional.normalize(((x.float() / 255 - 0.5) / 0.25).flatten(1), dim=1)
    ref = knn_numpy(f, y, f, 20, 0.1, 5, exclude=list(range(300)))
    assert auto["knn"]["top1"] == pytest.approx(float((torch.from_numpy(ref.argmax(1)) == y).double().mean()))
    assert "leave-one-out" in format_report(auto)
    other = evaluate_encoder(enc, mean, std, (x[:200], y[:200]), (x[200:], y[200:]), ks=(20,), progress=False)
    assert other["knn"]["leave_one_out"] is False
    with pytest.raises(SslAugError, match="leave_one_out=True"):
        evaluate_encoder(enc, mean, std, (x[:200], y[:200]), (x[200:], y[200:]), progress=False, leave_one_out=True)


def test_self_index_errors_are_one_line():
    tf, ty, qf, _ = clustered(50, 10, 8, 3, 1.0)
    cases = [lambda: knn_classify(tf, ty, qf, 5, self_index=True),                 # M != N
             lambda: knn_classify(tf, ty, qf, 5, self_index=torch.zeros(9, dtype=torch.long)),
             lambda: knn_classify(tf, ty, qf, 5, self_index=torch.full((10,), 50)),
             lambda: knn_classify(tf, ty, qf, 5, self_index=torch.zeros(10)),     # float
             lambda: knn_classify(tf[:1], ty[:1], tf[:1], 1, self_index=True)]    # nothing left to vote
    for case in cases:
        with pytest.raises(SslAugError) as e:
            case()
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ IVF agreement
def test_ivf_agreement_is_measured_against_exact_search():
    tf, ty, qf, qy = clustered(3000, 400, 32, 10, 3.0, seed=5)
    r = knn_evaluate(tf, ty, qf, qy, ks=(20,), index="ivf", nlist=32, nprobe=1, agreement_queries=150)
    rows = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:150].sort().values
    exact = knn_classify(tf, ty, qf[rows], 20).argmax(1)
    approx = knn_classify(tf, ty, qf, 20, index="ivf", nlist=32, nprobe=1)[rows].argmax(1)
    assert r["ivf_agreement_queries"] == 150
    assert r["ivf_agreement"] == pytest.approx(float((exact == approx).double().mean()))
    assert r["ivf_agreement"] < 1.0                     # nprobe 1 of 32 lists misses neighbours here
    full = knn_evaluate(tf, ty, qf, qy, ks=(20,), index="ivf", nlist=32, nprobe=32)
    assert full["ivf_agreement"] == 1.0 and full["ivf_agreement_queries"] == 400
    assert "ivf_agreement" not in knn_evaluate(tf, ty, qf, qy, ks=(20,))
    assert "IVF index" in format_report({"knn": r})


# ------------------------------------------------------------------------------------------------ benchmark machine
def test_machine_line_names_avx512_from_cpu_flags(tmp_path):
    from ssl_aug.benchmarks import cpu_info, machine_line

    for flags, word in (("fpu sse avx avx2 fma", "AVX-512 no"), ("fpu avx2 avx512f avx512bw", "AVX-512 yes")):
        path = tmp_path / "cpuinfo"
        path.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {flags}\n")
        info = cpu_info(str(path))
        assert info["model"] == "Test CPU 9000" and info["avx2"] is True
        line = machine_line(info)
        assert word in line and "Test CPU 9000" in line and "load average" in line


def test_interleaved_times_runs_each_function_in_turn():
    from ssl_aug.benchmarks import interleaved_times

    calls = []
    out = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3, warmup=1)
    assert calls == ["a", "b"] * 4 and set(out) == {"a", "b"}
    assert all(len(v) == 2 and v[0] >= 0 and v[1] >= 0 for v in out.values())


def test_knn_bench_tiny_run_agrees_with_bruteforce():
    from ssl_aug.benchmarks.knn import run

    header, rows, notes, results = run(1500, 150, 16, 20, 1, nprobes=(2,))
    assert len(rows) == 2 * 5 and all(len(r) == len(header) for r in rows)
    for kind in ("random", "clustered"):
        assert results[kind]["agree_torch"] == 1.0
        assert 0 <= results[kind]["ivf"][2]["agree"] <= 1
    assert results["clustered"]["acc"] > results["random"]["acc"]      # clustered neighbours are meaningful


def test_knn_monitor_leaves_queries_out_of_their_own_vote():
    from ssl_aug.evaluation import KnnMonitor, extract_features

    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (120, 3, 4, 4), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 4, (120,), generator=g)        # labels unrelated to images
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    enc = torch.nn.Flatten()
    plain = KnnMonitor(x, y, x[:40], y[:40], mean, std, k=10)(enc)
    loo = KnnMonitor(x, y, x[:40], y[:40], mean, std, k=10, self_index=torch.arange(40))(enc)
    f = extract_features(enc, x, mean, std, progress=False)
    ref = knn_numpy(f, y, f[:40], 10, 0.1, 4, exclude=list(range(40)))
    assert plain["knn_top1"] == 1.0                      # self-matches: the bug the self_index removes
    assert loo["knn_top1"] == pytest.approx(float((torch.from_numpy(ref.argmax(1)) == y[:40]).double().mean()))
    assert loo["knn_top1"] < 0.6


def test_eval_command_line_reaches_the_ivf_index():
    from ssl_aug.cli import build_parser
    from ssl_aug.cli.eval_run import _knn_kw

    parser = build_parser()
    args = parser.parse_args(["eval", "random:small_cnn", "--knn-index", "ivf", "--nlist", "8", "--nprobe", "2"])
    assert _knn_kw(args) == {"index": "ivf", "nlist": 8, "nprobe": 2}
    assert _knn_kw(parser.parse_args(["eval", "random:small_cnn"])) == {"index": "flat", "nlist": None, "nprobe": 16}
    with pytest.raises(SystemExit):
        parser.parse_args(["eval", "random:small_cnn", "--knn-index", "hnsw"])
    with pytest.raises(SslAugError, match="--nprobe 0"):
        _knn_kw(parser.parse_args(["eval", "random:small_cnn", "--nprobe", "0"]))
