"""Drives churn_ext (built by scripts/bench into a scratch directory on PYTHONPATH): 10^6 malloc/free pairs
from one Python call, in 10 calls from a Python loop."""
import sys

import churn_ext

pairs = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
for _ in range(10):
    churn_ext.churn(pairs // 10)
