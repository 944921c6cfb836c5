"""U-Net velocity fields and two-time networks (lfm_jax.unet): shapes, inputs, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import unet

KEY = jax.random.PRNGKey(0)
# A tiny U-Net on 8x8x1 (the digits8 layout, non-zero initial output).
TINY = dict(unet.PRESETS["digits8"], channels=8, num_groups=4, num_head_channels=8,
            zero_init=False)


def random_params(net, seed=0):
    """Random parameters of net's shapes without running net.init (whose many random
    initialisers take most of a minute to run or compile on the loaded test CPU):
    weights N(0, 1 / fan_in), norm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2)."""
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        if leaf.ndim >= 2:
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1])),
                               leaf.dtype)
        base = 1.0 if "scale" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(base + 0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, jax.eval_shape(net.init, KEY))


def _tiny(num_classes=10, two_time=False, **kw):
    make = unet.two_time_unet if two_time else unet.velocity_unet
    net = make(**{**TINY, **kw}, num_classes=num_classes)
    return net, random_params(net)


def _jit(net):
    """Eager net.apply: a single call of the tiny net is faster eagerly than compiled."""
    return net.apply


def _image(seed=1, shape=(8, 8, 1)):
    return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_cifar10_preset_matches_torchcfm_size_without_running_it():
    """eval_shape only: torchcfm's CIFAR-10 UNetModelWrapper (guided-diffusion with
    num_channels=128, channel_mult (1,2,2,2), 2 res blocks, attention at 16x16,
    64-channel heads) has 35,746,307 parameters; ours has the same layers."""
    net = unet.velocity_unet(**unet.preset("cifar10"))
    shapes = jax.eval_shape(net.init, KEY)
    assert net.num_params(shapes) == 35_746_307
    assert all(p.dtype == jnp.float32 for p in jax.tree_util.tree_leaves(shapes))
    for dtype in ("float32", "bfloat16"):
        net = unet.velocity_unet(**unet.preset("cifar10", dtype=dtype, num_classes=10))
        shapes = jax.eval_shape(net.init, KEY)
        x = jax.ShapeDtypeStruct((32, 32, 3), jnp.float32)
        out = jax.eval_shape(net.apply, shapes, jax.ShapeDtypeStruct((), jnp.float32), x,
                             jax.ShapeDtypeStruct((), jnp.int32))
        assert out.shape == (32, 32, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize("name,overrides", [
    pytest.param("mnist", dict(channels=8, num_groups=8, num_head_channels=8),
                 marks=pytest.mark.slow),
    ("digits8", {}),
])
def test_small_presets_run_with_output_shape_and_dtype(name, overrides):
    cfg = unet.preset(name, **overrides)
    shape = cfg["example_shape"]
    for make, times in ((unet.velocity_unet, (0.3,)), (unet.two_time_unet, (0.2, 0.7))):
        net = make(**cfg, num_classes=10)
        params = random_params(net)
        out = _jit(net)(params, *times, _image(shape=shape), 3)
        assert out.shape == shape and out.dtype == jnp.float32
        assert np.all(np.isfinite(out))


@pytest.mark.slow  # un-jitted Flax init, ~15 s
def test_init_is_float32_and_zero_init_gives_zero_output():
    """The real initialiser on the smallest U-Net (one level): float32 parameters, and
    zero_init makes every residual branch and the output layer start at exactly 0 while
    the other layers are random."""
    small = dict(example_shape=(4, 4, 1), channels=4, channel_mult=(1,), num_res_blocks=1,
                 attention_resolutions=(4,), num_groups=2, num_head_channels=4)
    net = unet.velocity_unet(**small, num_classes=3)
    params = net.init(KEY)
    leaves = jax.tree_util.tree_leaves(params)
    assert all(p.dtype == jnp.float32 for p in leaves)
    assert sum(float(jnp.std(p)) > 0 for p in leaves if p.ndim >= 2) >= 5
    np.testing.assert_array_equal(net.apply(params, 0.5, _image(shape=(4, 4, 1)), 1), 0.0)


def test_time_and_label_change_the_output_and_none_is_the_null_label():
    net, params = _tiny()
    apply = _jit(net)
    x = _image()
    base = apply(params, 0.3, x, 2)
    assert np.max(np.abs(apply(params, 0.6, x, 2) - base)) > 1e-4
    assert np.max(np.abs(apply(params, 0.3, x, 5) - base)) > 1e-4
    null = apply(params, 0.3, x, net.null_label)
    np.testing.assert_array_equal(apply(params, 0.3, x), null)
    np.testing.assert_array_equal(apply(params, 0.3, x, y=None), null)
    assert net.null_label == 10
    assert np.max(np.abs(null - base)) > 1e-4


def test_two_time_network_distinguishes_s_from_t():
    net, params = _tiny(two_time=True)
    apply = _jit(net)
    x = _image()
    a = apply(params, 0.2, 0.7, x, 1)
    b = apply(params, 0.7, 0.2, x, 1)
    assert a.shape == x.shape and np.max(np.abs(a - b)) > 1e-4


def test_context_vector_conditioning():
    net = unet.velocity_unet(**TINY, context_dim=3)
    params = random_params(net)
    apply = _jit(net)
    x = _image()
    a = apply(params, 0.4, x, jnp.array([1.0, 0.0, -1.0]))
    b = apply(params, 0.4, x, jnp.array([0.0, 2.0, 1.0]))
    assert np.max(np.abs(a - b)) > 1e-4
    with pytest.raises(TypeError, match="context"):
        apply(params, 0.4, x)
    with pytest.raises(ValueError, match=r"context must have shape \(3,\)"):
        apply(params, 0.4, x, jnp.zeros(4))


def test_vmap_equals_per_example_calls():
    net, params = _tiny()
    xs = jax.random.normal(KEY, (3, 8, 8, 1))
    ts = jnp.array([0.1, 0.5, 0.9])
    ys = jnp.array([0, 4, 10])
    batched = jax.jit(jax.vmap(net.apply, in_axes=(None, 0, 0, 0)))(params, ts, xs, ys)
    apply = _jit(net)
    for i in range(3):
        np.testing.assert_allclose(batched[i], apply(params, ts[i], xs[i], ys[i]),
                                   rtol=1e-5, atol=1e-5)


def test_bfloat16_agrees_with_float32_to_bf16_tolerance():
    net32, params = _tiny()
    net16 = unet.velocity_unet(**TINY, num_classes=10, dtype="bfloat16")
    xs = jax.random.normal(KEY, (4, 8, 8, 1))
    run = lambda net: jax.jit(jax.vmap(lambda x: net.apply(params, 0.4, x, 3)))(xs)
    out32, out16 = run(net32), run(net16)
    assert out16.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(out32)))
    err = float(jnp.max(jnp.abs(out16 - out32)))
    assert 0.0 < err < 0.05 * scale  # bf16 has an 8-bit mantissa (~0.4% per op)


def test_dropout_only_with_a_key():
    net, params = _tiny(dropout=0.5)
    apply = _jit(net)
    x = _image()
    det = apply(params, 0.3, x, 1)
    np.testing.assert_array_equal(apply(params, 0.3, x, 1), det)
    k1, k2 = jax.random.split(KEY)
    d1 = apply(params, 0.3, x, 1, dropout_key=k1)
    np.testing.assert_array_equal(apply(params, 0.3, x, 1, dropout_key=k1), d1)
    assert np.max(np.abs(d1 - det)) > 1e-4
    assert np.max(np.abs(apply(params, 0.3, x, 1, dropout_key=k2) - d1)) > 1e-4


def test_jitted_batched_call_traces_once():
    net, params = _tiny()
    traces = []

    @jax.jit
    def field(params, t, x, y):
        traces.append(None)
        return jax.vmap(net.apply, in_axes=(None, 0, 0, 0))(params, t, x, y)

    for seed in range(3):
        xs = jax.random.normal(jax.random.PRNGKey(seed), (2, 8, 8, 1))
        field(params, jnp.full((2,), 0.1 * seed), xs, jnp.array([seed, 10])).block_until_ready()
    assert len(traces) == 1


def test_bad_arguments_raise_clear_errors():
    net, params = _tiny()
    with pytest.raises(ValueError, match=r"one image of shape \(8, 8, 1\)"):
        net.apply(params, 0.1, jnp.zeros((2, 8, 8, 1)))
    with pytest.raises(ValueError, match="one integer per example"):
        net.apply(params, 0.1, _image(), jnp.array([1, 2]))
    uncond = unet.velocity_unet(**TINY)
    with pytest.raises(TypeError, match="unconditional"):
        uncond.apply(jax.eval_shape(uncond.init, KEY), 0.1, _image(), 3)
    with pytest.raises(ValueError, match="attention resolution 3"):
        unet.velocity_unet(**{**TINY, "attention_resolutions": (3,)})
    with pytest.raises(ValueError, match="not divisible by 2"):
        unet.velocity_unet(**{**TINY, "example_shape": (6, 6, 1),
                              "channel_mult": (1, 2, 2)})
    with pytest.raises(ValueError, match="num_groups"):
        unet.velocity_unet(**{**TINY, "num_groups": 3})
    with pytest.raises(ValueError, match="unknown U-Net preset"):
        unet.preset("imagenet")
    with pytest.raises(ValueError, match="unknown dtype"):
        unet.velocity_unet(**TINY, dtype="float16")


def test_guidance_on_the_unet_w0_unconditional_w1_conditional():
    from lfm_jax import guidance
    net, params = _tiny()
    x = _image()
    cond, uncond = net.apply(params, 0.3, x, 7), net.apply(params, 0.3, x)
    for w, ref in ((0.0, uncond), (1.0, cond)):
        out = guidance.guided_velocity(net, params, 7, w)(0.3, x)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
