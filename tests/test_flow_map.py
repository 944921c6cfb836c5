"""Flow maps: parametrisation, sampling, (s, t) samplers, the docs/maths.md section 4 objectives and
their stop-gradients, checked on the closed-form Gaussian flow (x0 noise at t = 0):

  x0 ~ N(0, I), x1 ~ N(m, sigma^2 I), independent, linear interpolant;
  mu_t = t m, sigma_t^2 = (1 - t)^2 + t^2 sigma^2,
  b_t(x) = m + (sigma'_t / sigma_t)(x - mu_t),  X_{s,t}(x) = mu_t + (sigma_t/sigma_s)(x - mu_s).
"""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from lfm_jax import data, distill, flow_map, interpolants, losses

M = np.array([1.0, -0.5])
SIGMA = 0.5
DIM = 2


def _sig(t):
    return jnp.sqrt((1 - t) ** 2 + t ** 2 * SIGMA ** 2)


def exact_b(t, x):
    dsig = (-(1 - t) + t * SIGMA ** 2) / _sig(t)
    return M + dsig / _sig(t) * (x - t * M)


def exact_X(s, t, x):
    return t * M + _sig(t) / _sig(s) * (x - s * M)


def perturbed_X(s, t, x):
    return exact_X(s, t, x) + 0.1 * (t - s) * jnp.sin(x)


LINEAR = interpolants.linear()


def _at(X=None, **kw):
    """`flow_map.Closures` of a closed-form map/velocity."""
    return flow_map.Closures(X=X, **kw)


def _points(key, n=16):
    """n random (s, t, x) with x ~ rho_s (float64 under the x64 fixture)."""
    ks, kt, kx = jax.random.split(key, 3)
    s = jax.random.uniform(ks, (n,), jnp.float64)
    t = jax.random.uniform(kt, (n,), jnp.float64)
    x = s[:, None] * M[None] + _sig(s)[:, None] * jax.random.normal(kx, (n, DIM), jnp.float64)
    return s, t, x


def tiny_flow_map(**kw):
    return flow_map.make_flow_map((DIM,), hidden=(32, 32), num_frequencies=2,
                                  max_frequency=4.0, **kw)


# ---------------------------------------------------------------------------
# Closed form.
# ---------------------------------------------------------------------------

def test_exact_map_residuals_vanish_and_perturbed_are_positive(x64):
    s, t, x = _points(jax.random.PRNGKey(0))
    # x0 = x1 = x puts the linear interpolant's I_s at x.
    for loss in (losses.lagrangian_distillation, losses.eulerian_distillation):
        exact = jax.vmap(lambda a, c, y: loss(_at(exact_X, teacher=exact_b), LINEAR,
                                              a, a, c, y, y))(s, t, x)
        pert = jax.vmap(lambda a, c, y: loss(_at(perturbed_X, teacher=exact_b), LINEAR,
                                             a, a, c, y, y))(s, t, x)
        assert float(jnp.max(exact)) < 1e-20, loss.__name__
        assert float(jnp.min(pert)) > 1e-8 and float(jnp.mean(pert)) > 1e-4, loss.__name__
    # Progressive: the exact map is its own k-step teacher.
    pf = jax.vmap(lambda a, c, y: losses.progressive_distillation(
        _at(exact_X, teacher_map=exact_X), LINEAR, a, a, c, y, y, num_teacher_steps=3))
    assert float(jnp.max(pf(s, t, x))) < 1e-20
    assert float(jnp.mean(jax.vmap(lambda a, c, y: losses.progressive_distillation(
        _at(perturbed_X, teacher_map=exact_X), LINEAR, a, a, c, y, y,
        num_teacher_steps=3))(s, t, x))) > 1e-4


