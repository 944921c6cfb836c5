"""Issue 10 part 2: fresh samples per step, keep-best params, and the LFM-vs-FM study."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lfm_jax import data as data_lib
from lfm_jax import lfm, train
from lfm_jax.runs import data_feed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch_loss(params, key, batch):
    """A loss that reports the batch it saw (its mean) and its first row."""
    x = batch["x"] if isinstance(batch, dict) else batch
    return jnp.mean((x @ params["w"]) ** 2), {"batch_mean": jnp.mean(x), "x0": x[0, 0]}


def _config(fresh=True, keep_best=False):
    return ml_collections.ConfigDict({
        "seed": 0, "data": {"fresh_samples": fresh},
        "train": {"batch_size": 8, "keep_best": keep_best}, "eval": {"use_ema": False}})


def test_sampler_backed_datasets_have_samplers():
    for name, kw in (("checkerboard", {}), ("rose", {}), ("gmm", {"dim": 3})):
        ds = data_lib.make_dataset(name, 16, 8, 8, seed=0, **kw)
        x = ds.sampler(jax.random.PRNGKey(1), 5)
        assert x.shape == (5, ds.dim) and x.dtype == jnp.float32


def test_fresh_samples_differ_per_step_and_resume_bit_identically():
    ds = data_lib.make_dataset("gmm", 16, 8, 8, seed=0, dim=2)
    sample_batch = data_feed.fm_sample_batch(_config(), ds)
    opt = optax.sgd(1e-2)
    step = train.make_train_step(_batch_loss, opt, sample_batch=sample_batch,
                                 steps_per_call=2, ema_decay=0.0)
    data = jnp.zeros((16, 2))  # ignored: every batch is a fresh draw

    def fresh_state():  # new buffers each time: the step donates its state
        return train.create_train_state(jax.random.PRNGKey(3), {"w": jnp.ones((2,))}, opt)

    state, m1 = step(fresh_state(), data)
    m = np.asarray(m1["batch_mean"])
    assert m[0] != m[1]  # two consecutive steps, two different batches
    assert not np.isin(np.asarray(m1["x0"]), np.asarray(ds.train)).any()  # not indexed
    straight, _ = step(state, data)
    # "resume": the state at step 2 via the host, then the same call
    restored = jax.tree_util.tree_map(jnp.asarray, jax.device_get(step(fresh_state(), data)[0]))
    resumed, _ = step(restored, data)
    np.testing.assert_array_equal(resumed.params["w"], straight.params["w"])

    # the configuration off: rows of the training set
    indexed = data_feed.fm_sample_batch(_config(fresh=False), ds)
    x = indexed(jax.random.PRNGKey(0), jnp.asarray(ds.train))
    assert np.isin(np.asarray(x[:, 0]), np.asarray(ds.train[:, 0])).all()


def test_lfm_block_one_draws_fresh_data():
    ds = data_lib.make_dataset("checkerboard", 16, 8, 8, seed=0)
    sb = lfm.make_sample_batch(4, ds.sampler)
    data = {"x": jnp.zeros((16, 2)), "h": jnp.float32(0.1)}
    b1, b2 = sb(jax.random.PRNGKey(0), data), sb(jax.random.PRNGKey(1), data)
    assert b1["x"].shape == (4, 2) and b1["h"].shape == (4,)
    assert not np.allclose(b1["x"], b2["x"]) and np.all(np.asarray(b1["x"]) != 0)


def test_keep_best_returns_params_of_min_validation_loss():
    """Params go 3, 1, 2, 4 (one per fused call); the validation loss is mean
    (w x)^2 on a fixed batch, lowest at w = 1: that state is kept, through `fit`."""
    sequence = [3.0, 1.0, 2.0, 4.0]
    val_batch = jnp.ones((4, 1))

    def step_fn(state, data):
        w = jnp.full((1,), sequence[int(state.step)])
        new = state.replace(step=state.step + 1, params={"w": w}, ema_params={"w": 2 * w})
        return new, {"loss": jnp.zeros((1,))}

    keeper = data_feed.make_keep_best(_config(keep_best=True), _batch_loss, val_batch)
    assert data_feed.make_keep_best(_config(), _batch_loss, val_batch) is None
    state = train.create_train_state(jax.random.PRNGKey(0), {"w": jnp.zeros((1,))},
                                     optax.sgd(0.1))
    state, _ = train.fit(state, step_fn, None, 4, keep_best=keeper)
    assert keeper.best_step == 2 and keeper.best_loss == 1.0
    assert [round(v) for _, v in keeper.history] == [9, 1, 4, 16]
    best = keeper.apply(state)
    assert float(best.params["w"][0]) == 1.0 and float(best.ema_params["w"][0]) == 2.0
    assert float(state.params["w"][0]) == 4.0  # fit itself returns the last state


def test_study_runs_end_to_end_and_writes_both_tables(tmp_path):
    cmd = [sys.executable, "-m", "experiments.compare_lfm_fm", f"--workdir={tmp_path}",
           "--datasets=8gaussians", "--seeds=0", "--iters=20", "--budgets=1",
           "--hidden=8", "--n_train=256", "--nll_examples=16", "--steps_per_call=10",
           "--batch_size=32", "--rtol=1e-3"]
    env = dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu",
               LFM_JAX_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    md = (tmp_path / "compare.md").read_text()
    assert "Paper protocol" in md and "Equal compute" in md
    assert "| 8gaussians | LFM |" in md and "| 8gaussians | 1 | FM |" in md
    res = json.loads((tmp_path / "compare.json").read_text())["results"]["8gaussians"]
    paper = res["paper"][0]
    assert paper["lfm"]["steps"] == paper["fm"]["steps"] == 20 * paper["lfm"]["blocks"]
    assert paper["lfm"]["hidden"] == paper["fm"]["hidden"] == [8]
    eq = res["equal_compute"]["1"][0]
    assert abs(eq["fm"]["num_params"] - eq["lfm"]["num_params"]) < 0.2 * eq["lfm"]["num_params"]
    assert "Paper protocol" in r.stdout
