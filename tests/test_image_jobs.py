"""Images through the existing jobs (`runs.get(method)(config, workdir)`): sklearn's
8x8 digits, a few steps, conditional and unconditional; the image train step traced
once; bf16 vs float32 U-Net losses; data errors naming the missing file."""

import json
import os

import jax
import numpy as np
import pytest

from lfm_jax import distributed, flow_matching, interpolants, runs, time_sampling, train
from lfm_jax.runs import image_data, models


def _tiny(method, variant="", kind="mlp"):
    """The digits config of `method` with tiny settings (seconds on a CPU)."""
    from configs import fm_digits, lfm_digits

    config = (fm_digits if method == "fm" else lfm_digits).get_config(variant)
    m = config.model
    m.kind, m.hidden, m.num_frequencies, m.unet_channels = kind, (32, 32), 2, 8
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.num_devices, t.warmup_steps = 4, 32, 2, 1, 0
    e = config.eval
    e.nll_examples, e.grid_per_class, e.chunk_size = 8, 1, 64
    e.ode.solver, e.ode.num_steps = "euler", 2
    c = config.lfm
    c.num_blocks, c.steps_per_block, c.n_val, c.chunk_size = 2, 4, 8, 256
    c.push_ode.solver, c.push_ode.num_steps = "euler", 2
    config.log.tensorboard = False
    return config


@pytest.mark.parametrize("method", ["fm", "lfm"])
@pytest.mark.parametrize("variant", ["", pytest.param("uncond", marks=pytest.mark.slow)])
def test_digits_job_end_to_end(method, variant, tmp_path):
    """A class-conditional (and an unconditional) digits job: finite bits/dim above the
    dequantisation offset 7 ... , the sample grid (and LFM's trajectory) drawn,
    metrics.json written."""
    config = _tiny(method, variant)
    r = runs.get(method)(config, str(tmp_path), argv=[])
    assert np.isfinite(r["test_bpd"]) and np.isfinite(r["test_nll"])
    assert r["test_bpd"] == pytest.approx(r["test_nll"] / (64 * np.log(2)) + 7, rel=1e-5)
    assert r["n_failed"] == 0 and r["n_samples_failed"] == 0 and r["dim"] == 64
    assert os.path.exists(tmp_path / "samples_grid.png")
    if method == "lfm":
        assert os.path.exists(tmp_path / "trajectory.png")
        assert len(r["blocks"]) == 3
    assert "test_bpd" in json.loads((tmp_path / "metrics.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fm", "lfm"])
def test_digits_unet_job_end_to_end(method, tmp_path):
    """The same with the (shrunk) conditional U-Net of the configs."""
    r = runs.get(method)(_tiny(method, kind="unet"), str(tmp_path), argv=[])
    assert np.isfinite(r["test_bpd"])
    assert os.path.exists(tmp_path / "samples_grid.png")


def _image_step(config, counter):
    """The FM job's image train step (labels dropped, dequantised batches) with a
    velocity that counts its traces; and its replicated data."""
    ds = image_data.load(config)
    net = models.network(config, ds.example_shape)

    def velocity(params, t, x, y=None):
        counter.append(1)
        return net.apply(params, t, x, y)

    loss = flow_matching.make_loss(velocity, interpolants.get("linear"),
                                   time_sampling.get("uniform"),
                                   flow_matching.gaussian_pairs(),
                                   labels=image_data.loss_labels(config, net))
    opt = train.make_optimizer(1e-3)
    mesh = distributed.make_mesh(1)
    step = train.make_train_step(loss, opt, sample_batch=image_data.sample_batch(16),
                                 steps_per_call=2, ema_decay=0.9, mesh=mesh)
    state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)),
                                     opt, mesh=mesh)
    return step, state, distributed.replicate(image_data.train_data(ds), mesh), loss, net


def test_image_train_step_traced_once():
    """Three fused calls of the conditional image step trace the velocity once (one
    trace of the per-pair vmap) and never again."""
    counter = []
    step, state, data, _, _ = _image_step(_tiny("fm"), counter)
    state, m = step(state, data)
    first = len(counter)  # the traces of one compilation (forward, under vmap)
    for _ in range(2):
        state, m = step(state, data)
    assert np.all(np.isfinite(np.asarray(m["loss"])))
    assert first == 1 and len(counter) == 1 and int(state.step) == 6
    assert step._cache_size() == 1


