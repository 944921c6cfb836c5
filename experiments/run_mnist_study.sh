#!/usr/bin/env bash
# The MNIST runs of issue 11 (BENCHMARKS.md section 7), one after another, for one seed
# (meant for one GPU; every step is an ordinary, resumable job, so rerunning the script
# skips what is finished):
#   1. the classifier that scores every model and LFM in the paper's image layout
#      (experiments.compare_lfm_fm_images --runs classifier,lfm), scored at w = 0..3;
#   2. its blocks distilled into flow maps, sampled with K = 1, 2, 4 steps per block
#      against the adaptive-ODE teacher (experiments.distill_lfm, Lagrangian map
#      distillation, U-Net students): the LFM's null-class field, then its guided
#      field at w = GW (class-conditional students, --guidance_w), from a random init and
#      warm-started from the blocks (--init_from_teacher), the latter also with half of
#      every batch on the diagonal s = t (--diagonal_fraction 0.5) for DSD steps;
#   3. flow maps trained directly (LSD, PSD; configs/flow_map_digits.py:<obj>,mnist),
#      K = 1, 2, 4; with FMC=1 class-conditional ones (<obj>,mnist,cond), scored with
#      guided sampling at w = 0..3;
#   4. FM under the paper protocol and FM with equal parameters at measured equal time
#      (compare_lfm_fm_images --fm_equal_steps=-1: a timing run sets its steps);
#   5. FM with device- and host-fed batches (config.data.placement), for their speed.
# Steps 2-5 come after LFM because it is the longest and everything is compared to it;
# the chain goes on past a failed step (its error is in the log).
#
#   bash experiments/run_mnist_study.sh [MNIST_DIR] [OUT]
#
# MNIST_DIR holds the IDX files (default ../shared/data/mnist); OUT the workdirs
# (default runs/mnist_study). Sizes from the environment: SEED (config.seed, also the
# data split; 0), CS (classifier steps, 1500), SPB (LFM steps per block, 1000), DS
# (distillation steps per block, 300), DSD (steps per block of the diagonal warm
# distillation, 1200), FMS (flow-map steps, 1000), HS (FM steps of the
# feed rows, 1000), N (samples per score, 1000), NLL (test images of the bits/dim, 200),
# CAL (steps of the FM timing run that sets the equal-time steps, 500), GW (guidance
# weight of the guided distillation, 1: MNIST's best w). Step counts of
# the jobs must be multiples of their configs' train.steps_per_call (50 on MNIST).
# Set VN= (empty) and MNIST_DIR= "" to run the same chain on the 8x8 digits (a CPU
# smoke test with small sizes, e.g. VN= CS=50 SPB=50 DS=30 FMS=50 HS=50 N=50 NLL=10 CAL=50).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
M=${1-../shared/data/mnist}; W=${2:-runs/mnist_study}
VN=${VN-mnist}; SEED=${SEED:-0}
CS=${CS:-1500}; SPB=${SPB:-1000}; DS=${DS:-300}; FMS=${FMS:-1000}; HS=${HS:-1000}
N=${N:-1000}; NLL=${NLL:-200}; GW=${GW:-1}; DSD=${DSD:-1200}
CMP=("$PY" -m experiments.compare_lfm_fm_images --workdir "$W" --variant "$VN"
     ${M:+--data_path "$M"} --seeds "$SEED" --steps_per_block "$SPB"
     --fm_equal_channels 64 --fm_equal_steps -1 --guidance_ws 0,1,2,3 --fd_samples "$N"
     --classifier_steps "$CS" --calibration_steps "${CAL:-500}" --set eval.nll_examples="$NLL" --set eval.ode.rtol=1e-4
     --set eval.ode.atol=1e-4 --set lfm.push_ode.rtol=1e-4 --set lfm.push_ode.atol=1e-4)
set -x
"${CMP[@]}" --runs classifier,lfm || exit 1
# The distillation needs the LFM's exact config: its command's --config / overrides.
mapfile -t LFM < <("$PY" -c "import json, sys; print('\n'.join(json.load(open(sys.argv[1]))['commands']['lfm'][3:]))" "$W/compare_images.json")
"$PY" -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps "$DS" --batch_size 128 \
  --lr 5e-4 --unet_time_scale 1 --sample_steps 1,2,4 --n_samples "$N"
"$PY" -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps "$DS" --batch_size 128 \
  --lr 5e-4 --unet_time_scale 1 --sample_steps 1,2,4 --n_samples "$N" --guidance_w "$GW"
# the same guided distillation warm-started from the blocks (students start as one Euler
# step per block; the blocks' time scale)
"$PY" -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps "$DS" --batch_size 128 \
  --lr 5e-4 --sample_steps 1,2,4 --n_samples "$N" --guidance_w "$GW" --init_from_teacher \
  --out "$W/lfm/distill/lmd_w${GW}_warm"
# ... and with half of every batch on the diagonal s = t and DSD steps per block (keeps
# the short jumps accurate; BENCHMARKS.md section 7, digits)
"$PY" -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps "$DSD" --batch_size 128 \
  --lr 5e-4 --sample_steps 1,2,4 --n_samples "$N" --guidance_w "$GW" --init_from_teacher \
  --diagonal_fraction 0.5 --out "$W/lfm/distill/lmd_w${GW}_warm_diag"
for o in lsd psd; do
  "$PY" -m experiments.train --config "configs/flow_map_digits.py:$o${VN:+,$VN}${FMC:+,cond}" \
    --workdir "$W/fmap_$o${FMC:+_cond}" ${M:+--config.data.path="$M"} --config.seed="$SEED" \
    --config.train.steps="$FMS" --config.eval.n_samples="$N" \
    "--config.flow_map.sample_steps=(1,2,4)" --config.eval.classifier_workdir="$W/classifier"
done
"${CMP[@]}" --runs lfm,fm_paper,fm_equal
for p in device host; do
  "$PY" -m experiments.train --config "configs/fm_digits.py${VN:+:$VN}" --workdir "$W/fm_$p" \
    ${M:+--config.data.path="$M"} --config.seed="$SEED" --config.train.steps="$HS" \
    --config.eval.nll_examples=100 --config.eval.fd_samples="$N" --config.data.placement="$p"
done