def test_exact_map_is_a_minimiser_of_direct_matching(x64):
    """The invertibility term vanishes and the derivative term is stationary: the
    gradient of E[loss] in a perturbation direction eps is 0 at eps = 0."""
    key = jax.random.PRNGKey(1)
    n = 20000
    k0, k1, ks, kt = jax.random.split(key, 4)
    x0 = jax.random.normal(k0, (n, DIM), jnp.float64)
    x1 = M[None] + SIGMA * jax.random.normal(k1, (n, DIM), jnp.float64)
    s = jax.random.uniform(ks, (n,), jnp.float64)
    t = jax.random.uniform(kt, (n,), jnp.float64)
    interp = interpolants.linear()

    def mean_loss(eps):
        X = lambda a, c, y: exact_X(a, c, y) + eps * (c - a) * jnp.tanh(y)
        return jnp.mean(jax.vmap(lambda a, c, p, q: losses.flow_map_matching(
            _at(X), interp, a, a, c, p, q))(s, t, x0, x1))

    inv = jax.vmap(lambda a, c, p, q: jnp.sum(
        (exact_X(a, c, exact_X(c, a, p * (1 - c) + q * c)) - (p * (1 - c) + q * c)) ** 2))
    assert float(jnp.max(inv(s, t, x0, x1))) < 1e-20
    g = jax.grad(mean_loss)(0.0)
    curvature = jax.grad(jax.grad(mean_loss))(0.0)
    assert abs(float(g)) < 0.05 * float(curvature)  # Monte-Carlo noise only


def test_composition_and_rk4_teacher(x64):
    s, t, x = _points(jax.random.PRNGKey(2))
    u = jax.random.uniform(jax.random.PRNGKey(3), s.shape, jnp.float64)
    comp = jax.vmap(lambda a, b_, c, y: exact_X(b_, c, exact_X(a, b_, y)))(s, u, t, x)
    np.testing.assert_allclose(comp, jax.vmap(exact_X)(s, t, x), atol=1e-12)
    # X_{t,s} o X_{s,t} = id.
    back = jax.vmap(lambda a, c, y: exact_X(c, a, exact_X(a, c, y)))(s, t, x)
    np.testing.assert_allclose(back, x, atol=1e-12)
    # The RK4 teacher map of the exact velocity reproduces the exact map.
    rk4 = distill.ode_flow_map(exact_b, num_steps=32)
    np.testing.assert_allclose(jax.vmap(rk4)(s, t, x), jax.vmap(exact_X)(s, t, x), atol=1e-8)
    # Time reversal: the reversed field's 0 -> 1 flow inverts b's.
    rev = distill.ode_flow_map(distill.time_reversed(exact_b), num_steps=32)
    np.testing.assert_allclose(jax.vmap(lambda y: rev(0.0, 1.0, exact_X(0.0, 1.0, y)))(x),
                               x, atol=1e-8)


def test_sample_composes_steps_batched_and_single(x64):
    x = jax.random.normal(jax.random.PRNGKey(4), (8, DIM), jnp.float64)
    one = flow_map.sample(exact_X, x, jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(one, jax.vmap(lambda y: exact_X(0.0, 1.0, y))(x), atol=1e-12)
    for k in (2, 4, 8):
        np.testing.assert_allclose(flow_map.sample(exact_X, x, flow_map.uniform_grid(k)),
                                   one, atol=1e-12)
    single = flow_map.sample(exact_X, x[0], flow_map.uniform_grid(4), batched=False)
    np.testing.assert_allclose(single, one[0], atol=1e-12)


# ---------------------------------------------------------------------------
# Network parametrisation and derivatives.
# ---------------------------------------------------------------------------

def test_identity_on_diagonal_exactly_and_velocity():
    fmap = tiny_flow_map()
    params = fmap.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (DIM,))
    for s in (0.0, 0.3, 1.0):
        s = jnp.asarray(s)
        np.testing.assert_array_equal(fmap.apply(params, s, s, x), x)
    t = jnp.asarray(0.4)
    v_jvp = flow_map.tangent_velocity(fmap.bind(params))(t, x)
    np.testing.assert_allclose(v_jvp, fmap.diagonal_velocity(params, t, x), rtol=1e-5,
                               atol=1e-6)


