"""Trainer: sharding equivalence, no recompilation, exact resume, NaN handling."""

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lfm_jax import checkpoint, distributed, flow_matching, interpolants, networks
from lfm_jax import time_sampling, train

BATCH = 32


def _setup(num_devices, steps_per_call=4, lr=1e-3, warmup_steps=0):
    net = networks.velocity_mlp((2,), hidden=(32, 32))
    loss = flow_matching.make_loss(net.apply, interpolants.linear(), time_sampling.get("uniform"))
    opt = train.make_optimizer(lr=lr, grad_clip=1.0, warmup_steps=warmup_steps)
    mesh = distributed.make_mesh(num_devices)
    step = train.make_train_step(loss, opt, sample_batch=flow_matching.make_sample_batch(BATCH),
                                 steps_per_call=steps_per_call, mesh=mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt)
    data = jax.random.normal(jax.random.PRNGKey(2), (500, 2)) * 0.5 + 1.0
    return distributed.replicate(state, mesh), step, distributed.replicate(data, mesh)


def _host(tree):
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


def _assert_trees_close(a, b, **kw):
    for x, y in zip(jax.tree_util.tree_leaves(_host(a)), jax.tree_util.tree_leaves(_host(b))):
        np.testing.assert_allclose(x, y, **kw)


def test_sharded_step_equals_single_device():
    assert jax.device_count() >= 4, "conftest sets 4 simulated CPU devices"
    results = {}
    for n in (1, 4):
        state, step, data = _setup(n)
        state, metrics = step(state, data)
        results[n] = (state, metrics)
    # the batch is split over 4 devices; only the reduction order differs
    _assert_trees_close(results[1][0].params, results[4][0].params, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(results[1][1]["loss"], results[4][1]["loss"], rtol=1e-5)
    assert int(results[4][0].step) == 4


def test_sharded_step_with_host_fed_batches():
    net = networks.velocity_mlp((2,), hidden=(16,))
    loss = flow_matching.make_loss(net.apply, interpolants.linear(), time_sampling.get("uniform"))
    opt = train.make_optimizer(lr=1e-3)
    batches = np.random.default_rng(0).normal(size=(3, BATCH, 2)).astype(np.float32)
    out = []
    for n in (1, 4):
        mesh = distributed.make_mesh(n)
        step = train.make_train_step(loss, opt, steps_per_call=3, mesh=mesh)
        state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt)
        state = distributed.replicate(state, mesh)
        state, m = step(state, distributed.shard_batch(batches, mesh, batch_axis=1))
        out.append(state.params)
    _assert_trees_close(out[0], out[1], rtol=1e-5, atol=1e-6)


def test_step_is_traced_once():
    traces = []
    net = networks.velocity_mlp((2,), hidden=(16,))
    inner = flow_matching.make_loss(net.apply, interpolants.linear(), time_sampling.get("uniform"))

    def loss(params, key, batch):
        traces.append(1)
        return inner(params, key, batch)

    opt = train.make_optimizer(lr=1e-3)
    mesh = distributed.make_mesh()
    step = train.make_train_step(loss, opt, sample_batch=flow_matching.make_sample_batch(BATCH),
                                 steps_per_call=2, mesh=mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt,
                                     mesh=mesh)
    data = distributed.replicate(jnp.ones((100, 2)), mesh)
    state, _ = step(state, data)
    n_after_first = len(traces)
    for _ in range(10):
        state, _ = step(state, data)
    assert len(traces) == n_after_first
    assert step._cache_size() == 1
    assert int(state.step) == 22


class _Killed(Exception):
    pass


def _run(workdir, total, kill_at=None, save_every=8):
    state, step, data = _setup(4, steps_per_call=4)
    ckpt = checkpoint.Checkpointer(workdir, save_every=save_every, keep=2)
    state = ckpt.restore(state)
    losses = {}

    def callback(s, m):
        for i, l in enumerate(m["loss"]):
            losses[s - len(m["loss"]) + i + 1] = float(l)
        if kill_at is not None and s >= kill_at:
            raise _Killed

    with ckpt:
        try:
            state, _ = train.fit(state, step, data, total, steps_per_call=4,
                                 callback=callback, checkpointer=ckpt)
        except _Killed:
            return None, losses
    return state, losses


