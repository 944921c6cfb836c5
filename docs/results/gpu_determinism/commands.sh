#!/bin/bash
# Same FM U-Net training command twice, without and with XLA's deterministic GPU ops.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/ml_collections*.whl .whl/tensorboardx*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
for mode in default deterministic; do
  for rep in 1 2; do
    if [ $mode = deterministic ]; then export XLA_FLAGS=--xla_gpu_deterministic_ops=true; else unset XLA_FLAGS; fi
    timeout 100 python3 -m experiments.train --config configs/fm_digits.py:mnist --workdir /tmp/det_${mode}_$rep \
      --config.data.path=.data/mnist --config.train.steps=300 --config.eval.nll_examples=1 --config.eval.n_samples=10 --config.eval.fd_samples=2 \
      > $OUT/${mode}_$rep.log 2>&1
    cp /tmp/det_${mode}_$rep/metrics.jsonl $OUT/${mode}_$rep.jsonl; cp /tmp/det_${mode}_$rep/metrics.json $OUT/${mode}_$rep.metrics.json
  done
done
ls $OUT