def test_jvp_time_derivatives_match_finite_differences(x64):
    fmap = tiny_flow_map()
    params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64),
                                    fmap.init(jax.random.PRNGKey(0)))
    X = fmap.bind(params)
    x = jax.random.normal(jax.random.PRNGKey(1), (DIM,), jnp.float64)
    s, t, h = jnp.asarray(0.2), jnp.asarray(0.7), 1e-5
    _, dt = losses._d_dt(lambda tt: X(s, tt, x), t)
    _, ds = losses._d_dt(lambda ss: X(ss, t, x), s)
    np.testing.assert_allclose(dt, (X(s, t + h, x) - X(s, t - h, x)) / (2 * h), atol=1e-8)
    np.testing.assert_allclose(ds, (X(s + h, t, x) - X(s - h, t, x)) / (2 * h), atol=1e-8)
    # Spatial jvp (the Eulerian advective term) against finite differences too.
    w = jnp.array([0.3, -1.1])
    _, adv = jax.jvp(lambda y: X(s, t, y), (x,), (w,))
    np.testing.assert_allclose(adv, (X(s, t, x + h * w) - X(s, t, x - h * w)) / (2 * h),
                               atol=1e-8)


# ---------------------------------------------------------------------------
# (s, t) samplers.
# ---------------------------------------------------------------------------

def test_time_pair_samplers():
    key = jax.random.PRNGKey(0)
    n = 1000
    s, t = flow_map.get_time_pair_sampler("uniform")(key, n)
    assert s.shape == t.shape == (n,) and float(jnp.mean(s > t)) > 0.4
    s, t = flow_map.get_time_pair_sampler("triangle")(key, n)
    assert bool(jnp.all(s <= t))
    s, t = flow_map.get_time_pair_sampler("diagonal")(key, n)
    assert int(jnp.sum(s == t)) == 750 and bool(jnp.all(s <= t))
    sampler = flow_map.get_time_pair_sampler("annealed", initial_gap=0.1, anneal_steps=100)
    s, t = sampler(key, n, 0)
    assert bool(jnp.all(t - s <= 0.1 + 1e-6)) and bool(jnp.all((s >= 0) & (t <= 1 + 1e-6)))
    s, t = jax.jit(sampler, static_argnums=1)(key, n, jnp.asarray(50))
    assert float(jnp.max(t - s)) > 0.45 and bool(jnp.all(t - s <= 0.55 + 1e-6))
    with pytest.raises(ValueError, match="unknown"):
        flow_map.get_time_pair_sampler("nope")


def _ks(samples, cdf):
    """Kolmogorov-Smirnov statistic sup |F_n - F| of 1-D samples against a CDF."""
    x = np.sort(np.asarray(samples, np.float64))
    n = len(x)
    f = cdf(x)
    return max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n))


def test_time_pair_sampler_fractions_and_laws():
    """Diagonal entries: a fixed fraction, t ~ U[0, 1]; off-diagonal entries of the
    triangle: s with density 2(1 - s), t with density 2t. The KS bound (p ~ 0.001)
    rejects the wrong laws (e.g. t = max of two uniforms on the diagonal: sup 0.25)."""
    n = 20_000
    bound = 1.95 / np.sqrt(n)
    uniform_cdf = lambda x: x  # noqa: E731
    assert _ks(np.max(np.random.default_rng(0).uniform(size=(2, n)), 0), uniform_cdf) > bound
    for name, kw, fraction in [("diagonal", {}, 0.75),
                               ("diagonal", {"diagonal_fraction": 0.2}, 0.2),
                               ("triangle", {"diagonal_fraction": 0.5}, 0.5),
                               ("uniform", {"diagonal_fraction": 0.3}, 0.3)]:
        s, t = flow_map.get_time_pair_sampler(name, **kw)(jax.random.PRNGKey(3), n)
        s, t = np.asarray(s), np.asarray(t)
        on = s == t
        assert on.sum() == round(fraction * n), (name, kw)
        assert _ks(t[on], uniform_cdf) < bound, (name, kw)
        if name != "uniform":
            assert _ks(s[~on], lambda x: 1 - (1 - x) ** 2) < bound, (name, kw)
            assert _ks(t[~on], lambda x: x ** 2) < bound, (name, kw)


