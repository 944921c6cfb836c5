"""How a job feeds its training step, and which parameters it keeps (issue 10).

- Fresh samples (config.data.fresh_samples): when the data distribution has a known
  sampler (`data.Dataset.sampler`: the 2-D toys and "gmm"), each step draws a NEW batch
  from it instead of indexing the fixed training set, so there is nothing to over-fit.
  Keys are the step's fold_in(state.key, step), so a resumed run is bit-identical.
  LFM: only block 1 can draw fresh data (q_0 = data); blocks n >= 2 need data pushed
  through blocks 1..n-1 and keep the fixed pushed training set.
- Keep best (config.train.keep_best): for finite data sets, score the training loss on
  a fixed validation batch with a fixed key after every fused call and keep the params
  of the lowest one (`train.KeepBest`); train.weight_decay > 0 gives AdamW.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import flow_matching, train

VAL_KEY_SALT = 0x5EED  # the validation key is fold_in(PRNGKey(seed), VAL_KEY_SALT)


def fresh_sampler(config, dataset) -> Optional[Callable]:
    """dataset.sampler when config.data.fresh_samples is on and the sampler is known,
    else None (a missing config key counts as off)."""
    if not config.data.get("fresh_samples", False):
        return None
    return getattr(dataset, "sampler", None)


def host_fed(config) -> bool:
    """Whether the training batches are fed from host memory, each process feeding its
    rows (`train.HostBatches`; config.data.placement = "host"), rather than drawn on
    device from a replicated training set ("device", the default)."""
    return config.data.get("placement", "device") == "host"


def fm_sample_batch(config, dataset) -> Callable:
    """The plain-FM batch sampler: fresh draws (`fresh_sampler`) or rows of the
    training set with replacement."""
    sampler = fresh_sampler(config, dataset)
    if sampler is None:
        return flow_matching.make_sample_batch(config.train.batch_size)
    return data_lib.fresh_sample_batch(sampler, config.train.batch_size)


def validation_key(config):
    """The fixed PRNG key of the keep-best validation loss: fold_in(PRNGKey(seed),
    VAL_KEY_SALT), so every scoring of a run uses the same noise and times."""
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), VAL_KEY_SALT)


def make_keep_best(config, loss_fn: Callable, val_batch) -> Optional[train.KeepBest]:
    """A `train.KeepBest` scoring loss_fn on val_batch (fixed key), or None when
    config.train.keep_best is off. Scores the EMA params if config.eval.use_ema."""
    if not config.train.get("keep_best", False):
        return None
    return train.KeepBest(loss_fn, val_batch, validation_key(config),
                          use_ema=config.eval.use_ema)


def lfm_val_batch(x_val, h) -> dict:
    """The LFM block's validation batch {"x": pushed validation points, "h": (n,)}."""
    x_val = np.asarray(x_val)
    return {"x": x_val, "h": np.full((len(x_val),), h, x_val.dtype)}
