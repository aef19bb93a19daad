#!/bin/bash
# The long benchmark runs of #13, one after the other, resumable: every script skips the rows
# already cached in its results JSON, so rerunning this continues where the last run stopped.
# Two runs may share a results file (rows merge under a lock): e.g. one per core with
# different --seeds. Usage (THREADS: torch threads per run; 2 on an otherwise idle 2-core box):
#   nohup benchmarks/run_long.sh > benchmarks/results/logs/run_long.log 2>&1 &
set -u
cd "$(dirname "$0")/.."
THREADS=${THREADS:-1}
export PYTHONPATH=.:runtimes:models OMP_NUM_THREADS=$THREADS
# run with the Python that has torch (activate the venv first, or set PYTHON)
PYTHON=${PYTHON:-python}
"$PYTHON" benchmarks/fit_vs_svd.py --threads "$THREADS"
# the rows the targets need first (3 seeds): dense, the TTN classifier, the whole network
"$PYTHON" benchmarks/compression_table.py --threads "$THREADS" --models alexnet32 \
  --recipes dense,ttn,whole,whole48,whole_lowrank,whole_svd --seeds 0,1,2
# then the other topologies and the linear ablation
"$PYTHON" benchmarks/compression_table.py --threads "$THREADS" --models alexnet32 --seeds 0,1,2
"$PYTHON" benchmarks/compression_table.py --threads "$THREADS" --models vgg16_32 \
  --recipes dense,ttn,whole --seeds 0,1,2
"$PYTHON" benchmarks/frontier.py --threads "$THREADS"
"$PYTHON" benchmarks/compression_table.py --threads "$THREADS" --models vgg16_32 --seeds 0,1,2
# #10: the whole compile matrix (about an hour on 2 cores since normalize dropped
# onnxscript's pattern rewrites; rows already cached are skipped)
"$PYTHON" benchmarks/compile_matrix.py --threads "$THREADS"
