"""Tests for lfm_jax.networks: activations, time inputs, shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import networks


def test_softplus_beta_matches_numpy(x64):
    x = np.linspace(-5.0, 5.0, 201)
    for beta in (1.0, 20.0):
        direct = np.log1p(np.exp(beta * x)) / beta
        np.testing.assert_allclose(np.asarray(networks.softplus_beta(jnp.asarray(x), beta)),
                                   direct, rtol=1e-12, atol=1e-15)
    # stable where exp(beta x) overflows: equals x (torch's threshold branch)
    big = jnp.asarray([50.0, 1e3])
    np.testing.assert_allclose(np.asarray(networks.softplus_beta(big, 20.0)), [50.0, 1e3])
    assert float(networks.softplus_beta(jnp.asarray(-1e3), 20.0)) == 0.0


def test_elu_matches_numpy(x64):
    x = np.linspace(-4.0, 4.0, 81)
    direct = np.where(x > 0, x, np.expm1(x))
    np.testing.assert_allclose(np.asarray(networks.ACTIVATIONS["elu"](jnp.asarray(x))),
                               direct, rtol=1e-12, atol=1e-15)


def _layers(params):
    inner = params["params"]
    return [inner[k] for k in sorted(inner, key=lambda k: int(k.split("_")[-1]))]


def test_network_with_softplus_beta_is_the_direct_mlp(x64):
    """apply(params, t, x) = W_L act(... act(W_1 [t, x] + b_1)) + b_L with act the
    beta-softplus, recomputed by hand in numpy from the params."""
    beta = 20.0
    net = networks.velocity_mlp((3,), hidden=(16, 16), activation="softplus",
                                softplus_beta=beta, time_embedding="raw")
    params = net.init(jax.random.PRNGKey(0))
    t, x = 0.3, np.array([0.5, -1.0, 2.0])
    h = np.concatenate([[t], x])
    layers = _layers(params)
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(layers) - 1:
            h = np.log1p(np.exp(beta * h)) / beta
    out = net.apply(params, jnp.asarray(t), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,num_times", [(networks.velocity_mlp, 1),
                                            (networks.two_time_mlp, 2)])
def test_raw_time_concatenates_t(make, num_times):
    dim = 3
    raw = make((dim,), hidden=(8, 8), time_embedding="raw", activation="elu")
    fourier = make((dim,), hidden=(8, 8), num_frequencies=4)
    p_raw, p_fourier = raw.init(jax.random.PRNGKey(0)), fourier.init(jax.random.PRNGKey(0))
    assert _layers(p_raw)[0]["kernel"].shape == (num_times + dim, 8)
    assert _layers(p_fourier)[0]["kernel"].shape == (num_times * 9 + dim, 8)
    x = jnp.array([0.1, -0.2, 0.3])
    times = [jnp.asarray(0.2)] * num_times
    a = raw.apply(p_raw, *times, x)
    b = raw.apply(p_raw, *([jnp.asarray(0.7)] * num_times), x)
    assert a.shape == (dim,) and not np.allclose(np.asarray(a), np.asarray(b))
    # the time row of the first kernel is what carries t: zero it and t has no effect
    p_zero = jax.tree_util.tree_map(lambda a: a, p_raw)
    first = sorted(p_zero["params"], key=lambda k: int(k.split("_")[-1]))[0]
    kernel = p_zero["params"][first]["kernel"]
    p_zero["params"][first]["kernel"] = kernel.at[:num_times].set(0.0)
    np.testing.assert_allclose(np.asarray(raw.apply(p_zero, *times, x)),
                               np.asarray(raw.apply(p_zero, *([jnp.asarray(0.7)] * num_times), x)))


def test_default_softplus_is_jax_softplus():
    net = networks.velocity_mlp((2,), hidden=(8,), activation="softplus")
    ref = networks.velocity_mlp((2,), hidden=(8,), activation="softplus", softplus_beta=1.0)
    p = net.init(jax.random.PRNGKey(1))
    x = jnp.array([0.3, -0.4])
    np.testing.assert_array_equal(np.asarray(net.apply(p, 0.5, x)), np.asarray(ref.apply(p, 0.5, x)))
    np.testing.assert_allclose(np.asarray(networks.softplus_beta(x)),
                               np.asarray(jax.nn.softplus(x)), rtol=1e-6)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="time_embedding"):
        networks.velocity_mlp((2,), time_embedding="sinusoid")
    with pytest.raises(ValueError, match="activation"):
        networks.two_time_mlp((2,), activation="swish2")
    with pytest.raises(ValueError, match="softplus_beta"):
        networks.velocity_mlp((2,), activation="softplus", softplus_beta=0.0)


def test_torch_weight_init_is_uniform_one_over_sqrt_fan_in():
    """weight_init="torch": kernels and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    variance 1 / (3 fan_in), as torch.nn.Linear; the output layer too."""
    net = networks.velocity_mlp((3,), hidden=(512, 512), time_embedding="raw",
                                weight_init="torch")
    layers = _layers(net.init(jax.random.PRNGKey(0)))
    for layer, fan_in in zip(layers, (4, 512, 512)):
        bound = 1.0 / np.sqrt(fan_in)
        for name in ("kernel", "bias"):
            a = np.asarray(layer[name], np.float64)
            assert np.all(np.abs(a) <= bound)
            assert a.size < 100 or np.abs(a).max() > 0.9 * bound
        k = np.asarray(layer["kernel"], np.float64)
        assert abs(k.var() / (bound ** 2 / 3.0) - 1.0) < 0.1
    with pytest.raises(ValueError, match="weight_init"):
        networks.velocity_mlp((2,), weight_init="xavier")


def test_bfloat16_compute_keeps_float32_params_and_output():
    f32 = networks.velocity_mlp((3,), hidden=(16, 16))
    bf16 = networks.velocity_mlp((3,), hidden=(16, 16), compute_dtype="bfloat16")
    params = f32.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (3,))

    def outputs(p):
        grads = jax.grad(lambda q: jnp.sum(bf16.apply(q, 0.3, x) ** 2))(p)
        return f32.apply(p, 0.3, x), bf16.apply(p, 0.3, x), grads

    out32, out16, grads = jax.jit(outputs)(params)
    assert out16.dtype == jnp.float32
    # bf16 keeps 8 significant bits: close to, but not equal to, the float32 network
    np.testing.assert_allclose(np.asarray(out16), np.asarray(out32), rtol=0.05, atol=0.02)
    assert not np.array_equal(np.asarray(out16), np.asarray(out32))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))
    jaxpr = str(jax.make_jaxpr(lambda p: bf16.apply(p, 0.3, x))(params))
    dots = [line for line in jaxpr.splitlines() if "dot_general" in line]
    assert len(dots) == 3 and all(line.split(":")[1].startswith("bf16[") for line in dots)


def test_unknown_compute_dtype_is_named():
    with pytest.raises(ValueError, match="compute_dtype 'float16'"):
        networks.velocity_mlp((2,), compute_dtype="float16")
