#!/bin/bash
# MNIST seed 1, what the last session's budget cut off: classifier, PSD, then LFM + FM paper
# + FM at measured equal time (compare driver), then guided distillation (w=1).
M=.data/mnist; W=/tmp/study; SEED=1; N=1000; DS=${DS:-300}
PY=python3
set -x
CMP=($PY -m experiments.compare_lfm_fm_images --workdir $W --variant mnist --data_path $M --seeds $SEED
  --steps_per_block 1000 --fm_equal_channels 64 --fm_equal_steps -1 --guidance_ws 0,1,2,3
  --fd_samples $N --classifier_steps 1500 --calibration_steps 500 --set eval.nll_examples=200 --set eval.ode.rtol=1e-4
  --set eval.ode.atol=1e-4 --set lfm.push_ode.rtol=1e-4 --set lfm.push_ode.atol=1e-4)
"${CMP[@]}" --runs classifier
touch $W/CLS_DONE
$PY -m experiments.train --config "configs/flow_map_digits.py:psd,mnist" \
    --workdir "$W/fmap_psd" --config.data.path=$M --config.seed=$SEED \
    --config.train.steps=1000 --config.eval.n_samples="$N" \
    "--config.flow_map.sample_steps=(1,2,4)" --config.eval.classifier_workdir="$W/classifier"
touch $W/PSD_DONE
"${CMP[@]}" --runs lfm,fm_paper,fm_equal
touch $W/FM_DONE
mapfile -t LFM < <($PY -c "import json, sys; print('\n'.join(json.load(open(sys.argv[1]))['commands']['lfm'][3:]))" "$W/compare_images.json")
$PY -m experiments.distill_lfm "${LFM[@]}" --objective lmd --steps $DS --batch_size 128 \
  --lr 5e-4 --unet_time_scale 1 --sample_steps 1,2,4 --n_samples $N --guidance_w 1
touch $W/DONE
