#!/bin/bash
# MNIST seed 1: classifier + LFM, warm-started guided distillation (w=1), FM bf16/device/host rows,
# warm null-class distillation, warm guided at lr 1e-4.
M=../shared/data/mnist; W=OUT; SEED=1; N=1000; DS=${DS:-300}
PY=python3
set -x
CMP=($PY -m experiments.compare_lfm_fm_images --workdir $W --variant mnist --data_path $M --seeds $SEED
  --steps_per_block 1000 --fm_equal_channels 64 --fm_equal_steps -1 --guidance_ws 0,1,2,3
  --fd_samples $N --classifier_steps 1500 --calibration_steps 500 --set eval.nll_examples=200 --set eval.ode.rtol=1e-4
  --set eval.ode.atol=1e-4 --set lfm.push_ode.rtol=1e-4 --set lfm.push_ode.atol=1e-4)
date
"${CMP[@]}" --runs classifier,lfm
touch $W/LFM_DONE; date
mapfile -t LFM < <($PY -c "import json, sys; print('\n'.join(json.load(open(sys.argv[1]))['commands']['lfm'][3:]))" "$W/compare_images.json")
D=($PY -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps $DS --batch_size 128 --sample_steps 1,2,4 --n_samples $N --init_from_teacher)
"${D[@]}" --lr 5e-4 --guidance_w 1 --out $W/lfm/distill/lmd_w1_warm
touch $W/WARM_DONE; date
for p in device host; do
  $PY -m experiments.train --config configs/fm_digits.py:mnist --workdir $W/fm_$p --config.data.path=$M \
    --config.seed=$SEED --config.train.steps=1000 --config.eval.nll_examples=100 --config.eval.fd_samples=$N \
    --config.data.placement=$p --config.eval.classifier_workdir=$W/classifier
done
$PY -m experiments.train --config configs/fm_digits.py:mnist --workdir $W/fm_bf16 --config.data.path=$M \
    --config.seed=$SEED --config.train.steps=1000 --config.eval.nll_examples=100 --config.eval.fd_samples=$N \
    --config.model.compute_dtype=bfloat16 --config.eval.classifier_workdir=$W/classifier
touch $W/FM_DONE; date
"${D[@]}" --lr 5e-4 --out $W/lfm/distill/lmd_null_warm
touch $W/NULL_DONE; date
"${D[@]}" --lr 1e-4 --guidance_w 1 --out $W/lfm/distill/lmd_w1_warm_lr1e-4
touch $W/DONE; date
