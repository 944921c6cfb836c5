"""Dropout in training: `flow_matching.make_loss(dropout=True)` calls the velocity with
one dropout key per pair (checked with a cheap field whose output depends on the key;
the U-Net's own dropout is tested in tests/test_unet.py), and the jobs turn it on from
the config."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import fm_digits
from lfm_jax import flow_matching, interpolants, time_sampling
from lfm_jax.runs import models

SEEN = []


def _velocity(params, t, x, dropout_key=None):
    """params * x, with a Bernoulli(0.5) mask / 0.5 when a key is given."""
    if dropout_key is None:
        return params * x
    SEEN.append(dropout_key.shape)
    keep = jax.random.bernoulli(dropout_key, 0.5, x.shape)
    return jnp.where(keep, params * x / 0.5, 0.0)


def _keep_all(params, t, x, dropout_key=None):
    """Takes a dropout key and drops nothing."""
    return params * x


def _loss(dropout, key, velocity=_velocity):
    loss_fn = flow_matching.make_loss(velocity, interpolants.get("linear"),
                                      time_sampling.uniform, dropout=dropout)
    x = jax.random.normal(jax.random.PRNGKey(1), (16, 3))
    return float(loss_fn(jnp.float32(0.7), key, x)[0])


def test_dropout_key_per_pair_changes_the_loss():
    k = jax.random.PRNGKey(3)
    plain = _loss(False, k)
    assert _loss(True, k) != plain
    assert _loss(True, k) == _loss(True, k)  # deterministic given the key
    assert _loss(True, jax.random.PRNGKey(4)) != _loss(True, k)
    assert SEEN and SEEN[-1] == jax.random.PRNGKey(0).shape  # one key per pair (vmapped)
    # the dropout keys do not move the noise / time draws: a field that takes the key
    # and drops nothing gives the plain loss
    np.testing.assert_allclose(_loss(True, k, _keep_all), plain, rtol=1e-6)


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
