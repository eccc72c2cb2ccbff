"""kNN benchmark: ssl_aug's exact kNN (faiss flat search + vote + rounding certificate) against a plain
faiss IndexFlatIP search, the chunked torch mm+topk brute force and one bare `test @ train.T` product
(the floor of exact search), interleaved in one process, medians of several rounds (wall and process
CPU time); prediction agreement with brute force; IVF time and agreement with exact search; memory.

Usage: python eval/bench_knn.py [--quick] [--rounds 3] [--no-write]   or   ssl-aug bench knn
"""

from __future__ import annotations

import argparse
import os
import resource

import torch
import torch.nn.functional as F

from ssl_aug.benchmarks import interleaved_times, machine_line, markdown_table, update_benchmarks_md
from ssl_aug.evaluation.knn import build_index, faiss_search, knn_scores


def make_features(n_train: int, n_test: int, dim: int, classes: int, kind: str, seed: int = 0):
    """kind "random": i.i.d. unit vectors, random labels; "clustered": class centres + noise (meaningful
    neighbours, kNN accuracy well above chance). Returns L2-normalised (train_f, train_y, test_f, test_y)."""
    g = torch.Generator().manual_seed(seed)
    ty, qy = torch.randint(0, classes, (n_train,), generator=g), torch.randint(0, classes, (n_test,), generator=g)
    if kind == "random":
        tf, qf = torch.randn(n_train, dim, generator=g), torch.randn(n_test, dim, generator=g)
    else:
        centres = torch.randn(classes, dim, generator=g)
        tf = centres[ty] + 6.0 * torch.randn(n_train, dim, generator=g)
        qf = centres[qy] + 6.0 * torch.randn(n_test, dim, generator=g)
    return F.normalize(tf, dim=1), ty, F.normalize(qf, dim=1), qy


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(n_train: int, n_test: int, dim: int, k: int, rounds: int, kinds=("random", "clustered"),
        nprobes=(16, 64)):
    rows, results = [], {}
    for kind in kinds:
        tf, ty, qf, qy = make_features(n_train, n_test, dim, 10, kind)
        kw = dict(ks=(k,), temperature=0.1, num_classes=10, normalize=False)
        ours, stats = knn_scores(tf, ty, qf, return_stats=True, **kw)
        rss_knn = _rss_mb()
        ref = knn_scores(tf, ty, qf, backend="torch", **kw)
        index = build_index(tf)
        t = interleaved_times({
            "mm": lambda: qf @ tf.T,
            "ours": lambda: knn_scores(tf, ty, qf, **kw),
            "plain": lambda: faiss_search(index, qf, k),
            "torch": lambda: knn_scores(tf, ty, qf, backend="torch", **kw),
        }, rounds=rounds, warmup=0)
        pred = ours[k].argmax(1)
        agree_torch = float((pred == ref[k].argmax(1)).double().mean())
        acc = float((pred == qy).double().mean())
        mm_w, mm_c = t["mm"]
        fmt = lambda name: [f"{t[name][0]:.2f}", f"{t[name][1]:.2f}", f"{t[name][0] / mm_w:.2f}",  # noqa: E731
                            f"{t[name][1] / mm_c:.2f}"]
        rows += [
            [kind, "ssl_aug knn_scores (faiss flat, exact)", *fmt("ours"),
             f"{agree_torch:.4f} (re-solved {stats['resolved_rows']} near-tie rows)", f"{acc:.3f}"],
            [kind, "plain faiss IndexFlatIP.search (no vote)", *fmt("plain"), "-", "-"],
            [kind, "torch chunked mm + topk (reference)", *fmt("torch"), "1 (reference)", "-"],
            [kind, "bare test @ train.T (floor)", *fmt("mm"), "-", "-"],
        ]
        nlist = int(round(4 * n_train ** 0.5))
        ivf = {}
        for nprobe in nprobes:
            tiv = interleaved_times({"ivf": lambda: knn_scores(tf, ty, qf, index="ivf", nlist=nlist, nprobe=nprobe,
                                                               **kw)}, rounds=1, warmup=0)["ivf"]
            s_ivf = knn_scores(tf, ty, qf, index="ivf", nlist=nlist, nprobe=nprobe, **kw)
            agree = float((pred == s_ivf[k].argmax(1)).double().mean())
            ivf[nprobe] = dict(wall=tiv[0], cpu=tiv[1], agree=agree)
            rows.append([kind, f"faiss IVF (nlist {nlist}, nprobe {nprobe}; build + search), 1 run", f"{tiv[0]:.2f}",
                         f"{tiv[1]:.2f}", f"{tiv[0] / mm_w:.2f}", f"{tiv[1] / mm_c:.2f}",
                         f"{agree:.4f} (vs exact)", "-"])
        results[kind] = dict(times=t, agree_torch=agree_torch, acc=acc, resolved=stats["resolved_rows"],
                             rss_knn=rss_knn, ivf=ivf)
    header = ["features", "method", "wall s (median)", "CPU s (median)", "x bare matmul (wall)",
              "x bare matmul (CPU)", "top-1 agreement with brute force", "kNN top-1"]
    notes = (f"{n_train} train x {n_test} test x {dim}-d L2-normalised features, 10 classes, k={k}, T=0.1, "
             f"medians of {rounds} interleaved rounds in one process ({torch.get_num_threads()} threads; faiss uses "
             f"the same number); CPU = process CPU time of all threads. Random features are the hard case for the "
             f"exactness certificate (many near-tied class votes); their kNN accuracy is chance by construction. "
             f"Memory: queries go 4096 at a time, so the search holds ~{chunk_mm(k):.0f} MB of results "
             f"+ faiss's 4096x1024 block instead of a {n_test}x{n_train} matrix "
             f"({n_test * n_train * 4 / 2 ** 20:.0f} MB); process peak RSS after the first kNN run, before any "
             f"brute-force or matmul ran: {results[kinds[0]]['rss_knn']:.0f} MB (includes the features). "
             "Target (GUIDE 5): identical top-1 predictions to brute force, time <= 1.2x the bare matmul.")
    return header, rows, notes, results


def chunk_mm(k: int) -> float:
    """MB held per query chunk: (4096, k+32) sims + ids + labels, and faiss's 4096x1024 score block."""
    return (4096 * (k + 32) * 12 + 4096 * 1024 * 4) / 2 ** 20


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--quick", action="store_true", help="10k x 2k x 128 instead of 50k x 10k x 512, 1 round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k", type=int, default=200)
    p.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    a = p.parse_args(argv)
    n_train, n_test, dim, rounds = (10000, 2000, 128, 1) if a.quick else (50000, 10000, 512, a.rounds)
    load0 = os.getloadavg()[0]
    header, rows, notes, _ = run(n_train, n_test, dim, a.k, rounds)
    notes += (f" 1-minute load average {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end (other jobs on the "
              "machine inflate absolute times; ratios are measured side by side).")
    table = markdown_table(header, rows)
    print(f"Machine: {machine_line()}")
    print(table)
    print(notes)
    if not a.no_write and not a.quick:
        path = update_benchmarks_md("knn", "Exact kNN: faiss vs brute force", table + "\n\n" + notes)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