def test_config_diagonal_fraction_applies_to_the_default_sampler():
    """config.flow_map.diagonal_fraction sets the diagonal share also when the sampler
    is the objective's default (time_sampler = "")."""
    from configs import flow_map as flow_map_config
    from lfm_jax.runs import flow_map as flow_map_run

    config = flow_map_config.get_config("lsd")
    config.model.hidden = (8,)
    config.flow_map.diagonal_fraction = 0.2
    fmap, loss_fn = flow_map_run.make_flow_map_and_loss(config, "lsd", (DIM,))
    batch = jax.random.normal(jax.random.PRNGKey(1), (100, DIM))
    _, aux = jax.jit(loss_fn)(fmap.init(jax.random.PRNGKey(0)), jax.random.PRNGKey(2), batch)
    np.testing.assert_allclose(aux["off_diagonal"], 0.8)


def test_objective_table_and_options():
    """Every objective's default sampler exists; the two ESD variants differ only in
    their stop-gradient option; bad names and options fail before any tracing."""
    for name, record in losses.OBJECTIVES.items():
        assert record.time_sampler in flow_map.TIME_PAIR_SAMPLERS, name
    assert losses.OBJECTIVES["esd"].options == {"stopgrad": "full"}
    assert losses.OBJECTIVES["esd_meanflow"].options == {"stopgrad": "average_velocity"}
    fmap = tiny_flow_map()
    with pytest.raises(ValueError, match="unknown flow-map objective"):
        distill.make_loss("nope", fmap)
    with pytest.raises(ValueError, match="takes options"):
        distill.make_loss("lsd", fmap, num_teacher_steps=3)
    with pytest.raises(ValueError, match="needs a teacher"):
        distill.make_loss("lmd", fmap)


# ---------------------------------------------------------------------------
# Stop-gradient placement (tiny network, jax.grad over parameters).
# ---------------------------------------------------------------------------

def _sg_setup():
    fmap = tiny_flow_map()
    params = fmap.init(jax.random.PRNGKey(0))
    keys = jax.random.split(jax.random.PRNGKey(1), 2)
    x0 = jax.random.normal(keys[0], (DIM,))
    x1 = M.astype(np.float32) + SIGMA * jax.random.normal(keys[1], (DIM,))
    return fmap, params, x0, x1, interpolants.linear()


def _tree_close(a, b, **kw):
    for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(u, v, **kw)


