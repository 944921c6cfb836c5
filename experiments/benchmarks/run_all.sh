#!/usr/bin/env bash
# One command for every benchmark of BENCHMARKS.md: own venv, peers installed, 1-4 run,
# JSON + Markdown written, BENCHMARKS.md regenerated.
#
#   bash experiments/benchmarks/run_all.sh          # full run (CPU: about an hour)
#   QUICK=1 bash experiments/benchmarks/run_all.sh  # smoke run, a few minutes
#
# Environment: INSTALL_ONLY=1 (set up the venv and stop), VENV (default experiments/benchmarks/.venv, git-ignored),
# OUT (default experiments/benchmarks/results), PYTHON (default python3).
# Torch: if the base Python already imports a CUDA torch, the venv sees it
# (--system-site-packages) and nothing new is installed; otherwise torch==2.13.0 (the
# CPU wheel on the CPU machine). Peers go in with --no-deps and their small deps under a
# constraint that pins the torch already there, so no second torch is ever pulled.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
VENV=${VENV:-experiments/benchmarks/.venv}
OUT=${OUT:-experiments/benchmarks/results}
PYTHON=${PYTHON:-python3}
QUICK=${QUICK:-0}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    "$PYTHON" -m venv "$VENV"
  fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip install -q)
if ! "$PY" -c "import torch" 2>/dev/null; then
  "${PIP[@]}" torch==2.13.0
fi
TORCH_VERSION=$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")
CONSTRAINT=$(mktemp)
echo "torch==$TORCH_VERSION" > "$CONSTRAINT"
"${PIP[@]}" -c "$CONSTRAINT" -e "$ROOT"
"${PIP[@]}" --no-deps torchcfm==1.0.7 flow-matching==1.0.10 rectified-flow-pytorch==0.14.0
# Their imports, minus torchvision (stubbed in peers.py where it cannot load).
"${PIP[@]}" -c "$CONSTRAINT" torchdiffeq pot einops einx scipy pillow ema-pytorch \
  accelerate x-unet x-transformers rotary-embedding-torch torch-einops-utils
rm -f "$CONSTRAINT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
"$PY" -c "import jax; print('jax', jax.__version__, jax.devices())"
if [ "${INSTALL_ONLY:-0}" = "1" ]; then exit 0; fi

mkdir -p "$OUT"
if [ "$QUICK" = "1" ]; then
  TP=(--seconds=0.5 --repeats=1)
  TTQ=(--budgets=5,10 --seeds=0,1,2 --n_eval=300)
  FS=(--seconds=5 --n_samples=1000)
  LFM=(--seeds=0 --iters=200 --budgets=5 --nll_examples=300)
else
  TP=(--seconds=1.5 --repeats=3)
  TTQ=(--budgets=15,30,60,120 --seeds=0,1,2 --n_eval=1000)
  FS=(--seconds=30 --seeds=0)
  LFM=(--seeds=0,1,2 --iters=1000 --budgets=10,20 --n_train=10000 --nll_examples=500)
fi
set -x
"$PY" -m experiments.benchmarks.throughput "${TP[@]}" --out="$OUT"
"$PY" -m experiments.benchmarks.time_to_quality "${TTQ[@]}" --out="$OUT"
"$PY" -m experiments.benchmarks.few_step "${FS[@]}" --out="$OUT"
if [ -f experiments/compare_lfm_fm.py ]; then
  "$PY" -m experiments.compare_lfm_fm --workdir "$OUT/lfm_vs_fm" --datasets=checkerboard,rose,8gaussians "${LFM[@]}"
fi
"$PY" -m experiments.benchmarks.report --results="$OUT" --out=BENCHMARKS.md
