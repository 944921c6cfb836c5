"""Distillation warm-started from the teacher (`unet.two_time_params_from_velocity`,
`lfm_distill.teacher_init`, experiments/distill_lfm.py --init_from_teacher): a two-time
U-Net built from a velocity U-Net's params is that velocity exactly (and its
time-reversed, sign-flipped field, and its null-class field folded into an
unconditional network), so an untrained warm-started student generates exactly what K
Euler steps of the LFM generate; settings it cannot serve are refused before any
work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_image_flow_maps import tiny_digits_lfm_config


def _perturbed(params, scale=0.1, seed=1):
    """Random params with a non-zero output layer (the U-Net zero-initialises it)."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(tree, [a + scale * jax.random.normal(k, a.shape, a.dtype)
                                     for a, k in zip(leaves, keys)])


def test_two_time_params_are_the_velocity_reversed_and_null_folded():
    from lfm_jax import unet

    time_scale = 1000.0  # the default: large angles, so the reversal's rotation counts
    kw = unet.preset("digits8", channels=8, num_classes=10, time_scale=time_scale)
    vnet, fnet = unet.velocity_unet(**kw), unet.two_time_unet(**kw)
    plain = unet.two_time_unet(**{**kw, "num_classes": None})
    # random params of the velocity's shapes (no init compile; the output layer is not zero)
    p = _perturbed(jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype),
                                jax.eval_shape(vnet.init, jax.random.PRNGKey(0))), 0.1)
    # batched over the test's (s, t) points: one compilation per network
    ss = jnp.array([0.0, 0.13, 0.71, 1.0, 0.0, 0.13, 0.71, 1.0])
    ts = jnp.array([0.2] * 4 + [0.9] * 4)
    v_at = jax.jit(jax.vmap(vnet.apply, (None, 0, None, None)))
    f_at = jax.jit(jax.vmap(fnet.apply, (None, 0, 0, None, None)))
    plain_at = jax.jit(jax.vmap(plain.apply, (None, 0, 0, None)))
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 8, 1))
    same = unet.two_time_params_from_velocity(p, channels=8, time_scale=time_scale)
    rev = unet.two_time_params_from_velocity(p, channels=8, time_scale=time_scale,
                                             reverse=True)
    null = unet.two_time_params_from_velocity(p, channels=8, time_scale=time_scale,
                                              reverse=True, fold_label=10)
    template = jax.eval_shape(fnet.init, jax.random.PRNGKey(0))
    assert jax.tree.structure(same) == jax.tree.structure(template)
    assert jax.tree.map(jnp.shape, same) == jax.tree.map(lambda a: a.shape, template)
    assert (jax.tree.structure(null)
            == jax.tree.structure(jax.eval_shape(plain.init, jax.random.PRNGKey(0))))
    want = v_at(p, ss, x, 3)
    scale = float(jnp.max(jnp.abs(want)))
    assert scale > 0.1  # a non-trivial field
    tol = dict(atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(f_at(same, ss, ts, x, 3), want, **tol)  # t is ignored
    np.testing.assert_allclose(f_at(rev, ss, ts, x, 7), -v_at(p, 1.0 - ss, x, 7), **tol)
    np.testing.assert_allclose(plain_at(null, ss, ts, x), -v_at(p, 1.0 - ss, x, 10), **tol)
    assert float(jnp.max(jnp.abs(f_at(rev, ss, ts, x, 7) - v_at(p, ss, x, 7)))) > 1e-3


def test_two_time_params_refuse_what_they_cannot_serve():
    from lfm_jax import unet

    kw = unet.preset("digits8", channels=8)
    p = jax.eval_shape(unet.velocity_unet(**kw).init, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="channels=16"):
        unet.two_time_params_from_velocity(p, channels=16, time_scale=1000.0)
    with pytest.raises(ValueError, match="class-conditional velocity"):
        unet.two_time_params_from_velocity(p, channels=8, time_scale=1000.0, fold_label=0)
    pk = jax.eval_shape(unet.velocity_unet(**kw, num_classes=3).init, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="fold_label 4"):
        unet.two_time_params_from_velocity(pk, channels=8, time_scale=1000.0, fold_label=4)
    pc = jax.eval_shape(unet.velocity_unet(**kw, context_dim=3).init, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="context"):
        unet.two_time_params_from_velocity(pc, channels=8, time_scale=1000.0)


@pytest.mark.slow  # ~1.5 min of U-Net compiles on the 2-core CPU; the surgery itself is
# checked in CI by test_two_time_params_are_the_velocity_reversed_and_null_folded
def test_teacher_init_is_one_euler_step_of_the_reversed_block_field():
    """`lfm_distill.teacher_init` (what --init_from_teacher gives every block): the
    unconditional student of a class-conditional LFM starts as X_{s,t}(x) = x +
    (t - s) b(s, x) with b the reversed null field, the class-conditional student with
    b the reversed conditional field of each label (the guided field at w = 1)."""
    from lfm_jax import distill
    from lfm_jax.runs import common, lfm_distill

    config = tiny_digits_lfm_config(kind="unet")
    network = common.velocity_network(config, (8, 8, 1))
    p = _perturbed(network.init(jax.random.PRNGKey(0)), 0.05)
    x = jax.random.normal(jax.random.PRNGKey(2), (8, 8, 1))
    s, t = 0.25, 0.6
    for conditional, labels in ((False, (None,)), (True, (2, 10))):
        fmap = lfm_distill.student_flow_map(config, (8, 8, 1), conditional=conditional)
        init = lfm_distill.teacher_init(config, fmap, p, conditional=conditional,
                                        key=jax.random.PRNGKey(0))
        for y in labels:
            b = distill.time_reversed(
                distill.velocity_teacher(network, p) if y is None else
                distill.guided_teacher(network, p, 1.0))
            want = x + (t - s) * jax.jit(b)(s, x, *(() if y is None else (y,)))
            got = jax.jit(fmap.apply)(init, s, t, x, y)
            np.testing.assert_allclose(got, want, atol=1e-5)
            assert float(jnp.max(jnp.abs(want - x))) > 1e-3


def test_init_from_teacher_refused_before_any_work(tmp_path):
    from lfm_jax.runs import common, lfm_distill

    config = tiny_digits_lfm_config(kind="unet")
    with pytest.raises(ValueError, match="time scale"):
        lfm_distill.run(config, str(tmp_path / "nowhere"), unet_time_scale=1.0,
                        init_from_teacher=True)
    with pytest.raises(ValueError, match="width"):
        lfm_distill.run(config, str(tmp_path / "nowhere"), unet_channels=16,
                        init_from_teacher=True)
    assert not (tmp_path / "nowhere").exists()
    mlp = tiny_digits_lfm_config()
    network = common.velocity_network(mlp, (8, 8, 1))
    with pytest.raises(ValueError, match="U-Net blocks"):
        lfm_distill.distill_blocks(mlp, str(tmp_path), network, None, [],
                                   np.zeros((4, 8, 8, 1)), out_dir=str(tmp_path / "out"),
                                   init_from_teacher=True)
    assert not (tmp_path / "out").exists()
    lfm_distill.check_init_from_teacher(config, 8, 1000.0)  # the blocks' own: accepted


@pytest.fixture(scope="module")
def unet_lfm(tmp_path_factory):
    """(config, workdir) of a class-conditional digits LFM of 2 tiny U-Net blocks with
    random (perturbed) params saved as `lfm_blocks.train_blocks` saves trained ones."""
    from lfm_jax.runs import block_store, common

    root = tmp_path_factory.mktemp("warm")
    config = tiny_digits_lfm_config(kind="unet")
    network = common.velocity_network(config, (8, 8, 1))
    workdir = str(root / "lfm")
    for n in (1, 2):
        p = jax.device_get(_perturbed(jax.jit(network.init)(jax.random.PRNGKey(n)), 0.05, n))
        with block_store.BlockArtefacts(workdir, n) as store:
            store.save(params={"params": p, "ema_params": p})
    return config, workdir


@pytest.mark.slow  # ~3 min on the 2-core CPU; test_teacher_init_... covers the start in CI
@pytest.mark.parametrize("guidance_w", [None, 1.0])
def test_untrained_warm_student_generates_the_euler_lfm(unet_lfm, tmp_path, guidance_w):
    """0 distillation steps from the teacher's params: the students' K-step generation
    equals the LFM's K Euler steps per block (null field for unconditional students,
    the guided field at w = 1 for class-conditional ones), and settings.json records
    the warm start; a random-init student does not."""
    from lfm_jax import distill
    from lfm_jax.runs import common, distill_eval, lfm_distill

    config, workdir = unet_lfm
    dataset = common.load_data(config)
    network, model, params_list = lfm_distill.load_trained_blocks(
        config, workdir, dataset.example_shape)
    kw = dict(objective="lmd", steps=0, batch_size=8, max_pairs=16, verbose=False,
              guidance_w=guidance_w, train_labels=dataset.train_labels)
    maps, _ = lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                         dataset.train, out_dir=str(tmp_path / "warm"),
                                         init_from_teacher=True, **kw)
    cold, _ = lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                         dataset.train, out_dir=str(tmp_path / "cold"), **kw)
    import json
    assert json.load(open(tmp_path / "warm" / "settings.json"))["init_from_teacher"] is True
    assert "init_from_teacher" not in json.load(open(tmp_path / "cold" / "settings.json"))
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (6, 8, 8, 1)))
    labels = np.arange(6, dtype=np.int32)
    cond = guidance_w is not None
    gens = distill_eval.generators(config, model, params_list, maps, (2,),
                                   labels=labels if cond else None, guidance_w=guidance_w,
                                   network=network)
    euler = dict(((m, k), g) for m, k, _, g in gens)[("lfm_euler", 2)]
    want = np.asarray(euler(z))
    got = np.asarray(distill.generate_lfm_sharded(maps, z, 2, labels=labels if cond else None))
    np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, np.max(np.abs(want))))
    far = np.asarray(distill.generate_lfm_sharded(cold, z, 2, labels=labels if cond else None))
    assert np.max(np.abs(far - want)) > 1e-2
