"""U-Net dropout in training: the FM loss passes one dropout key per pair when asked
(`flow_matching.make_loss(dropout=True)`), which changes the loss of a network with
dropout and nothing for a rate of 0; the jobs turn it on from the config."""

import jax
import numpy as np

from configs import fm_digits
from lfm_jax import flow_matching, interpolants, time_sampling, unet
from lfm_jax.runs import models


def _loss(rate, dropout, key):
    net = unet.velocity_unet(**unet.preset("digits8", dropout=rate))
    params = net.init(jax.random.PRNGKey(0))
    # move off the zero-initialised output layer, whose output ignores dropout
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
    params = jax.tree_util.tree_unflatten(
        tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)])
    loss_fn = flow_matching.make_loss(net.apply, interpolants.get("linear"),
                                      time_sampling.uniform, dropout=dropout)
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    return float(loss_fn(params, key, x)[0])


def test_dropout_key_changes_the_loss_only_with_a_rate():
    k = jax.random.PRNGKey(3)
    assert _loss(0.5, True, k) != _loss(0.5, False, k)
    np.testing.assert_allclose(_loss(0.0, True, k), _loss(0.0, False, k), rtol=1e-6)
    # deterministic given the key
    assert _loss(0.5, True, k) == _loss(0.5, True, k)


def test_jobs_use_dropout_from_the_preset_or_the_override():
    config = fm_digits.get_config()          # digits8: rate 0
    assert not models.uses_dropout(config)
    with config.unlocked():
        config.model.unet_dropout = 0.1
    assert models.uses_dropout(config)
    assert models.unet_kwargs(config, (8, 8, 1))["dropout"] == 0.1
    assert models.uses_dropout(fm_digits.get_config("mnist"))  # mnist preset: 0.1
    with config.unlocked():
        config.model.kind = "mlp"
    assert not models.uses_dropout(config)