def test_kill_and_resume_is_exact(tmp_path):
    straight, straight_losses = _run(str(tmp_path / "a"), 40)
    # killed at step 20: checkpoints exist at 8 and 16; steps 17..20 are lost
    assert _run(str(tmp_path / "b"), 40, kill_at=20)[0] is None
    assert checkpoint.latest_step(str(tmp_path / "b")) == 16
    resumed, resumed_losses = _run(str(tmp_path / "b"), 40)
    assert int(resumed.step) == 40
    for a, b in zip(jax.tree_util.tree_leaves(_host(straight)),
                    jax.tree_util.tree_leaves(_host(resumed))):
        np.testing.assert_array_equal(a, b)
    for s in range(17, 41):
        assert resumed_losses[s] == straight_losses[s]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # w moves from 0 towards 1; the loss turns NaN once w > 0.5 (after ~10 steps)
    def loss(params, key, batch):
        w = params["w"]
        value = jnp.mean((w - batch) ** 2)
        return jnp.where(w < 0.5, value, jnp.nan), {}

    opt = train.make_optimizer(lr=0.05)
    step = train.make_train_step(loss, opt, sample_batch=lambda k, d: d, steps_per_call=1,
                                 ema_decay=0.0)
    state = train.create_train_state(jax.random.PRNGKey(0), {"w": jnp.zeros(())}, opt)
    with checkpoint.Checkpointer(str(tmp_path), save_every=3, keep=5, async_save=False) as ckpt:
        with pytest.raises(train.NonFiniteLossError, match="loss became nan at step"):
            train.fit(state, step, jnp.ones((BATCH,)), 100, checkpointer=ckpt)
        last = ckpt.latest_step()
        assert last is not None and 3 <= last < 20
        restored = ckpt.restore(state)
    assert np.isfinite(float(restored.params["w"])) and float(restored.params["w"]) < 0.5


def test_batch_not_divisible_by_devices():
    with pytest.raises(ValueError, match="not divisible"):
        distributed.check_batch_size(30, distributed.make_mesh(4))


def test_fit_rejects_misaligned_fused_steps():
    state, step, data = _setup(1, steps_per_call=4)
    with pytest.raises(ValueError, match="multiple of steps_per_call"):
        train.fit(state, step, data, 10, steps_per_call=4)


def test_sharded_map_matches_direct():
    mesh = distributed.make_mesh(4)
    x = np.random.default_rng(0).normal(size=(37, 3)).astype(np.float32)
    fn = lambda p, key, c, idx: (jnp.tanh(c) * p, jnp.sum(c**2, -1))
    out = distributed.sharded_map(fn, 2.0, x, mesh=mesh, chunk_size=4)
    np.testing.assert_allclose(out[0], np.tanh(x) * 2.0, rtol=1e-6)
    np.testing.assert_allclose(out[1], np.sum(x**2, -1), rtol=1e-5)


# ------------------------------------------------------------------ schedules


@pytest.mark.parametrize("rate,every", [(0.99, 1000), (0.9, 4000), (0.8, 4000)])
def test_step_schedule_is_lr_times_rate_to_floor(rate, every):
    sched = train.make_schedule(2e-3, "step", decay_rate=rate, decay_every=every)
    steps = np.array([0, 1, every - 1, every, every + 1, 3 * every + 7, 50 * every - 1])
    got = np.array([float(sched(k)) for k in steps])
    np.testing.assert_allclose(got, 2e-3 * rate ** np.floor(steps / every), rtol=1e-5)  # f32


def test_step_schedule_after_warmup_counts_from_warmup_end():
    sched = train.make_schedule(1.0, "step", warmup_steps=10, decay_rate=0.5, decay_every=5)
    got = np.array([float(sched(k)) for k in (0, 5, 10, 14, 15, 26)])
    np.testing.assert_allclose(got, [0.0, 0.5, 1.0, 1.0, 0.5, 0.125], rtol=1e-6)


def test_warmup_cosine_schedule_matches_direct_formula():
    lr, warm, total, f = 3e-4, 100, 1100, 0.1
    sched = train.make_schedule(lr, "cosine", warmup_steps=warm, total_steps=total,
                                end_lr_factor=f)
    steps = np.array([0, 1, 50, 99, 100, 101, 600, 1099, 1100, 5000])
    kp = np.clip(steps - warm, 0, total - warm) / (total - warm)
    cos = lr * (f + (1 - f) * 0.5 * (1 + np.cos(np.pi * kp)))
    direct = np.where(steps < warm, lr * steps / warm, cos)
    got = np.array([float(sched(k)) for k in steps])
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-12)


def test_bad_schedule_arguments_are_named():
    with pytest.raises(ValueError, match="unknown schedule"):
        train.make_schedule(1e-3, "exponential")
    with pytest.raises(ValueError, match="decay_every"):
        train.make_schedule(1e-3, "step", decay_rate=0.99)


