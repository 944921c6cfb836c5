"""The evaluation classifier (method "classifier", `lfm_jax.runs.classifier_job`): a
small CNN trained with labels on the training split of the digits / MNIST data, with
exactly the data settings of configs/fm_digits.py and configs/lfm_digits.py
(`fm_digits.apply_image_defaults`: same data set, source split, n_val / n_test; keep
the same --config.seed), so its held-out test split is the generators'.

    python -m experiments.train --config configs/classifier_digits.py --workdir runs/clf_digits
    python -m experiments.train --config configs/classifier_digits.py:mnist \
        --config.data.path=../shared/data/mnist --workdir runs/clf_mnist

Then score generators with --config.eval.classifier_workdir=runs/clf_digits (their
jobs), or saved samples with experiments/score_samples.py. The metric is
"fd_classifier", NOT Inception FID (`lfm_jax.classifier.DISCLAIMER`).

Digits: 100 steps already give about 0.9 test accuracy; the 500 default took about
1.5 s a step on the shared 2-core development CPU (minutes on a GPU).
Variants: as configs/fm_digits.py (mnist, cifar10; uncond changes nothing here).
"""

import ml_collections

from configs import default, fm_digits


def get_config(variant: str = ""):
    config = default.get_config()
    config.method = "classifier"
    fm_digits.apply_image_defaults(config, variant)
    config.classifier = ml_collections.ConfigDict()
    config.classifier.channels = (32, 64)  # conv widths, one 2x2 pool after each pair
    config.classifier.features = 128  # penultimate features (the Frechet distance's)
    t = config.train
    t.steps = 10_000 if "cifar10" in variant else 3_000 if "mnist" in variant else 500
    t.batch_size, t.steps_per_call = 128, 50
    t.lr, t.schedule, t.warmup_steps = 1e-3, "cosine", 50
    t.ema_decay = 0.99
    t.checkpoint_every = 500
    config.data.random_flip = False  # digits are not symmetric
    return default.locked(config)
