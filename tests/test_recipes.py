"""Training from arrays without a workdir or a config (`recipes.fit_local_flow`), and
your own data file through the job (`--config.data.name=file`)."""

import math

import jax
import numpy as np
import pytest

from lfm_jax import recipes


def _gaussian(n, seed, mean=(1.0, -2.0), std=(0.5, 2.0)):
    rng = np.random.default_rng(seed)
    return (np.asarray(mean) + np.asarray(std) * rng.standard_normal((n, 2))).astype(
        np.float32)


def test_fit_local_flow_learns_a_gaussian_from_arrays():
    std = np.array([0.5, 2.0])
    entropy = float(np.sum(0.5 * np.log(2 * math.pi * math.e * std ** 2)))
    x_val = _gaussian(1000, 1)
    flow = recipes.fit_local_flow(_gaussian(4000, 0), x_val=x_val, step_sizes=(0.3,),
                                  hidden=(32, 32), steps_per_block=400, batch_size=256,
                                  lr=3e-3, seed=0)
    assert flow.model.num_blocks == 2 and math.isinf(flow.model.step_sizes[-1])
    assert len(flow.val_nll) == 3
    # the base N(0, I) is far from the data; two blocks close most of the gap
    assert flow.val_nll[0] > entropy + 1.0
    assert flow.val_nll[-1] < entropy + 0.15, (flow.val_nll, entropy)
    nll = -np.mean(flow.log_prob(x_val))
    assert abs(nll - flow.val_nll[-1]) < 1e-3
    samples = flow.generate(jax.random.PRNGKey(3), 2000)
    assert samples.shape == (2000, 2) and np.all(np.isfinite(samples))
    np.testing.assert_allclose(samples.mean(0), [1.0, -2.0], atol=0.25)
    np.testing.assert_allclose(samples.std(0), std, rtol=0.15)


def test_fit_local_flow_refuses_bad_input():
    x = _gaussian(100, 0)
    x[17, 1] = np.nan
    with pytest.raises(ValueError, match="x_train"):
        recipes.fit_local_flow(x, steps_per_block=100)
    with pytest.raises(ValueError, match="steps_per_block"):
        recipes.fit_local_flow(_gaussian(100, 0), steps_per_block=150, steps_per_call=100)


def test_fm_job_trains_on_a_user_file(tmp_path):
    from configs import fm_checkerboard
    from lfm_jax import runs

    path = tmp_path / "mine.npy"
    np.save(path, _gaussian(600, 0) * 10.0 + 100.0)   # standardised by the loader
    config = fm_checkerboard.get_config()
    config.data.name = "file"
    config.data.path = str(path)
    config.model.hidden = (16, 16)
    config.train.steps = 40
    config.train.steps_per_call = 20
    config.train.batch_size = 64
    config.train.checkpoint_every = 40
    config.eval.n_samples = 100
    config.eval.nll_examples = 50
    config.eval.ode.rtol = config.eval.ode.atol = 1e-3
    results = runs.get("fm")(config, str(tmp_path / "w"))
    assert results["nll_examples"] == 50 and np.isfinite(results["test_nll"])


def test_file_data_without_a_path_is_refused(tmp_path):
    from configs import fm_checkerboard
    from lfm_jax.runs import common

    config = fm_checkerboard.get_config()
    config.data.name = "file"
    with pytest.raises(ValueError, match="data.path"):
        common.load_data(config)