def test_adam_no_clip_matches_direct_adam(x64):
    """grad_clip=0: the update is plain Adam with the step-decayed lr, computed by hand."""
    lr, rate, every, b1, b2, eps = 0.1, 0.5, 2, 0.9, 0.999, 1e-8
    opt = train.make_optimizer(lr=lr, schedule="step", decay_rate=rate, decay_every=every,
                               grad_clip=0.0)
    p = jnp.array([1.0, -2.0])
    state = opt.init(p)
    m, v, p_ref = np.zeros(2), np.zeros(2), np.array([1.0, -2.0])
    for k in range(5):
        g = 1e3 * np.array([np.sin(k + 1.0), np.cos(k + 1.0)])  # large: clipping would show
        upd, state = opt.update(jnp.asarray(g), state, p)
        p = p + upd
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        m_hat, v_hat = m / (1 - b1 ** (k + 1)), v / (1 - b2 ** (k + 1))
        p_ref = p_ref - lr * rate ** (k // every) * m_hat / (np.sqrt(v_hat) + eps)
        np.testing.assert_allclose(np.asarray(p), p_ref, rtol=1e-7)  # lr held in float32


def test_optimizer_takes_a_prebuilt_schedule_as_lr():
    """make_optimizer(lr=schedule) is the same optimiser as the one it builds itself."""
    kw = dict(schedule="cosine", warmup_steps=2, total_steps=6)
    built = train.make_optimizer(lr=0.1, grad_clip=1.0, **kw)
    given = train.make_optimizer(lr=train.make_schedule(0.1, **kw), grad_clip=1.0)
    p = jnp.array([1.0, -2.0])
    states = [built.init(p), given.init(p)]
    for k in range(6):
        g = jnp.array([np.sin(k + 1.0), np.cos(k + 1.0)])
        (u1, states[0]), (u2, states[1]) = (built.update(g, states[0], p),
                                            given.update(g, states[1], p))
        np.testing.assert_array_equal(np.asarray(u1), np.asarray(u2))
        assert k < 2 or float(jnp.abs(u1).max()) > 0  # past the warm-up the lr acts


def _tmp_dirs(directory):
    return [p.name for p in Path(directory).iterdir() if "tmp" in p.name]


def test_diverged_run_keeps_finite_checkpoint_and_resumes_with_lower_lr(tmp_path):
    # lr -> 1e6, one step per call, a checkpoint after every call (issue 9, item 1); the
    # warm-up makes the loss finite for a few steps, so there is a checkpoint to keep
    directory = str(tmp_path / "ckpt")
    state, step, data = _setup(1, steps_per_call=1, lr=1e6, warmup_steps=100)
    with checkpoint.Checkpointer(directory, save_every=1, keep=2) as ckpt:
        with pytest.raises(train.NonFiniteLossError) as err:
            train.fit(state, step, data, 50, checkpointer=ckpt)
    kept = checkpoint.latest_step(directory)
    assert kept is not None
    msg = str(err.value)
    assert f"Kept checkpoint: step {kept} in {os.path.join(directory, str(kept))}" in msg
    assert "lower the learning rate" in msg and "same command" in msg
    assert not _tmp_dirs(directory)
    # same command with a sane lr: restores the kept state and trains to the end
    fresh, sane_step, data = _setup(1, steps_per_call=1, lr=1e-3)
    with checkpoint.Checkpointer(directory, save_every=1, keep=2) as ckpt:
        resumed = ckpt.restore(fresh)
        assert int(resumed.step) == kept
        resumed, hist = train.fit(resumed, sane_step, data, kept + 10, checkpointer=ckpt)
    assert int(resumed.step) == kept + 10
    assert np.all(np.isfinite(hist["loss"])) and len(hist["loss"]) == 10
    assert checkpoint.latest_step(directory) == kept + 10


def test_kept_checkpoint_params_gave_finite_loss(tmp_path):
    # the loss is NaN as soon as w >= 0.5; the update after the last finite loss
    # (w crosses 0.5) must never be the kept state, even with save_every=1
    def loss(params, key, batch):
        w = params["w"]
        return jnp.where(w < 0.5, jnp.mean((w - batch) ** 2), jnp.nan), {}

    opt = train.make_optimizer(lr=0.05)
    step = train.make_train_step(loss, opt, sample_batch=lambda k, d: d, steps_per_call=1,
                                 ema_decay=0.0)
    state = train.create_train_state(jax.random.PRNGKey(0), {"w": jnp.zeros(())}, opt)
    with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=3) as ckpt:
        with pytest.raises(train.NonFiniteLossError, match="loss became nan at step"):
            train.fit(state, step, jnp.ones((BATCH,)), 100, checkpointer=ckpt)
        restored = ckpt.restore(state)
    assert float(restored.params["w"]) < 0.5


