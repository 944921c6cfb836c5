"""The evaluation classifier's job (method "classifier", configs/classifier_digits.py):
train `lfm_jax.classifier` on the training split of an image data set, with labels;
resumable; score it on the held-out splits.

The data settings are the generators' (configs/fm_digits.py `apply_image_defaults`,
same seed), so the classifier never sees the generators' held-out test images, which
are the reference of the "fd_classifier" metric (`classifier_eval`).

Training reuses the generators' machinery: `train.make_train_step` over the mean
cross-entropy of dequantised (optionally flipped, data.random_flip) batches drawn on
device (`image_data.sample_batch`), the config.train optimiser, schedule and EMA, and
`common.resumable_fit` (orbax checkpoints in ckpt/, metrics.jsonl,
train_clock.json). Re-running the same command resumes; a finished run is not
retrained (only re-scored, seconds).

Writes to the workdir: config.json, runs.jsonl, ckpt/, metrics.jsonl, and
  classifier_params/  orbax: the params used for scoring (EMA if config.eval.use_ema);
  classifier.json     architecture, example shape, classes and the data settings;
  metrics.json        test_accuracy, val_accuracy, fd_classifier_val_vs_test (the
                      distance between two sets of real held-out images: the scale
                      below which generator differences are noise), the DISCLAIMER.
`classifier_eval.load(workdir)` loads the result.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import optax

from lfm_jax import checkpoint, classifier, distributed, phases, train
from lfm_jax.runs import classifier_eval, common, image_data, jobs


def make_classifier(config, dataset) -> classifier.Classifier:
    """The config.classifier network (channels, features) for the data set's images."""
    c = config.classifier
    return classifier.make_classifier(dataset.example_shape, dataset.num_classes,
                                      channels=tuple(c.channels), features=int(c.features))


def make_loss(model: classifier.Classifier):
    """loss_fn(params, key, batch {"x": (B, H, W, C), "y": (B,)}) -> (mean
    cross-entropy, {"accuracy": batch accuracy}), for `train.make_train_step`."""

    def loss_fn(params, key, batch):
        logits = jax.vmap(model.logits, in_axes=(None, 0))(params, batch["x"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        acc = jnp.mean(jnp.argmax(logits, axis=-1) == batch["y"])
        return jnp.mean(loss), {"accuracy": acc}

    return loss_fn


@jobs.job
def run(config, workdir: str, clock=None) -> dict:
    """Train (resumably) and score the evaluation classifier; returns metrics.json's
    contents (`jobs.job`: the config is validated and recorded first)."""
    if not image_data.is_image_data(config):
        raise ValueError(f"method 'classifier' needs an image data set "
                         f"({', '.join(image_data.IMAGE_DATA)}), got {config.data.name!r}")
    with phases.phase(clock, "data"):
        dataset = image_data.load(config)
    model = make_classifier(config, dataset)
    t_cfg = config.train
    mesh = common.make_mesh(config)
    opt = common.optimizer(config)
    step_fn = train.make_train_step(
        make_loss(model), opt,
        sample_batch=image_data.sample_batch(t_cfg.batch_size, config.data.random_flip),
        steps_per_call=t_cfg.steps_per_call, ema_decay=t_cfg.ema_decay, mesh=mesh)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))
    params = jax.jit(model.init)(init_key)  # one compilation, not one per initialiser
    state = train.create_train_state(state_key, params, opt, mesh=mesh)
    train_data = distributed.replicate(image_data.train_data(dataset), mesh)
    with phases.phase(clock, "train"):
        state, train_time, _ = common.resumable_fit(config, state, step_fn, train_data,
                                                    workdir, "classifier")
    params = jax.device_get(state.ema_params if config.eval.use_ema else state.params)
    save(config, model, params, int(state.step), workdir)
    with phases.phase(clock, "scoring"):
        results = evaluate(model, params, dataset)
    results.update(method="classifier", data=config.data.name, steps=int(state.step),
                   train_time_s=train_time, num_params=model.num_params(params),
                   disclaimer=classifier.DISCLAIMER)
    jobs.write_metrics(workdir, results, clock)
    return results


def save(config, model: classifier.Classifier, params, step: int, workdir: str) -> None:
    """classifier_params/ (orbax, the params at `step`; kept: the newest) and
    classifier.json (what `classifier_eval.load` needs to rebuild the network, and the
    data settings that fix the held-out split)."""
    directory = os.path.join(workdir, classifier_eval.PARAMS_DIR)
    with checkpoint.Checkpointer(directory, keep=1, async_save=False) as ckpt:
        ckpt.save(step, params, force=True)
    spec = {"example_shape": list(model.example_shape), "num_classes": model.num_classes,
            "channels": [int(c) for c in config.classifier.channels],
            "features": int(config.classifier.features), "steps": step,
            "data": {**{k: config.data.get(k) for k in classifier_eval.DATA_KEYS},
                     "seed": int(config.seed)}}
    if jax.process_index() == 0:
        common.save_json(os.path.join(workdir, classifier_eval.SPEC_FILE), spec)


def evaluate(model: classifier.Classifier, params, dataset) -> dict:
    """Accuracy on the test and validation splits (images at bin centres, as every
    set is scored) and the fd_classifier between the two held-out splits."""
    test = classifier_eval.as_scored(dataset.test)
    val = classifier_eval.as_scored(dataset.val)
    fd = classifier.fd_classifier(model, params, val, test)[classifier.METRIC]
    return {"test_accuracy": classifier.accuracy(model, params, test, dataset.test_labels),
            "val_accuracy": classifier.accuracy(model, params, val, dataset.val_labels),
            "n_test": int(len(test)), "n_val": int(len(val)),
            f"{classifier.METRIC}_val_vs_test": fd,
            "notes": {classifier.METRIC: classifier.DISCLAIMER}}
