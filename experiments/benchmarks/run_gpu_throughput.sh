#!/usr/bin/env bash
# The GPU throughput tables of BENCHMARKS.md (G1): the four standard sizes, then the
# large-batch rows, each with the CUDA-graph and torch.compile rows, bf16 rows, FLOP
# utilisation and peak memory. Needs a CUDA torch, jax[cuda] and the peers installed.
# "unet": the CIFAR-10 U-Net flow-matching step vs torchcfm (issue 11, up to 10 minutes;
# needs torchcfm).
#
#   bash experiments/benchmarks/run_gpu_throughput.sh [standard|large|unet|all] [OUT]
set -euo pipefail
cd "$(dirname "$0")/../.."
PART=${1:-all}
OUT=${2:-experiments/benchmarks/results_gpu}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
if [ "$PART" = standard ] || [ "$PART" = all ]; then
  # Small and medium batches: launch-bound, so torch.compile is timed in the mode
  # that removes launches (CUDA graphs).
  "$PY" -m experiments.benchmarks.throughput --sizes=2:256,43:512 --batches=256,4096 \
    --seconds=0.7 --repeats=3 --bf16 --compile_modes=reduce-overhead --out="$OUT"
fi
if [ "$PART" = large ] || [ "$PART" = all ]; then
  # Batch 65,536: compute-bound. 43-D: both compile modes (autotuned matmuls might win
  # here; they did not, and autotuning takes minutes per size); 2-D: reduce-overhead.
  "$PY" -m experiments.benchmarks.throughput --sizes=43:512 --batches=65536 \
    --seconds=1 --repeats=3 --bf16 \
    --compile_modes=reduce-overhead,max-autotune-no-cudagraphs --out="$OUT/large_batch"
  "$PY" -m experiments.benchmarks.throughput --sizes=2:256 --batches=65536 \
    --seconds=1 --repeats=3 --bf16 --compile_modes=reduce-overhead \
    --out="$OUT/large_batch" --append
fi
if [ "$PART" = unet ] || [ "$PART" = all ]; then
  # U-Net throughput (issue 11): batch 128, float32 and bf16 for both sides, torch.compile.
  "$PY" -m experiments.benchmarks.unet_throughput --batch=128 --seconds=3 --repeats=3 \
    --out="$OUT/unet"
fi
