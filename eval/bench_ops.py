"""GPU launch counts on the meta device (see ssl_aug/benchmarks/ops.py); `python eval/bench_ops.py`."""
import sys

from ssl_aug.benchmarks.ops import main

if __name__ == "__main__":
    sys.exit(main())