def test_error_in_callback_leaves_no_tmp_checkpoint(tmp_path):
    state, step, data = _setup(1, steps_per_call=1)

    def callback(s, m):
        if s == 3:
            raise _Killed

    with checkpoint.Checkpointer(str(tmp_path), save_every=1, keep=5) as ckpt:
        with pytest.raises(_Killed):
            train.fit(state, step, data, 10, callback=callback, checkpointer=ckpt)
        assert not _tmp_dirs(tmp_path)
        assert ckpt.latest_step() in (1, 2)


def test_ema_warmup_matches_direct_computation_and_resumes():
    # plain SGD on loss = w: p_{k+1} = p_k - 0.1, so the EMA has a closed recursion
    decay, lr, n = 0.9, 0.1, 12
    loss = lambda params, key, batch: (jnp.sum(params["w"]) * batch.mean(), {})
    opt = optax.sgd(lr)
    init = {"w": jnp.full((3,), 2.0)}
    fused = train.make_train_step(loss, opt, sample_batch=lambda k, d: d, steps_per_call=n,
                                  ema_decay=decay, donate=False)
    single = train.make_train_step(loss, opt, sample_batch=lambda k, d: d, steps_per_call=1,
                                   ema_decay=decay, donate=False)
    data = jnp.ones((4,))
    state = train.create_train_state(jax.random.PRNGKey(0), init, opt)
    out, _ = fused(state, data)
    e, p = 2.0, 2.0
    for k in range(n):
        p = p - lr
        d = min(decay, (1 + k) / (10 + k))
        e = d * e + (1 - d) * p
    np.testing.assert_allclose(np.asarray(out.ema_params["w"]), e, rtol=1e-6)
    assert e != pytest.approx(decay ** n * 2.0 + (1 - decay ** n) * p)  # not the constant-d EMA
    # resume: k comes from state.step, so n single calls give the same EMA
    s = state
    for _ in range(n):
        s, _ = single(s, data)
    np.testing.assert_allclose(np.asarray(s.ema_params["w"]), np.asarray(out.ema_params["w"]),
                               rtol=1e-6)
    assert float(train.ema_decay_at(10_000, decay)) == pytest.approx(decay)
    with pytest.raises(ValueError, match="ema_decay"):
        train.make_train_step(loss, opt, ema_decay=1.0)


def test_host_batches_depend_on_seed_and_step_only():
    from lfm_jax import distributed

    mesh = distributed.make_mesh()
    data = {"x": np.arange(100, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32),
            "y": np.arange(100, dtype=np.int32)}
    feed = train.HostBatches(data, batch_size=8, steps_per_call=3, seed=7, mesh=mesh)
    b = feed(6)
    assert b["x"].shape == (3, 8, 3) and b["y"].shape == (3, 8)
    np.testing.assert_array_equal(np.asarray(b["x"])[..., 0], np.asarray(b["y"]))
    # the call at step 6 holds steps 6, 7, 8: the same rows as calls at 7 and 8 fed alone
    again = train.HostBatches(data, batch_size=8, steps_per_call=1, seed=7, mesh=mesh)
    np.testing.assert_array_equal(np.asarray(again(7)["y"])[0], np.asarray(b["y"])[1])
    assert not np.array_equal(np.asarray(feed(9)["y"]), np.asarray(b["y"]))


def test_host_batches_reject_ragged_arrays_and_bad_batch():
    from lfm_jax import distributed

    mesh = distributed.make_mesh()
    with pytest.raises(ValueError, match="number of rows"):
        train.HostBatches({"x": np.zeros((5, 2)), "y": np.zeros(4)}, 4, 1, 0, mesh)
    with pytest.raises(ValueError, match="at least one array"):
        train.HostBatches({}, 4, 1, 0, mesh)


def test_fit_feeds_host_batches_to_a_batch_step():
    from lfm_jax import distributed

    mesh = distributed.make_mesh()
    data = np.linspace(-1, 1, 64, dtype=np.float32)[:, None]

    def loss_fn(params, key, batch):
        return jnp.mean((batch[:, 0] - params["m"]) ** 2), {}

    opt = optax.sgd(0.1)
    step_fn = train.make_train_step(loss_fn, opt, steps_per_call=2, mesh=mesh,
                                    prepare_batch=lambda key, b: 2.0 * b)
    state = train.create_train_state(jax.random.PRNGKey(0), {"m": jnp.zeros(())}, opt, mesh)
    feed = train.HostBatches(data, 16, 2, seed=0, mesh=mesh)
    state, hist = train.fit(state, step_fn, feed, 20, steps_per_call=2)
    assert int(state.step) == 20 and len(hist["loss"]) == 20
    # prepare_batch doubled the rows: the mean of 2 x data (0) is learned, loss ~ var
    assert abs(float(state.params["m"])) < 0.2
    assert np.mean(hist["loss"][-4:]) > 0.5  # var of 2 * U(-1, 1) grid ~ 1.35
