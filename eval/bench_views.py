"""Views throughput benchmark (see ssl_aug/benchmarks/views.py); `python eval/bench_views.py --quick`."""
import sys

from ssl_aug.benchmarks.views import main

if __name__ == "__main__":
    sys.exit(main())
