"""Training-step benchmark (see ssl_aug/benchmarks/train.py): python eval/bench_train.py [--quick]"""

import sys

from ssl_aug.benchmarks.train import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
