"""Local Flow Matching: OU steps, step sizes, exact Gaussian blocks, invertibility,
the block loss, and kill-and-resume of block-by-block training."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import flow_matching, interpolants, lfm, networks, ode, time_sampling


def _gaussian_log_prob(x, m, C):
    d = len(m)
    diff = x - m
    sol = np.linalg.solve(C, diff.T).T
    _, logdet = np.linalg.slogdet(C)
    return -0.5 * np.sum(diff * sol, axis=1) - 0.5 * logdet - 0.5 * d * math.log(2 * math.pi)


def _random_gaussian(rng, d):
    A = rng.normal(size=(d, d)) / math.sqrt(d)
    return rng.normal(size=d) * 1.5, A @ A.T * 2.0 + 0.3 * np.eye(d)


def _exact_blocks(m, C, hs):
    """Params of the exact affine blocks for data N(m, C) and the final law."""
    params = []
    for h in hs:
        params.append({"mean": jnp.asarray(m), "cov": jnp.asarray(C), "h": jnp.asarray(h)})
        m, C = (np.asarray(v) for v in lfm.ou_moments(m, C, h))
    return params, (m, C)


def test_ou_step_moments():
    key = jax.random.PRNGKey(0)
    n, h = 200_000, 0.3
    x = jnp.full((n, 2), 2.0) + jnp.array([[0.0, -4.0]])
    y = lfm.ou_step(key, x, h)
    a = math.exp(-h)
    np.testing.assert_allclose(np.mean(y, 0), a * np.array([2.0, -2.0]), atol=0.01)
    np.testing.assert_allclose(np.var(y, 0), 1 - a * a, rtol=0.02)
    # Per-example h, and h = inf forgets x.
    y = lfm.ou_step(key, x[:4], jnp.array([0.0, 0.1, 1.0, jnp.inf]))
    np.testing.assert_allclose(y[0], x[0])
    z = jax.random.normal(key, (4, 2))
    np.testing.assert_allclose(y[3], z[3], rtol=1e-6)
    m, C = lfm.ou_moments(jnp.ones(2), 4.0 * jnp.eye(2), h)
    np.testing.assert_allclose(m, a * np.ones(2), rtol=1e-6)
    np.testing.assert_allclose(C, (4 * a * a + 1 - a * a) * np.eye(2), rtol=1e-6)


def test_step_sizes():
    hs = lfm.step_sizes(4, c=0.025, rho=1.25)
    np.testing.assert_allclose(hs, [0.025, 0.03125, 0.0390625, 0.048828125])
    hs = lfm.step_sizes(3, c=0.1, rho=2.0, free_last_block=True)
    assert hs[:2] == (0.1, 0.2) and math.isinf(hs[2])
    assert lfm.step_sizes(0, explicit=[0.15, 0.2, 0.26]) == (0.15, 0.2, 0.26)
    assert len(lfm.step_sizes(4, explicit=[0.15, 0.2, 0.26], free_last_block=True)) == 4
    with pytest.raises(ValueError):
        lfm.step_sizes(2, explicit=[0.1, 0.2, 0.3])
    np.testing.assert_allclose(lfm.cumulative_ou_time([0.1, 0.2]), [0.0, 0.1, 0.3])


@pytest.mark.parametrize("interp_name,free", [("linear", True), ("trig", False)])
def test_exact_gaussian_blocks_log_prob(x64, interp_name, free):
    """With the exact affine fields, log_prob equals the Gaussian log-density."""
    rng = np.random.default_rng(0)
    d = 3
    m, C = _random_gaussian(rng, d)
    hs = lfm.step_sizes(3, c=0.2, rho=1.5, free_last_block=free)
    params, (m_N, C_N) = _exact_blocks(m, C, hs)
    model = lfm.LocalFlow(lfm.gaussian_block_velocity(interpolants.get(interp_name)),
                          hs, (d,), ode=ode.Options(rtol=1e-10, atol=1e-10),
                          chunk_size=64)
    x = rng.multivariate_normal(m, C, size=64)
    per_block = model.log_prob(params, x, per_block=True)
    exact = _gaussian_log_prob(x, m, C)
    # The push-forward is exact: T(x) ~ N(m_N, C_N); log q(x) = log p(x)
    # - log N(T x; m_N, C_N) + log N(T x; 0, I), which is log p(x) for a free block.
    Tx = model.push_forward(params, x)
    expected = exact - _gaussian_log_prob(Tx, m_N, C_N) + _gaussian_log_prob(
        Tx, np.zeros(d), np.eye(d))
    np.testing.assert_allclose(per_block[-1], expected, rtol=1e-7, atol=1e-7)
    if free:
        np.testing.assert_allclose(per_block[-1], exact, rtol=1e-7, atol=1e-7)
        np.testing.assert_allclose(m_N, 0.0, atol=1e-12)
    np.testing.assert_allclose(per_block[0], _gaussian_log_prob(x, np.zeros(d), np.eye(d)),
                               rtol=1e-12)
    np.testing.assert_allclose(model.log_prob(params, x), per_block[-1], rtol=1e-12)
    # Moment check: the exact block for the sample's own moments matches the OU
    # prediction up to the ODE error.
    big = rng.multivariate_normal(m, C, size=2_000)
    sample_params, _ = _exact_blocks(big.mean(0), np.cov(big, rowvar=False), hs[:1])
    check = lfm.moment_check(big, model.block_map(sample_params[0], big), hs[0])
    assert check["mean_err_max"] < 1e-9 and check["cov_err_max"] < 1e-9


def test_invertibility_and_generate_shapes():
    net = networks.velocity_mlp((2,), hidden=(32, 32))
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    params = [net.init(k) for k in keys]
    model = lfm.LocalFlow(net.apply, lfm.step_sizes(3, c=0.1, rho=1.5), (2,),
                          ode=ode.Options(rtol=1e-6, atol=1e-6), chunk_size=40)
    x = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (50, 2)))  # 2 chunks, padded
    z = model.push_forward(params, x)
    assert z.shape == x.shape
    assert np.max(np.abs(z - x)) > 1e-2  # random fields move the points
    np.testing.assert_allclose(model.push_backward(params, z), x, atol=1e-4)
    samples = model.generate(params, jax.random.normal(jax.random.PRNGKey(3), (10, 2)))
    assert samples.shape == (10, 2) and np.all(np.isfinite(samples))
    # Hutchinson (many probes) is close to the exact divergence.
    exact = model.log_prob(params, x[:8])
    hutch = model.log_prob(params, x[:8], method="hutchinson", n_probes=64,
                           key=jax.random.PRNGKey(4))
    np.testing.assert_allclose(hutch, exact, atol=0.1)


def test_block_loss_minimised_by_exact_field(x64):
    """The block loss is lower at the exact Gaussian field than at perturbations."""
    rng = np.random.default_rng(1)
    m, C = _random_gaussian(rng, 2)
    interp = interpolants.get("linear")
    velocity = lfm.gaussian_block_velocity(interp)
    loss_fn = flow_matching.make_loss(velocity, interp, time_sampling.get("uniform"),
                                      lfm.ou_pairs)
    sample_batch = lfm.make_sample_batch(50_000)
    data = {"x": jnp.asarray(rng.multivariate_normal(m, C, 50_000)), "h": 0.3}
    batch = sample_batch(jax.random.PRNGKey(0), data)
    assert batch["x"].shape == (50_000, 2) and batch["h"].shape == (50_000,)
    params = {"mean": jnp.asarray(m), "cov": jnp.asarray(C), "h": jnp.asarray(0.3)}
    best, _ = loss_fn(params, jax.random.PRNGKey(1), batch)
    for dm in ([0.2, 0.0], [0.0, -0.2]):
        worse = dict(params, mean=params["mean"] + jnp.asarray(dm))
        assert loss_fn(worse, jax.random.PRNGKey(1), batch)[0] > best
    worse = dict(params, cov=params["cov"] * 1.3)
    assert loss_fn(worse, jax.random.PRNGKey(1), batch)[0] > best


def test_chi_square_diagnostics():
    log_p = np.log(np.array([0.5, 0.5, 0.5]))
    out = lfm.chi_square_diagnostics(log_p, log_p)
    assert abs(out["excess_nll"]) < 1e-12 and abs(out["chi2"]) < 1e-12
    out = lfm.chi_square_diagnostics(log_p, log_p - 1.0)
    np.testing.assert_allclose(out["excess_nll"], 1.0)
    np.testing.assert_allclose(out["chi2"], math.e - 1.0)


class _Stop(Exception):
    pass


def _tiny_config():
    from configs import default

    config = default.get_config()
    config.method = "lfm"
    config.data.n_train, config.data.n_val, config.data.n_test = 256, 64, 64
    config.model.hidden = (16, 16)
    config.model.num_frequencies = 2
    config.lfm.num_blocks = 2
    config.lfm.step_c = 0.3
    config.lfm.free_last_block = True
    config.lfm.steps_per_block = 40
    config.lfm.push_ode.rtol = config.lfm.push_ode.atol = 1e-3
    config.lfm.chunk_size = 128
    config.lfm.n_val = 32
    config.train.batch_size = 32
    config.train.steps_per_call = 10
    config.train.checkpoint_every = 20
    config.train.warmup_steps = 5
    return default.locked(config)


def test_resume_inside_block_2_matches_uninterrupted(tmp_path):
    import os
    import shutil

    from lfm_jax.runs import block_store, common, lfm_blocks

    config = _tiny_config()
    dataset = common.load_data(config)
    _, straight, reports = lfm_blocks.train_blocks(config, dataset, str(tmp_path / "a"),
                                                verbose=False)
    assert [r["block"] for r in reports] == [0, 1, 2]

    def kill(block, step, metrics):
        if block == 2 and step >= 30:
            raise _Stop

    workdir = str(tmp_path / "b")
    with pytest.raises(_Stop):
        lfm_blocks.train_blocks(config, dataset, workdir, callback=kill, verbose=False)
    # as if killed during block 1's push: its artefacts hold its params only, and an
    # unfinished version; the restart pushes again (the same rows) without training
    # block 1 again, and removes the unfinished version
    artefacts = tmp_path / "b" / "blocks" / "1" / "artefacts"
    template = jax.tree_util.tree_map(np.asarray, straight[0])
    with block_store.BlockArtefacts(workdir, 1) as store:
        pushed, params = store.train_pushed(), store.params(template)
    shutil.rmtree(artefacts)
    with block_store.BlockArtefacts(workdir, 1) as store:
        store.save(params=params)
    (artefacts / "2.orbax-checkpoint-tmp").mkdir()
    (artefacts / "2.orbax-checkpoint-tmp" / "train_pushed").write_bytes(b"half")

    seen = []
    _, resumed, _ = lfm_blocks.train_blocks(
        config, dataset, workdir, verbose=False,
        callback=lambda block, step, m: seen.append((block, step)))
    assert seen and all(block == 2 for block, _ in seen)  # block 1 not retrained
    assert seen[0][1] > 20  # resumed inside block 2 from its checkpoint
    assert len(os.listdir(artefacts)) == 1 and os.listdir(artefacts)[0].isdigit()
    with block_store.BlockArtefacts(workdir, 1) as store:
        np.testing.assert_array_equal(store.train_pushed(), pushed)
        assert store.report()["block"] == 1 and store.val_pushed((32, 2)) is not None
    for a, b in zip(straight, resumed):
        jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)


def test_sharded_push_and_hutchinson_probes_keyed_by_global_index():
    """Pushes and log-dets are sharded over the 4 test devices; Hutchinson probes
    depend on the global example index only (no two examples share probes, and the
    result does not depend on chunk_size or on the device count)."""
    from lfm_jax import distributed

    d = 16  # 2^16 Rademacher probes: distinct probes give distinct estimates
    net = networks.velocity_mlp((d,), hidden=(16,))
    params = net.init(jax.random.PRNGKey(0))
    hs = lfm.step_sizes(1, c=0.3)
    x = np.repeat(np.linspace(-1, 1, d, dtype=np.float32)[None], 37, axis=0)  # 37 copies
    key = jax.random.PRNGKey(1)
    out = {}
    for ndev, chunk in ((4, 3), (4, 16), (1, 37)):
        model = lfm.LocalFlow(net.apply, hs, (d,), ode=ode.Options(rtol=1e-6, atol=1e-6),
                              chunk_size=chunk)
        mesh = distributed.make_mesh(ndev)
        y, delta = model.block_log_det(params, x, method="hutchinson", key=key, mesh=mesh)
        out[ndev, chunk] = delta
        np.testing.assert_allclose(y, model.block_map(params, x, mesh=mesh), atol=1e-5)
    ref = out[4, 3]
    for delta in out.values():
        np.testing.assert_allclose(delta, ref, rtol=1e-5, atol=1e-6)
    assert len(np.unique(np.round(ref, 6))) > 30  # distinct probes for every copy
    exact = model.block_log_det(params, x[:1])[1]
    assert abs(np.mean(ref) - exact[0]) < 3 * np.std(ref) / math.sqrt(len(ref)) + 1e-3


def _rate_velocity(params, t, x):
    """dx/dt = (0, -s k x[1:]) with k = x[0] (constant along the flow), s = params:
    rows with k = 1e4 are stiff (thousands of explicit steps), k <= 2 easy."""
    return jnp.concatenate([jnp.zeros(1, x.dtype), -params * x[0] * x[1:]])


def test_failed_solves_nan_in_evaluation_and_raise_in_training_push():
    """on_failure="nan": exactly the stiff rows are NaN through log_prob (every
    truncation after their failing block), block_log_det and generation-style pushes;
    "raise" (the default) and the training-data push still refuse them."""
    from lfm_jax.runs import common, lfm_parts

    hs = lfm.step_sizes(2, c=0.2, rho=1.0)
    options = ode.Options(rtol=1e-4, atol=1e-4, max_steps=16)
    model = lfm.LocalFlow(_rate_velocity, hs, (3,), ode=options, chunk_size=4)
    nan_model = dataclasses.replace(
        model, ode=dataclasses.replace(options, on_failure="nan"))
    params = [jnp.float32(1.0), jnp.float32(1.0)]
    x = np.array([[0.0, 1.0, 2.0], [1.0, 1.0, -1.0], [1e4, 1.0, 1.0], [2.0, 0.5, 0.5],
                  [1e4, -1.0, 0.0]], np.float32)
    fails = np.array([False, False, True, False, True])
    ok = ~fails

    lp = nan_model.log_prob(params, x, per_block=True)
    assert lp.shape == (3, 5)
    assert not np.isnan(lp[0]).any()  # block 0: the base density, no solve
    for row in lp[1:]:
        np.testing.assert_array_equal(np.isnan(row), fails)
    # easy rows: the same values as without failures in the batch
    np.testing.assert_allclose(lp[-1][ok], model.log_prob(params, x[ok]), rtol=1e-6)
    y, delta = nan_model.block_log_det(params[0], x)
    np.testing.assert_array_equal(lfm.failed_rows(y), fails)
    np.testing.assert_array_equal(np.isnan(delta), fails)
    np.testing.assert_allclose(delta[ok], -2 * x[ok, 0], rtol=1e-4, atol=1e-4)
    back = nan_model.push_backward(params[:1], y)
    np.testing.assert_array_equal(lfm.failed_rows(back), fails)
    np.testing.assert_allclose(back[ok], x[ok], atol=1e-3)

    with pytest.raises(Exception, match="(?i)max"):
        model.log_prob(params, x)
    with pytest.raises(lfm_parts.PushFailedError, match="block 3: .* 2 of 5 training"):
        lfm_parts.push_training_data(model, params[0], x, 3)
    np.testing.assert_allclose(lfm_parts.push_training_data(model, params[0], x[ok], 1),
                               y[ok], atol=1e-3)  # y: from the augmented solve
    with pytest.raises(TypeError, match="ode.Options"):
        lfm.LocalFlow(_rate_velocity, hs, (3,), ode={"on_failure": "skip"})
    nll, se, n_failed = common.finite_nll(lp[-1])
    assert n_failed == 2 and np.isclose(nll, -np.mean(lp[-1][ok]))
