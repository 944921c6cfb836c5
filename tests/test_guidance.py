"""Conditioning (lfm_jax.conditional) and classifier-free guidance (lfm_jax.guidance)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import conditional, flow_map, guidance

KEY = jax.random.PRNGKey(0)


def _label_mlp(num_times=1):
    net = conditional.conditional_mlp((3,), num_classes=4, num_times=num_times,
                                      hidden=(32, 32))
    return net, net.init(KEY)


def test_conditional_mlp_label_and_context():
    net, params = _label_mlp()
    x = jnp.array([0.3, -1.0, 0.5])
    a = net.apply(params, 0.2, x, 1)
    assert a.shape == (3,) and np.max(np.abs(net.apply(params, 0.2, x, 2) - a)) > 1e-4
    assert np.max(np.abs(net.apply(params, 0.7, x, 1) - a)) > 1e-4
    np.testing.assert_array_equal(net.apply(params, 0.2, x), net.apply(params, 0.2, x, 4))
    ctx = conditional.conditional_mlp((3,), context_dim=2, hidden=(32,))
    cparams = ctx.init(KEY)
    b = ctx.apply(cparams, 0.2, x, jnp.array([1.0, 0.0]))
    assert np.max(np.abs(ctx.apply(cparams, 0.2, x, jnp.array([0.0, 1.0])) - b)) > 1e-4
    assert ctx.null_label is None
    with pytest.raises(TypeError, match="no null context"):
        ctx.apply(cparams, 0.2, x)
    with pytest.raises(ValueError, match="num_classes .* or context_dim"):
        conditional.conditional_mlp((3,), num_classes=2, context_dim=2)


@pytest.mark.parametrize("num_times", [1, 2])
def test_guidance_w0_is_unconditional_w1_conditional(num_times):
    net, params = _label_mlp(num_times)
    times = (0.3,) if num_times == 1 else (0.1, 0.6)
    xs = jax.random.normal(KEY, (5, 3))
    ys = jnp.array([0, 1, 2, 3, 1])

    def field(w):
        g = lambda x, y: guidance.guided_apply(net, y, w)(params, *times, x)
        return jax.vmap(g)(xs, ys)

    cond = jax.vmap(lambda x, y: net.apply(params, *times, x, y))(xs, ys)
    uncond = jax.vmap(lambda x: net.apply(params, *times, x))(xs)
    np.testing.assert_allclose(field(0.0), uncond, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(field(1.0), cond, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(field(2.5), uncond + 2.5 * (cond - uncond), rtol=1e-5,
                               atol=1e-5)
    assert np.max(np.abs(cond - uncond)) > 1e-4


def test_guided_velocity_closure_and_generic_guide_agree():
    net, params = _label_mlp()
    x = jnp.array([0.1, 0.2, -0.3])
    b = guidance.guided_velocity(net, params, 2, 3.0)
    g = guidance.guide(lambda t, x, y: net.apply(params, t, x, y), 2, 3.0, net.null_label)
    np.testing.assert_allclose(b(0.4, x), g(0.4, x), rtol=1e-5, atol=1e-6)
    # traced y and w: one compiled function for every label and weight
    traces = []

    @jax.jit
    def f(y, w):
        traces.append(None)
        return guidance.guided_velocity(net, params, y, w)(0.4, x)

    for y, w in ((0, 1.0), (3, 2.0)):
        f(y, w)
    assert len(traces) == 1


def test_guided_flow_map_is_guided_map_and_identity_on_diagonal():
    net = conditional.conditional_mlp((3,), num_classes=4, num_times=2, hidden=(32,))
    fm = flow_map.FlowMap(network=net)
    params = fm.init(KEY)
    x = jnp.array([0.5, -0.2, 1.0])
    w = 1.7
    X = guidance.guided_flow_map(fm, params, 1, w)
    x_null = fm.apply(params, 0.2, 0.9, x)  # y omitted: the null label
    x_cond = x + 0.7 * net.apply(params["net"], 0.2, 0.9, x, 1)
    np.testing.assert_allclose(X(0.2, 0.9, x), x_null + w * (x_cond - x_null),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(X(0.4, 0.4, x), x)
    out = flow_map.sample(X, jnp.stack([x, -x]), jnp.linspace(0.0, 1.0, 3))
    assert out.shape == (2, 3) and np.all(np.isfinite(out))


def test_guidance_needs_a_null_label():
    ctx = conditional.conditional_mlp((3,), context_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match="null label"):
        guidance.guided_apply(ctx, jnp.zeros(2), 1.0)


def test_drop_labels():
    y = jnp.arange(20_000) % 10
    dropped = guidance.drop_labels(KEY, y, 0.2, 10)
    frac = float(jnp.mean(dropped == 10))
    assert abs(frac - 0.2) < 4 * math.sqrt(0.2 * 0.8 / y.size)
    kept = dropped != 10
    np.testing.assert_array_equal(dropped[kept], y[kept])
    np.testing.assert_array_equal(guidance.drop_labels(KEY, y, 0.0, 10), y)
    assert bool(jnp.all(guidance.drop_labels(KEY, y, 1.0, 10) == 10))
    with pytest.raises(ValueError, match="probability"):
        guidance.drop_labels(KEY, y, 1.5, 10)


# ------------------------------------------------------- context-conditioned mixture


def test_context_mixture_normalises_in_1d_and_2d(x64):
    for dim in (1, 2):
        mix = conditional.make_context_mixture(3, dim=dim, context_dim=2, n_components=3)
        mix = mix.astype(jnp.float64)
        c = jnp.array([0.7, -1.2])
        means = mix.means(c)
        lo, hi = float(jnp.min(means)) - 5.0, float(jnp.max(means)) + 5.0
        n = 4001 if dim == 1 else 401
        g = jnp.linspace(lo, hi, n)
        pts = g[:, None] if dim == 1 else jnp.stack(jnp.meshgrid(g, g), -1).reshape(-1, 2)
        dens = jnp.exp(jax.vmap(lambda x: mix.log_prob(x, c))(pts))
        mass = float(jnp.sum(dens)) * float(g[1] - g[0]) ** dim
        assert abs(mass - 1.0) < 1e-4, (dim, mass)


def test_context_mixture_single_component_is_the_gaussian_and_samples_match(x64):
    mix = conditional.make_context_mixture(1, dim=3, context_dim=2, n_components=1)
    mix = mix.astype(jnp.float64)
    c = jnp.array([1.0, 0.5])
    x = jnp.array([0.2, -0.4, 1.1])
    mean = mix.offsets[0] + mix.slopes[0] @ c
    ref = jax.scipy.stats.multivariate_normal.logpdf(x, mean, mix.stds[0] ** 2 * jnp.eye(3))
    np.testing.assert_allclose(mix.log_prob(x, c), ref, rtol=1e-12)
    # Monte-Carlo: sample mean given c matches sum_k w_k mu_k(c) for a 3-component mix.
    mix3 = conditional.make_context_mixture(2, dim=2, context_dim=2, n_components=3)
    cs = jnp.tile(c[None], (40_000, 1))
    xs = mix3.sample(KEY, cs)
    w = jnp.exp(mix3.log_weights())
    expected = jnp.sum(w[:, None] * mix3.means(c), axis=0)
    np.testing.assert_allclose(jnp.mean(xs, axis=0), expected, atol=0.05)
    x_joint, c_joint = mix3.sample_joint(KEY, 10)
    assert x_joint.shape == (10, 2) and c_joint.shape == (10, 2)
    with pytest.raises(ValueError, match=r"contexts must have shape \(n, 2\)"):
        mix3.sample(KEY, jnp.zeros((4, 3)))


def test_conditional_entropy_is_below_marginal_entropy():
    """H(X | C) <= H(X): conditioning on the context helps (means move with c)."""
    mix = conditional.make_context_mixture(0, dim=2, context_dim=2, n_components=2,
                                           slope_scale=2.0)
    h_cond, se = mix.conditional_entropy_mc(KEY, 20_000)
    x, _ = mix.sample_joint(jax.random.PRNGKey(1), 20_000)
    # marginal entropy upper bound: the Gaussian with the same covariance
    cov = np.cov(np.asarray(x).T)
    h_gauss = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    assert float(h_cond) + 4 * float(se) < h_gauss


def test_context_conditioned_flow_matching_nll_approaches_its_floor():
    """A conditional MLP trained by flow matching (1500 Adam steps) on the context
    mixture: its conditional NLL -E log q(x | c) on held-out pairs is within 0.25 nats
    of the exact -E log p(x | c) on the same pairs (the paired gap is a KL estimate).

    log q(x | c) by the change of variables on the augmented state (x, c) with field
    (v(t, x, c), 0): c stays fixed, and the divergence is div_x v (the c-block of the
    Jacobian adds nothing to the trace)."""
    import optax

    from lfm_jax import interpolants, losses, ode

    mix = conditional.make_context_mixture(0, dim=2, context_dim=2, n_components=2,
                                           std_range=(0.3, 0.5))
    net = conditional.conditional_mlp((2,), context_dim=2, hidden=(64, 64, 64))
    interp = interpolants.linear()
    opt = optax.adam(optax.cosine_decay_schedule(3e-3, 1500))

    def loss_fn(p, key):
        kd, kt, kz = jax.random.split(key, 3)
        x1, c = mix.sample_joint(kd, 256)
        x0 = jax.random.normal(kz, x1.shape)
        t = jax.random.uniform(kt, (256,))
        per = jax.vmap(lambda t, a, b, c: losses.flow_matching(
            lambda tt, xx: net.apply(p, tt, xx, c), interp, t, a, b))(t, x0, x1, c)
        return jnp.mean(per)

    @jax.jit
    def train(p):
        def body(carry, i):
            p, s = carry
            g = jax.grad(loss_fn)(p, jax.random.fold_in(KEY, i))
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(body, (p, opt.init(p)), jnp.arange(1500))[0][0]

    params = train(net.init(KEY))
    x, c = mix.sample_joint(jax.random.PRNGKey(1), 500)
    floor = -float(jnp.mean(jax.vmap(mix.log_prob)(x, c)))

    def b_aug(t, xc):
        return jnp.concatenate([net.apply(params, t, xc[:2], xc[2:]), jnp.zeros(2, xc.dtype)])

    base = lambda xc: jnp.sum(jax.scipy.stats.norm.logpdf(xc[:2]))
    nll = -float(jnp.mean(ode.log_prob(b_aug, jnp.concatenate([x, c], axis=1), base)))
    assert -0.05 < nll - floor < 0.25, (nll, floor)
