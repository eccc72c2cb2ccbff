"""faiss kNN vs torch brute force vs the bare matmul floor; writes the knn section of BENCHMARKS.md.
Usage: python eval/bench_knn.py [--quick] [--rounds 3] [--no-write]"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # run from a checkout without installing

from ssl_aug.benchmarks.knn import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