def _tree_differs(a, b):
    return any(float(jnp.max(jnp.abs(u - v))) > 1e-6 for u, v in
               zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def test_self_distillation_teachers_get_no_gradient():
    """grad(full loss) == grad(loss with the teacher replaced by a constant equal to
    its value); and != grad of the same residual without stop-gradient."""
    fmap, params, x0, x1, interp = _sg_setup()
    s, u, t = jnp.asarray(0.2), jnp.asarray(0.45), jnp.asarray(0.8)
    x_s, _ = interpolants.interpolate(interp, s, x0, x1)
    x_t, dx_t = interpolants.interpolate(interp, t, x0, x1)

    def diag(p):
        return jnp.sum((fmap.diagonal_velocity(p, t, x_t) - dx_t) ** 2)

    # LSD: teacher v_{t,t}(X_{s,t}(I_s)).
    def lsd_teacher(p):
        return fmap.diagonal_velocity(p, t, fmap.apply(p, s, t, x_s))
    T = lsd_teacher(params)

    def lsd_const(p, teacher):
        _, dt = losses._d_dt(lambda tt: fmap.apply(p, s, tt, x_s), t)
        return diag(p) + jnp.sum((dt - teacher(p)) ** 2)

    full = jax.grad(lambda p: losses.lagrangian_self_distillation(
        fmap.closures(p), interp, s, u, t, x0, x1))(params)
    _tree_close(full, jax.grad(lambda p: lsd_const(p, lambda _: T))(params),
                rtol=1e-5, atol=1e-6)
    assert _tree_differs(full, jax.grad(lambda p: lsd_const(p, lsd_teacher))(params))

    # ESD: advective term grad_x X_{s,t}(I_s) v_{s,s}(I_s).
    def esd_teacher(p):
        return jax.jvp(lambda y: fmap.apply(p, s, t, y), (x_s,),
                       (fmap.diagonal_velocity(p, s, x_s),))[1]
    A = esd_teacher(params)

    def esd_const(p, teacher):
        _, ds = losses._d_dt(lambda ss: fmap.apply(p, ss, t, x_s), s)
        return diag(p) + jnp.sum((ds + teacher(p)) ** 2)

    full = jax.grad(lambda p: losses.eulerian_self_distillation(
        _at(fmap.bind(p)), interp, s, u, t, x0, x1, stopgrad="full"))(params)  # jvp velocity
    _tree_close(full, jax.grad(lambda p: esd_const(p, lambda _: A))(params),
                rtol=1e-5, atol=1e-6)
    assert _tree_differs(full, jax.grad(lambda p: esd_const(p, esd_teacher))(params))

    # ESD default ("average_velocity"): same value |R|^2, gradient only through
    # v_{s,t}(I_s), regressed onto the constant v_{s,t} + R.
    def esd_residual(p):
        _, ds = losses._d_dt(lambda ss: fmap.apply(p, ss, t, x_s), s)
        return ds + esd_teacher(p)
    R = esd_residual(params)

    def v_st(p):
        return (fmap.apply(p, s, t, x_s) - x_s) / (t - s)
    target = v_st(params) + R

    def esd_avg_const(p):
        return diag(p) + jnp.sum((v_st(p) - target) ** 2)

    default = lambda p: losses.eulerian_self_distillation(  # noqa: E731
        _at(fmap.bind(p)), interp, s, u, t, x0, x1)
    np.testing.assert_allclose(default(params), diag(params) + jnp.sum(R ** 2), rtol=1e-5)
    avg = jax.grad(default)(params)
    _tree_close(avg, jax.grad(esd_avg_const)(params), rtol=1e-5, atol=1e-6)
    assert _tree_differs(avg, full)
    with pytest.raises(ValueError):
        losses.eulerian_self_distillation(_at(fmap.bind(params)), interp, s, u, t, x0, x1,
                                          stopgrad="none")

    # PSD: two-jump teacher X_{u,t}(X_{s,u}(I_s)).
    def psd_teacher(p):
        return fmap.apply(p, u, t, fmap.apply(p, s, u, x_s))
    P = psd_teacher(params)

    def psd_const(p, teacher):
        return diag(p) + jnp.sum(((fmap.apply(p, s, t, x_s) - teacher(p)) / (t - s)) ** 2)

    full = jax.grad(lambda p: losses.progressive_self_distillation(
        fmap.closures(p), interp, s, u, t, x0, x1))(params)
    _tree_close(full, jax.grad(lambda p: psd_const(p, lambda _: P))(params),
                rtol=1e-5, atol=1e-6)
    assert _tree_differs(full, jax.grad(lambda p: psd_const(p, psd_teacher))(params))


def test_distillation_gradients_flow_through_student_only():
    """LMD differentiates through X_{s,t}(x) inside the frozen teacher (FMM paper);
    PFMM's teacher map gets no gradient; a frozen teacher's params get none."""
    fmap, params, x0, x1, interp = _sg_setup()
    s, t = jnp.asarray(0.2), jnp.asarray(0.6)  # sigma'_t != 0, so b depends on x
    x_s, _ = interpolants.interpolate(interp, s, x0, x1)
    b = lambda tt, y: exact_b(tt, y).astype(y.dtype)

    def lmd_const_point(p, frozen_point):
        x_st, dt = losses._d_dt(lambda tt: fmap.apply(p, s, tt, x_s), t)
        point = frozen_point if frozen_point is not None else x_st
        return jnp.sum((dt - b(t, point)) ** 2)

    full = jax.grad(lambda p: losses.lagrangian_distillation(
        _at(fmap.bind(p), teacher=b), interp, s, s, t, x0, x1))(params)
    _tree_close(full, jax.grad(lambda p: lmd_const_point(p, None))(params), rtol=1e-5, atol=1e-6)
    assert _tree_differs(full, jax.grad(lambda p: lmd_const_point(
        p, fmap.apply(params, s, t, x_s)))(params))

    # Progressive with the student's own params as teacher: only the student moves.
    def pf(p, teacher_p):
        return losses.progressive_distillation(
            _at(fmap.bind(p), teacher_map=fmap.bind(teacher_p)), interp, s, s, t, x0, x1,
            num_teacher_steps=2)
    g_teacher = jax.grad(pf, argnums=1)(params, params)
    assert not _tree_differs(g_teacher, jax.tree_util.tree_map(jnp.zeros_like, params))


def test_learned_weighting_trains_and_masks_diagonal():
    fmap = tiny_flow_map(learned_weighting=True)
    params = fmap.init(jax.random.PRNGKey(0))
    c = fmap.closures(params)
    assert float(c.log_variance(0.2, 0.7)) == 0.0  # zero-initialised
    x0 = jnp.ones((DIM,))
    x1 = jnp.zeros((DIM,))
    interp = interpolants.linear()
    t = jnp.asarray(0.5)
    # On the diagonal the off-diagonal lv(s, t) term is masked: loss = exp(-lv) L_b + lv.
    val = losses.lagrangian_self_distillation(c, interp, t, t, t, x0, x1)
    x_t, dx_t = interpolants.interpolate(interp, t, x0, x1)
    l_b = jnp.sum((fmap.diagonal_velocity(params, t, x_t) - dx_t) ** 2)
    np.testing.assert_allclose(val, l_b, rtol=1e-5)
    loss_fn = distill.make_loss("lsd", fmap, interp=interp)
    batch = jax.random.normal(jax.random.PRNGKey(1), (64, DIM))
    g = jax.jit(jax.grad(lambda p: loss_fn(p, jax.random.PRNGKey(2), batch)[0]))(params)
    assert _tree_differs(g["weight"], jax.tree_util.tree_map(jnp.zeros_like, g["weight"]))


# ---------------------------------------------------------------------------
# Short training runs move the learned map toward the closed form.
# ---------------------------------------------------------------------------

def _map_error(fmap, params, key, n=512):
    """E |X_{s,t}(x) - X*_{s,t}(x)|^2 over s < t uniform on the triangle, x ~ rho_s."""
    ks, kx = jax.random.split(key)
    u = jax.random.uniform(ks, (2, n))
    s, t = jnp.min(u, 0), jnp.max(u, 0)
    x = s[:, None] * M[None] + _sig(s)[:, None] * jax.random.normal(kx, (n, DIM))
    err = jax.vmap(lambda a, c, y: jnp.sum((fmap.apply(params, a, c, y) - exact_X(a, c, y))
                                           ** 2))(s, t, x)
    return float(jnp.mean(err))


def _train(loss_fn, params, steps, lr=3e-3, batch_size=256):
    """Plain optax Adam loop, all steps fused in one lax.scan."""
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, alpha=0.05))
    gauss_data = M[None] + SIGMA * jax.random.normal(jax.random.PRNGKey(123), (8192, DIM))

    @jax.jit
    def run(params):
        def body(carry, i):
            p, o = carry
            key = jax.random.fold_in(jax.random.PRNGKey(7), i)
            batch = data.sample_batch(key, gauss_data.astype(jnp.float32), batch_size)
            g = jax.grad(lambda q: loss_fn(q, jax.random.fold_in(key, 1), batch)[0])(p)
            upd, o = opt.update(g, o, p)
            return (optax.apply_updates(p, upd), o), None

        (p, _), _ = jax.lax.scan(body, (params, opt.init(params)), jnp.arange(steps))
        return p

    return run(params)