@pytest.mark.slow  # two U-Net compilations: about 30 s on a shared CPU
def test_bf16_unet_loss_matches_float32():
    """The conditional U-Net loss (same float32 params, key, batch) with bf16 compute
    agrees with float32 compute to bf16 tolerance; the loss stays float32."""
    config = _tiny("fm", kind="unet")
    ds = image_data.load(config)
    batch = image_data.sample_batch(8)(jax.random.PRNGKey(3), image_data.train_data(ds))
    params, losses = None, {}
    for dtype in ("float32", "bfloat16"):
        config.model.compute_dtype = dtype
        net = models.network(config, ds.example_shape)
        if params is None:  # zero-initialised output layers: perturb every weight
            params = net.init(jax.random.PRNGKey(1))
            leaves, tree = jax.tree_util.tree_flatten(params)
            keys = jax.random.split(jax.random.PRNGKey(2), len(leaves))
            params = jax.tree_util.tree_unflatten(tree, [
                p + 0.05 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys)])
        loss_fn = flow_matching.make_loss(net.apply, interpolants.get("linear"),
                                          time_sampling.get("uniform"),
                                          labels=image_data.loss_labels(config, net))
        value, _ = jax.jit(loss_fn)(params, jax.random.PRNGKey(4), batch)
        assert value.dtype == np.float32
        losses[dtype] = float(value)
    assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=3e-2)
    assert losses["bfloat16"] != losses["float32"]  # bf16 compute did take effect


def test_image_data_splits_and_labels():
    """digits: float images in [-1, 1] of shape (8, 8, 1), the configured split sizes,
    labels kept; dequantised FM batches differ per key and stay in the bins."""
    config = _tiny("fm")
    ds = image_data.load(config)
    assert ds.train.shape[1:] == (8, 8, 1) and ds.dim == 64 and ds.num_classes == 10
    assert len(ds.val) == 200 and len(ds.test) == 200 and len(ds.train) == 1797 - 400
    assert ds.train.min() >= -1 and ds.train.max() < 1
    b1 = image_data.sample_batch(8)(jax.random.PRNGKey(0), image_data.train_data(ds))
    b2 = image_data.sample_batch(8)(jax.random.PRNGKey(1), image_data.train_data(ds))
    assert b1["x"].shape == (8, 8, 8, 1) and b1["y"].shape == (8,)
    assert not np.allclose(b1["x"], b2["x"])


def test_mnist_missing_path_errors(tmp_path):
    """mnist without data.path, or with a folder missing the files: errors that say
    which key or file."""
    config = _tiny("fm", "mnist")
    with pytest.raises(ValueError, match="data.path"):
        image_data.load(config)
    config.data.path = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte"):
        image_data.load(config)


def test_image_config_variants():
    from configs import fm_digits, lfm_digits

    c = lfm_digits.get_config()
    assert c.lfm.num_blocks == 4 and c.lfm.free_last_block and c.lfm.interpolant == "linear"
    assert c.model.kind == "unet" and c.model.num_classes == 10
    assert fm_digits.get_config("uncond").model.num_classes == 0
    assert fm_digits.get_config("mnist").model.unet_preset == "mnist"
    with pytest.raises(ValueError, match="variant"):
        fm_digits.get_config("cifar")


@pytest.mark.parametrize("setting, value", [
    ("compute_dtype", "bfloat16"), ("weight_init", "torch"), ("time_embedding", "raw")])
