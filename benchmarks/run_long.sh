#!/bin/bash
# The long benchmark runs of this branch, one after the other, 1 thread each, resumable:
# every script skips the rows already cached in its results JSON. Usage:
#   nohup benchmarks/run_long.sh > benchmarks/results/logs/run_long.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=.:runtimes:models OMP_NUM_THREADS=1
# run with the Python that has torch (activate the venv first, or set PYTHON)
PYTHON=${PYTHON:-python}
"$PYTHON" benchmarks/dense_models.py --models alexnet32 --seeds 0 --threads 1
"$PYTHON" benchmarks/fit_vs_svd.py --threads 1
if [ -f benchmarks/compression_table.py ]; then
  "$PYTHON" benchmarks/compression_table.py --threads 1 --models alexnet32 --seeds 0,1,2
fi