# (name, loss factory, steps, required error reduction factor). Observed with 300
# steps (seed 0): distillation and direct matching ~190-420x, self-distillation ~25-75x;
# the asserted factors leave a wide margin.
TRAINING_CASES = [
    ("lmd", lambda fmap: distill.make_loss("lmd", fmap, exact_b), 300, 30.0),
    ("emd", lambda fmap: distill.make_loss("emd", fmap, exact_b), 300, 30.0),
    ("pfmm", lambda fmap: distill.make_loss("pfmm", fmap, exact_b, num_teacher_steps=2,
                                            teacher_substeps=2), 300, 30.0),
    ("fmm", lambda fmap: distill.make_loss("fmm", fmap), 300, 30.0),
    ("lsd", lambda fmap: distill.make_loss("lsd", fmap), 300, 10.0),
    ("esd_meanflow", lambda fmap: distill.make_loss("esd_meanflow", fmap), 300, 10.0),
    ("psd", lambda fmap: distill.make_loss("psd", fmap), 300, 10.0),
]


@pytest.mark.parametrize("name,make_loss,steps,factor", TRAINING_CASES,
                         ids=[c[0] for c in TRAINING_CASES])
def test_training_moves_map_toward_closed_form(name, make_loss, steps, factor):
    fmap = tiny_flow_map(zero_init_output=True)  # starts at X = id
    params = fmap.init(jax.random.PRNGKey(0))
    before = _map_error(fmap, params, jax.random.PRNGKey(99))
    params = _train(make_loss(fmap), params, steps)
    after = _map_error(fmap, params, jax.random.PRNGKey(99))
    assert np.isfinite(after)
    assert after < before / factor, f"{name}: error {before:.4f} -> {after:.4f}"


