set -x
cd /work/main; source /work/venv/bin/activate
C=(--config configs/lfm_digits.py --config.model.unet_channels=8 --config.lfm.steps_per_block=300
   --config.train.batch_size=64 --config.eval.classifier_workdir=/work/exp/clf --workdir /work/exp/lfm_unet)
D=(--objective lmd --batch_size 64 --lr 5e-4 --sample_steps 1,2,4 --n_samples 1000 --guidance_w 1 --init_from_teacher)
date
python -m experiments.distill_lfm "${C[@]}" "${D[@]}" --steps 1200 --diagonal_fraction 0.5 --out /work/exp/lfm_unet/distill/warm_diag50_1200
date
LFM_WORKDIR=/work/exp/lfm_unet python docs/results/digits_cpu/warm_distill/jump_errors.py diag50_1200=/work/exp/lfm_unet/distill/warm_diag50_1200 2>&1 | grep "^diag"
date
