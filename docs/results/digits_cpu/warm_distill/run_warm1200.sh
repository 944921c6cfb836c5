set -x
cd /work/main; source /work/venv/bin/activate
C=(--config configs/lfm_digits.py --config.model.unet_channels=8 --config.lfm.steps_per_block=300
   --config.train.batch_size=64 --config.eval.classifier_workdir=/work/exp/clf --workdir /work/exp/lfm_unet)
D=(--objective lmd --batch_size 64 --lr 5e-4 --sample_steps 1,2,4 --n_samples 1000 --guidance_w 1)
date
python -m experiments.distill_lfm "${C[@]}" "${D[@]}" --steps 1200 --init_from_teacher --out /work/exp/lfm_unet/distill/warm1200
date