def test_lead_trainer_and_lfm_block_path():
    """distill.train_flow_map runs on lfm_jax.train; an inverse 'block' distils and
    generate_lfm inverts it: block b = exact Gaussian flow read data -> noise."""
    # Treat the exact flow as an LFM block from x_l (t = 0) ... here x_l = "noise side"
    # of the closed form is reversed: block velocity c(t, x) = -b(1 - t, x) carries data (t=0)
    # to noise (t=1), so its reversed field is b itself and the inverse map is X*.
    block_b = distill.time_reversed(exact_b)
    key = jax.random.PRNGKey(0)
    x_l = (M[None] + SIGMA * jax.random.normal(key, (4096, DIM))).astype(jnp.float32)
    x_r = jax.random.normal(jax.random.PRNGKey(1), (4096, DIM))
    interp = interpolants.linear()
    blocks = distill.distill_lfm_blocks(
        [block_b], [(x_l, x_r)], lambda: tiny_flow_map(zero_init_output=True),
        objective="lmd", key=key, interp=interp,
        train_kwargs=dict(num_steps=300, batch_size=128, lr=3e-3, steps_per_call=100,
                          ema_decay=0.0))
    fmap, params = blocks[0]
    assert _map_error(fmap, params, jax.random.PRNGKey(99)) < 0.05
    z = jax.random.normal(jax.random.PRNGKey(2), (2000, DIM))
    x = distill.generate_lfm(blocks, z, num_steps=2)
    np.testing.assert_allclose(jnp.mean(x, 0), M, atol=0.1)
    np.testing.assert_allclose(jnp.std(x, 0), SIGMA * np.ones(DIM), atol=0.1)
