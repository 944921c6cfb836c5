#!/usr/bin/env bash
# The MNIST runs of issue 11 that BENCHMARKS.md section 7 still lacks, one after another
# (meant for one GPU; each step is an ordinary, resumable job, so rerunning the script
# skips what is finished):
#   1. the classifier that scores every model (configs/classifier_digits.py:mnist);
#   2. LFM in the paper's image layout (configs/lfm_digits.py:mnist), scored at w = 0, 1;
#   3. its blocks distilled into flow maps, sampled with K = 1, 2, 4 steps per block
#      against the adaptive-ODE teacher (experiments.distill_lfm, Lagrangian map
#      distillation, U-Net students);
#   4. flow maps trained directly (LSD, PSD; configs/flow_map_digits.py:<obj>,mnist),
#      K = 1, 2, 4;
#   5. FM with device- and host-fed batches (config.data.placement), for their speed.
#
#   bash experiments/run_mnist_study.sh [MNIST_DIR] [OUT]
#
# MNIST_DIR holds the IDX files (default ../shared/data/mnist); OUT the workdirs
# (default runs/mnist_study). Sizes from the environment: CS (classifier steps, 1500),
# SPB (LFM steps per block, 1000), DS (distillation steps per block, 300), FMS (flow-map
# steps, 1000), HS (FM steps of the feed rows, 1000), N (samples per score, 1000).
# Set VN= (empty) and MNIST_DIR= "" to run the same chain on the 8x8 digits (a CPU
# smoke test with small sizes).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
M=${1-../shared/data/mnist}; W=${2:-runs/mnist_study}; C=$W/classifier
VN=${VN-mnist}
CS=${CS:-1500}; SPB=${SPB:-1000}; DS=${DS:-300}; FMS=${FMS:-1000}; HS=${HS:-1000}; N=${N:-1000}
TOL=(--config.eval.ode.rtol=1e-4 --config.eval.ode.atol=1e-4)
LFM=(--config "configs/lfm_digits.py${VN:+:$VN}" --workdir "$W/lfm" --config.data.path="$M"
     --config.lfm.steps_per_block="$SPB" "${TOL[@]}" --config.lfm.push_ode.rtol=1e-4
     --config.lfm.push_ode.atol=1e-4 --config.eval.nll_examples=100
     --config.eval.classifier_workdir="$C" --config.eval.fd_samples="$N"
     "--config.eval.guidance_ws=(0.0,1.0)")
set -x
"$PY" -m experiments.train --config "configs/classifier_digits.py${VN:+:$VN}" --workdir "$C" \
  --config.data.path="$M" --config.train.steps="$CS"
"$PY" -m experiments.train "${LFM[@]}"
"$PY" -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps "$DS" --batch_size 128 \
  --lr 5e-4 --unet_time_scale 1 --sample_steps 1,2,4 --n_samples "$N"
for o in lsd psd; do
  "$PY" -m experiments.train --config "configs/flow_map_digits.py:$o${VN:+,$VN}" \
    --workdir "$W/fmap_$o" --config.data.path="$M" --config.train.steps="$FMS" \
    --config.eval.n_samples="$N" "--config.flow_map.sample_steps=(1,2,4)" \
    --config.eval.classifier_workdir="$C"
done
for p in device host; do
  "$PY" -m experiments.train --config "configs/fm_digits.py${VN:+:$VN}" --workdir "$W/fm_$p" \
    --config.data.path="$M" --config.train.steps="$HS" --config.eval.nll_examples=100 \
    --config.eval.fd_samples="$N" "${TOL[@]}" --config.data.placement="$p"
done