def test_conditional_mlp_refuses_settings_it_would_ignore(setting, value, tmp_path):
    """The class-conditional MLP (model.kind "mlp", num_classes > 0) has no
    time_embedding / softplus_beta / weight_init / compute_dtype: off the values it uses
    they are a ValueError naming the setting and the model kind, from
    `models.network` (velocity and two-time), the flow-map student and the job's
    config validation, before any data or workdir file; the U-Net and the
    unconditional MLP keep taking them."""
    from lfm_jax.runs import flow_map as fm_job
    from lfm_jax.runs import validation

    config = _tiny("lfm")
    assert config.model.kind == "mlp" and config.model.num_classes == 10
    models.network(config, (8, 8, 1))  # the defaults are what the conditional MLP uses
    config.model[setting] = value
    for num_times in (1, 2):
        with pytest.raises(ValueError, match=f"config.model.{setting}={value!r}") as err:
            models.network(config, (8, 8, 1), num_times=num_times)
        assert "kind='mlp'" in str(err.value) and "num_classes=10" in str(err.value)
    with pytest.raises(validation.InvalidConfigError, match=setting):
        validation.validate_config(config)
    with pytest.raises(ValueError, match=setting):
        runs.get("lfm")(config, str(tmp_path / "w"))
    assert not (tmp_path / "w" / "config.json").exists()  # refused before any work
    with pytest.raises(ValueError, match=setting):
        fm_job.make_student(config, (8, 8, 1))
    config.model.kind = "unet"  # the U-Net ignores the MLP settings by design
    validation.validate_config(config)
    config.model.kind, config.model.num_classes = "mlp", 0
    models.network(config, (8, 8, 1))  # the unconditional MLP has every setting


def test_conditional_mlp_softplus_beta_counts_with_softplus_only():
    config = _tiny("lfm")
    config.model.softplus_beta = 20.0  # silu never reads beta (as networks.MLP)
    assert models.network(config, (8, 8, 1)).num_classes == 10
    config.model.activation = "softplus"
    with pytest.raises(ValueError, match="softplus_beta=20.0"):
        models.network(config, (8, 8, 1))


def test_flow_map_student_is_a_two_time_unet():
    """model.kind = "unet" gives the flow-map job a two-time U-Net student X(s, t, x) of
    the image shape; with model.num_classes a class-conditional one X(s, t, x, y)
    (null label num_classes)."""
    from configs import flow_map as fm_config
    from lfm_jax.runs import flow_map as fm_job

    config = fm_config.get_config("lsd,quick")
    config.model.kind, config.model.unet_channels = "unet", 8
    fmap = fm_job.make_student(config, (8, 8, 1))
    assert fmap.network.num_classes is None
    config.model.num_classes = 10
    fmap = fm_job.make_student(config, (8, 8, 1))
    assert fmap.num_classes == 10 and fmap.null_label == 10


def test_digits_fm_with_host_fed_batches(tmp_path):
    """data.placement = "host": the uint8 images stay on the host, each step's rows are
    fed (`train.HostBatches`) and dequantised on device (`image_data.prepare_batch`);
    the losses differ from the on-device sampler's (other rows) but train alike."""
    config = _tiny("fm")
    config.data.placement = "host"
    r = runs.get("fm")(config, str(tmp_path / "host"), argv=[])
    assert np.isfinite(r["test_bpd"]) and r["steps"] == 4
    host = [json.loads(l)["loss"] for l in open(tmp_path / "host" / "metrics.jsonl")]
    device = runs.get("fm")(_tiny("fm"), str(tmp_path / "device"), argv=[])
    dev = [json.loads(l)["loss"] for l in open(tmp_path / "device" / "metrics.jsonl")]
    assert len(host) == len(dev) == 2 and host != dev
    assert all(np.isfinite(host)) and np.isfinite(device["test_bpd"])
    # the same fed rows give the same run
    again = runs.get("fm")(config, str(tmp_path / "again"), argv=[])
    assert again["test_nll"] == r["test_nll"]


def test_digits_lfm_with_host_fed_batches(tmp_path):
    """LFM with data.placement = "host": every block's pushed training set (and the
    labels) stays on the host and each step's rows are fed; the same command twice
    gives the same run."""
    config = _tiny("lfm")
    config.data.placement = "host"
    r = runs.get("lfm")(config, str(tmp_path / "a"), argv=[])
    assert np.isfinite(r["test_bpd"]) and len(r["blocks"]) == 3
    again = runs.get("lfm")(config, str(tmp_path / "b"), argv=[])
    assert again["test_nll"] == r["test_nll"]
