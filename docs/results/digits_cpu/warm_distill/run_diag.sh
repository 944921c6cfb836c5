set -x
cd /work/main; source /work/venv/bin/activate
C=(--config configs/lfm_digits.py --config.model.unet_channels=8 --config.lfm.steps_per_block=300
   --config.train.batch_size=64 --config.eval.classifier_workdir=/work/exp/clf --workdir /work/exp/lfm_unet)
D=(--objective lmd --batch_size 64 --lr 5e-4 --sample_steps 1,2,4 --n_samples 1000 --guidance_w 1 --steps 300 --init_from_teacher)
date
DIAG=0.5 python /work/exp/distill_diag.py "${C[@]}" "${D[@]}" --out /work/exp/lfm_unet/distill/warm_diag50
date
python /work/exp/jump_errors.py diag50=/work/exp/lfm_unet/distill/warm_diag50 2>&1 | grep "^diag"
