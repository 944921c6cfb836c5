set -x
cd /work/main
python -m experiments.train --config configs/classifier_digits.py --workdir /work/exp/clf 
python -m experiments.train --config configs/lfm_digits.py --workdir /work/exp/lfm_unet \
  --config.model.unet_channels=8 --config.lfm.steps_per_block=300 --config.train.batch_size=64 \
  --config.eval.classifier_workdir=/work/exp/clf
