"""Class-conditional flow maps X(s, t, x, y) (CPU, tiny MLPs): the label reaches the
map, the null label is the unconditional branch, guidance at w = 0 / 1 is the null /
conditional map, the labelled flow-map losses (label dropout, a labelled teacher),
labelled few-step generation, and the flow-map job on digits with the "cond" variant
scored per guidance weight by a (randomly initialised) classifier."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lfm_jax import conditional, distill, flow_map, guidance, runs

SHAPE = (3, 2)
K = 4  # classes; null label 4


def _cond_map(**kw):
    net = conditional.conditional_mlp(SHAPE, num_classes=K, num_times=2, hidden=(32, 32),
                                      num_frequencies=2)
    return flow_map.FlowMap(network=net, **kw)


def test_make_flow_map_with_classes_is_conditional_and_refuses_unsupported_settings():
    """make_flow_map(num_classes=k) builds X(s, t, x, y) with null label k (the students
    of the flow-map job and of guided distillation); settings the conditional MLP does
    not have are refused instead of silently ignored."""
    fmap = flow_map.make_flow_map(SHAPE, hidden=(16,), num_frequencies=2, num_classes=K,
                                  compute_dtype="float32", weight_init="lecun")
    assert fmap.num_classes == K and fmap.null_label == K
    params = fmap.init(jax.random.PRNGKey(0))
    x = jnp.ones(SHAPE)
    assert float(jnp.max(jnp.abs(fmap.apply(params, 0.0, 0.5, x, 0)
                                 - fmap.apply(params, 0.0, 0.5, x, 2)))) > 1e-5
    assert flow_map.make_flow_map(SHAPE, hidden=(16,)).num_classes is None
    with pytest.raises(ValueError, match="compute_dtype"):
        flow_map.make_flow_map(SHAPE, hidden=(16,), num_classes=K, compute_dtype="bfloat16")
    # the check shared with runs.models.network: beta only counts with softplus
    flow_map.make_flow_map(SHAPE, hidden=(16,), num_classes=K, softplus_beta=20.0)
    with pytest.raises(ValueError, match="softplus_beta=20.0"):
        flow_map.make_flow_map(SHAPE, hidden=(16,), num_classes=K, activation="softplus",
                               softplus_beta=20.0)


def _inputs(n=16, seed=0):
    k0, k1, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    x0 = jax.random.normal(k0, (n, *SHAPE))
    x1 = 0.5 * jax.random.normal(k1, (n, *SHAPE)) + 2.0
    y = jax.random.randint(ky, (n,), 0, K)
    return x0, x1, y


def test_label_changes_the_map_and_null_label_is_the_unconditional_branch():
    fmap = _cond_map()
    params = fmap.init(jax.random.PRNGKey(1))
    x = jnp.ones(SHAPE)
    s, t = jnp.float32(0.2), jnp.float32(0.7)
    a, b = fmap.apply(params, s, t, x, 1), fmap.apply(params, s, t, x, 3)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4  # the label reaches the output
    null = fmap.null_label
    assert null == K and fmap.num_classes == K
    np.testing.assert_array_equal(fmap.apply(params, s, t, x, null),
                                  fmap.apply(params, s, t, x))
    np.testing.assert_array_equal(fmap.bind(params, 3)(s, t, x), b)
    np.testing.assert_array_equal(fmap.bind(params, null)(s, t, x), fmap.bind(params)(s, t, x))
    # X_{s,s} = id for every label; the diagonal velocity is the labelled v_{t,t}
    np.testing.assert_array_equal(fmap.apply(params, t, t, x, 2), x)
    c = fmap.closures(params, label=2)
    np.testing.assert_array_equal(c.velocity(t, x), fmap.diagonal_velocity(params, t, x, 2))
    assert float(jnp.max(jnp.abs(c.velocity(t, x) - fmap.diagonal_velocity(params, t, x))))\
        > 1e-4
    # an unconditional map refuses a label
    plain = flow_map.make_flow_map(SHAPE, hidden=(8,), num_frequencies=2)
    with pytest.raises(TypeError, match="not class-conditional"):
        plain.apply(plain.init(jax.random.PRNGKey(0)), s, t, x, 1)


def test_guided_flow_map_w0_is_null_and_w1_is_conditional():
    fmap = _cond_map()
    params = fmap.init(jax.random.PRNGKey(2))
    x = jax.random.normal(jax.random.PRNGKey(3), SHAPE)
    s, t = jnp.float32(0.1), jnp.float32(0.9)
    for y in (0, 3):
        X0 = guidance.guided_flow_map(fmap, params, y, 0.0)
        X1 = guidance.guided_flow_map(fmap, params, y, 1.0)
        X2 = guidance.guided_flow_map(fmap, params, y, 2.0)
        null, cond = fmap.apply(params, s, t, x, fmap.null_label), fmap.apply(params, s, t, x, y)
        np.testing.assert_allclose(X0(s, t, x), null, atol=1e-5)
        np.testing.assert_allclose(X1(s, t, x), cond, atol=1e-5)
        np.testing.assert_allclose(X2(s, t, x), null + 2.0 * (cond - null), atol=1e-5)


@pytest.mark.parametrize("name", ["lsd", "psd", "lmd"])
def test_labelled_loss_finite_with_gradient_and_full_dropout_is_the_null_map(name):
    """With labels the loss is finite and has a nonzero gradient; with every label
    dropped (label_dropout=1) it equals the loss of the null-labelled batch and that of
    the unlabelled batch (no label: the null class), the same key drawing the same
    (s, t). The teacher objective lmd uses a labelled teacher b(t, x, y) of a
    class-conditional velocity network, bound to the (dropped) label."""
    fmap = _cond_map()
    params = fmap.init(jax.random.PRNGKey(4))
    teacher = None
    if name == "lmd":
        vnet = conditional.conditional_mlp(SHAPE, num_classes=K, hidden=(16,),
                                           num_frequencies=2)
        teacher = distill.velocity_teacher(vnet, vnet.init(jax.random.PRNGKey(5)))
    x0, x1, y = _inputs()
    key = jax.random.PRNGKey(6)
    loss = distill.make_loss(name, fmap, teacher)
    value, aux = loss(params, key, (x0, x1, y))
    assert np.isfinite(float(value)) and float(value) > 0
    grads = jax.grad(lambda p: loss(p, key, (x0, x1, y))[0])(params)
    norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree_util.tree_leaves(grads))
    assert norm > 0
    # the labels matter: another labelling gives another loss
    other = loss(params, key, (x0, x1, (y + 1) % K))[0]
    assert abs(float(other) - float(value)) > 1e-6
    dropped = distill.make_loss(name, fmap, teacher, label_dropout=1.0)(
        params, key, (x0, x1, y))[0]
    null = loss(params, key, (x0, x1, jnp.full_like(y, fmap.null_label)))[0]
    unlabelled = loss(params, key, (x0, x1))[0]
    np.testing.assert_allclose(float(dropped), float(null), rtol=1e-5)
    np.testing.assert_allclose(float(unlabelled), float(null), rtol=1e-5)
    assert abs(float(dropped) - float(value)) > 1e-6
    # a partial dropout lies between: some examples changed, not all
    half = distill.make_loss(name, fmap, teacher, label_dropout=0.5)(
        params, key, (x0, x1, y))[0]
    assert np.isfinite(float(half))


def test_labelled_batch_forms_and_errors():
    fmap = _cond_map()
    params = fmap.init(jax.random.PRNGKey(7))
    _, x1, y = _inputs()
    key = jax.random.PRNGKey(8)
    loss = distill.make_loss("lsd", fmap)
    # {"x": x1, "y": y} draws x0 ~ N(0, I) from the same key as an x1-only batch
    k_pair = jax.random.split(key, 3)[0]
    x0 = jax.random.normal(k_pair, x1.shape, x1.dtype)
    np.testing.assert_allclose(float(loss(params, key, {"x": x1, "y": y})[0]),
                               float(loss(params, key, (x0, x1, y))[0]), rtol=1e-6)
    np.testing.assert_allclose(float(loss(params, key, {"x": x1})[0]),
                               float(loss(params, key, x1)[0]), rtol=1e-6)
    plain = flow_map.make_flow_map(SHAPE, hidden=(8,), num_frequencies=2)
    with pytest.raises(ValueError, match="class-conditional"):
        distill.make_loss("lsd", plain)(plain.init(key), key, (x0, x1, y))
    with pytest.raises(ValueError, match="label_dropout"):
        distill.make_loss("lsd", fmap, label_dropout=1.5)
    with pytest.raises(ValueError, match="guided teacher"):
        distill.guided_teacher(plain.network, None, 1.0)


def test_train_labelled_flow_map_and_generate_with_labels():
    """train_flow_map on (x0, x1, y) lowers the labelled loss; labelled generation
    (plain and sharded over 4 CPU devices, chunked) agrees and depends on the labels;
    guided generation at w = 1 is the conditional one."""
    fmap = _cond_map()
    x0, x1, y = _inputs(256)
    x1 = x1 + 2.0 * (y.astype(jnp.float32) - 1.5)[:, None, None]  # class means differ
    loss = distill.make_loss("lsd", fmap, label_dropout=0.1)
    state, hist = distill.train_flow_map(loss, fmap, (x0, x1, y), key=jax.random.PRNGKey(9),
                                         num_steps=60, batch_size=64, lr=3e-3,
                                         steps_per_call=20, ema_decay=0.0)
    first, last = hist["loss"][0], hist["loss"][-1]
    assert np.isfinite(last) and last < first, (first, last)
    params = state.params
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(10), (10, *SHAPE)))
    labels = np.arange(10, dtype=np.int32) % K
    a = np.asarray(distill.generate_lfm([(fmap, params)], z, 2, labels=labels))
    b = distill.generate_lfm_sharded([(fmap, params)], z, 2, labels=labels, chunk_size=2)
    np.testing.assert_allclose(a, b, atol=1e-5)
    c = distill.generate_lfm_sharded([(fmap, params)], z, 2, labels=(labels + 1) % K)
    assert np.max(np.abs(c - a)) > 1e-3
    g = distill.generate_lfm_sharded([(fmap, params)], z, 2, labels=labels, guidance_w=1.0)
    np.testing.assert_allclose(g, a, atol=1e-4)
    null = distill.generate_lfm_sharded([(fmap, params)], z, 2)
    g0 = distill.generate_lfm_sharded([(fmap, params)], z, 2, labels=labels, guidance_w=0.0)
    np.testing.assert_allclose(g0, null, atol=1e-4)
    with pytest.raises(ValueError, match="needs labels"):
        distill.generate_lfm_sharded([(fmap, params)], z, 2, guidance_w=1.0)


def save_untrained_classifier(workdir: str) -> str:
    """A randomly initialised digits classifier saved as the "classifier" job saves one
    (`classifier_job.save`): scored exactly as a trained one (fd in its features,
    accuracy of its argmax), without the training time."""
    from configs import classifier_digits
    from lfm_jax import classifier
    from lfm_jax.runs import classifier_job

    config = classifier_digits.get_config()
    config.classifier.channels, config.classifier.features = (8,), 32
    model = classifier.make_classifier((8, 8, 1), 10, channels=(8,), features=32)
    params = jax.jit(model.init)(jax.random.PRNGKey(0))  # one compilation
    classifier_job.save(config, model, params, 0, workdir)
    return workdir


@pytest.fixture(scope="module")
def classifier_workdir(tmp_path_factory):
    return save_untrained_classifier(str(tmp_path_factory.mktemp("clf")))


def test_flow_map_digits_cond_config():
    from configs import flow_map_digits

    c = flow_map_digits.get_config("lsd,cond")
    assert c.model.num_classes == 10 and c.fm.p_uncond == 0.1
    assert tuple(c.eval.guidance_ws) == (0.0, 1.0, 2.0, 3.0)
    m = flow_map_digits.get_config("psd,mnist,cond")
    assert m.data.name == "mnist" and m.model.num_classes == 10
    assert flow_map_digits.get_config("lsd").model.num_classes == 0
    with pytest.raises(ValueError, match="cond and uncond"):
        flow_map_digits.get_config("lsd,cond,uncond")


def test_conditional_flow_map_job_on_digits_scores_every_w(tmp_path, classifier_workdir):
    """The flow-map job with the "cond" variant (a small class-conditional MLP, a few
    steps) writes per K and per w the guided samples with their labels and the
    classifier's fd and accuracy, and best_w per K."""
    from configs import flow_map_digits

    config = flow_map_digits.get_config("lsd,cond")
    config.model.kind = "mlp"
    config.model.hidden, config.model.num_frequencies = (32, 32), 2
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.num_devices, t.warmup_steps = 4, 16, 2, 1, 0
    config.eval.n_samples, config.eval.chunk_size = 20, 8
    config.eval.guidance_ws = (0.0, 2.0)
    config.eval.classifier_workdir = classifier_workdir
    config.flow_map.sample_steps = (1, 2)
    config.log.tensorboard = False
    r = runs.get("flow_map")(config, str(tmp_path), argv=[])
    assert r["steps"] == 4
    rows = json.loads((tmp_path / "metrics.json").read_text())["sampling"]
    assert [row["steps"] for row in rows] == [1, 2]
    for k in (1, 2):
        assert r[f"time_s_K{k}"] > 0 and r[f"best_w_K{k}"] in (0.0, 2.0)
        fds = []
        for w in ("0", "2"):
            assert 0.0 <= r[f"accuracy_K{k}_w{w}"] <= 1.0
            assert np.isfinite(r[f"fd_classifier_K{k}_w{w}"])
            assert r[f"n_samples_failed_K{k}_w{w}"] == 0
            fds.append(r[f"fd_classifier_K{k}_w{w}"])
            with np.load(tmp_path / f"samples_k{k}_w{w}.npz") as f:
                assert f["images"].shape == (20, 8, 8, 1) and f["images"].dtype == np.uint8
                np.testing.assert_array_equal(f["labels"], np.arange(20) % 10)
            assert os.path.exists(tmp_path / f"samples_k{k}_w{w}.png")
        assert r[f"fd_classifier_best_K{k}"] == min(fds)
        assert fds[0] != fds[1]  # the guidance weight changes the samples
    assert "fd_classifier_K1" not in r and "accuracy_w1" not in r
