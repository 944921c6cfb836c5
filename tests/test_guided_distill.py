"""Guided distillation of a class-conditional LFM (CPU, tiny MLPs, sklearn's 8x8
digits, a handful of steps): every block's teacher is its classifier-free guided
field at w, the students are class-conditional flow maps; the comparison generates
with labels i % 10 for every method and scores the classifier's accuracy; guidance on
an unconditional LFM is refused before any work."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_conditional_flow_map import save_untrained_classifier
from tests.test_image_flow_maps import tiny_digits_lfm_config


def _tiny_lfm(variant=""):
    """configs/lfm_digits.py shrunk to 2 MLP blocks of 2 steps (seconds on a CPU)."""
    return tiny_digits_lfm_config(variant)


def test_guidance_on_an_unconditional_lfm_is_refused_before_any_work(tmp_path):
    from lfm_jax.runs import common, lfm_distill, lfm_parts

    config = _tiny_lfm("uncond")
    network = common.velocity_network(config, (8, 8, 1))
    model = lfm_parts.make_model(config, network, (8, 8, 1))
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="class-conditional LFM"):
        lfm_distill.distill_blocks(config, str(tmp_path), network, model, [],
                                   np.zeros((4, 8, 8, 1)), out_dir=str(out),
                                   guidance_w=1.0, train_labels=np.zeros(4, np.int32))
    assert not out.exists()  # nothing written
    with pytest.raises(ValueError, match="class-conditional LFM"):  # nor data loaded
        lfm_distill.run(config, str(tmp_path / "nowhere"), guidance_w=2.0)
    assert not (tmp_path / "nowhere").exists()
    cond = _tiny_lfm()
    with pytest.raises(ValueError, match=">= 0"):
        lfm_distill.check_guidance(cond, -1.0)
    lfm_distill.check_guidance(cond, 1.5)  # a conditional LFM takes it
    lfm_distill.check_guidance(config, None)  # unset: null-class distillation


def test_conditional_student_depends_on_the_label():
    from lfm_jax.runs import lfm_distill

    config = _tiny_lfm()
    fmap = lfm_distill.student_flow_map(config, (8, 8, 1), hidden=(16,), conditional=True)
    assert fmap.num_classes == 10 and fmap.null_label == 10
    params = fmap.init(jax.random.PRNGKey(0))
    x = jnp.ones((8, 8, 1))
    a = fmap.apply(params, 0.0, 0.5, x, 1)
    b = fmap.apply(params, 0.0, 0.5, x, 7)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4
    plain = lfm_distill.student_flow_map(config, (8, 8, 1), hidden=(16,))
    assert plain.num_classes is None  # today's null-class student
    with pytest.raises(ValueError, match="num_classes"):
        lfm_distill.student_flow_map(_tiny_lfm("uncond"), (8, 8, 1), conditional=True)


def test_mlp_student_takes_the_blocks_mlp_settings():
    """An MLP student is of its blocks' family: the official configuration's raw time
    input, torch init and softplus beta reach it (they were once dropped silently)."""
    from lfm_jax import networks
    from lfm_jax.runs import lfm_distill

    config = _tiny_lfm("uncond")
    with config.unlocked():
        config.model.activation = "softplus"
        config.model.softplus_beta = 20.0
        config.model.time_embedding = "raw"
        config.model.weight_init = "torch"
    fmap = lfm_distill.student_flow_map(config, (8, 8, 1), hidden=(16,))
    m = config.model
    same = networks.two_time_mlp((8, 8, 1), (16,), "softplus", m.num_frequencies,
                                 m.max_frequency, time_embedding="raw", softplus_beta=20.0,
                                 weight_init="torch")
    key = jax.random.split(jax.random.PRNGKey(0))[0]  # FlowMap.init's network key
    params = fmap.init(jax.random.PRNGKey(0))
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 8, 1))
    out = fmap.network.apply(params["net"], 0.2, 0.7, x)
    assert jax.tree.structure(params["net"]) == jax.tree.structure(same.init(key))
    assert jax.tree.all(jax.tree.map(
        lambda a, b: bool(jnp.array_equal(a, b)), params["net"], same.init(key)))
    assert jnp.allclose(out, same.apply(params["net"], 0.2, 0.7, x), atol=1e-6)
    # a class-conditional MLP student refuses settings it cannot honour
    with pytest.raises(ValueError, match="time_embedding='raw'"):
        lfm_distill.student_flow_map(_with(config, num_classes=10), (8, 8, 1),
                                     hidden=(16,), conditional=True)


def _with(config, **model):
    config = config.copy_and_resolve_references()
    with config.unlocked():
        for k, v in model.items():
            config.model[k] = v
    return config


@pytest.fixture(scope="module")
def conditional_lfm(tmp_path_factory):
    """(config, workdir) of a class-conditional digits LFM of 2 MLP blocks
    with randomly initialised params, saved in the block artefacts as
    `lfm_blocks.train_blocks` saves trained ones (seconds instead of the training and
    pushes; the pushed training data are then recomputed, with each row's label, by
    `lfm_distill.block_inputs`), and a (randomly initialised) classifier."""
    from lfm_jax.runs import block_store, common

    root = tmp_path_factory.mktemp("guided")
    config = _tiny_lfm()
    config.eval.classifier_workdir = save_untrained_classifier(str(root / "clf"))
    network = common.velocity_network(config, (8, 8, 1))
    workdir = str(root / "lfm")
    for n in (1, 2):
        p = jax.device_get(jax.jit(network.init)(jax.random.PRNGKey(n)))
        with block_store.BlockArtefacts(workdir, n) as store:
            store.save(params={"params": p, "ema_params": p})
    return config, workdir


def test_guided_distillation_of_a_digits_lfm_end_to_end(conditional_lfm):
    """The LFM distilled with guidance_w = 2 by `lfm_distill.run` (what
    experiments/distill_lfm.py --guidance_w runs): settings and results record w; every
    row (guided ODE, distilled K, guided Euler K) is scored with the classifier's
    accuracy against the labels i % 10 saved with the samples."""
    from lfm_jax.runs import lfm_distill

    config, workdir = conditional_lfm
    kw = dict(objective="lmd", steps=2, hidden=(32, 32), batch_size=8, max_pairs=64,
              sample_steps=(1,), n_samples=20, verbose=False)
    res = lfm_distill.run(config, workdir, guidance_w=2.0, **kw)
    out = os.path.join(workdir, "distill", "lmd_w2")
    assert res["out_dir"] == out and res["guidance_w"] == 2.0
    assert json.load(open(os.path.join(out, "settings.json")))["guidance_w"] == 2.0
    rows = json.load(open(os.path.join(out, "results.json")))["rows"]
    assert [(r["method"], r["K"]) for r in rows] == [
        ("lfm_ode", "heun x2"), ("distilled", 1), ("lfm_euler", 1)]
    for r in rows:
        assert r["guidance_w"] == 2.0 and r["n_failed"] == 0
        assert 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["fd_classifier"])
        name = r["method"] if r["method"] == "lfm_ode" else f"{r['method']}_k{r['K']}"
        with np.load(os.path.join(out, f"samples_{name}.npz")) as f:
            assert f["images"].shape == (20, 8, 8, 1)
            np.testing.assert_array_equal(f["labels"], np.arange(20) % 10)
        assert os.path.exists(os.path.join(out, f"samples_{name}.png"))
    assert "accuracy" in open(os.path.join(out, "table.md")).read()


def test_guided_students_teacher_and_generators(conditional_lfm, tmp_path):
    """The guided students are class-conditional and their maps depend on the label;
    block 2's pairs are the training data pushed through block 1 with each row's label
    (the LFM's own push); the guided generators (teacher ODE, Euler) differ from the
    unguided ones and use the labels; labels are required; settings.json holds w: the
    same w loads the distilled blocks, another w (or none) into the same directory is
    refused."""
    from lfm_jax import distill
    from lfm_jax.runs import common, distill_eval, image_eval, lfm_distill

    config, workdir = conditional_lfm
    dataset = common.load_data(config)
    network, model, params_list = lfm_distill.load_trained_blocks(
        config, workdir, dataset.example_shape)
    x2 = lfm_distill.block_inputs(workdir, model, params_list, dataset.train, 2,
                                  labels=dataset.train_labels, network=network)
    rows = np.arange(0, len(x2), 97)
    want = image_eval.guided_solve(network, params_list[0], dataset.train[rows],
                                   dataset.train_labels[rows], 1.0, 0.0, 1.0,
                                   options=model.ode)
    np.testing.assert_allclose(x2[rows], want, atol=1e-4)
    maps, _ = lfm_distill.distill_blocks(
        config, workdir, network, model, params_list, dataset.train,
        out_dir=str(tmp_path / "d"), objective="lsd", hidden=(16,), steps=2,
        batch_size=8, max_pairs=32, verbose=False, guidance_w=1.0,
        train_labels=dataset.train_labels)
    fmap = maps[0][0]
    assert fmap.num_classes == 10 and maps[1][0] is fmap
    z = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (6, 8, 8, 1)))
    y = np.arange(6, dtype=np.int32)
    a = distill.generate_lfm_sharded(maps, z, 1, labels=y)
    b = distill.generate_lfm_sharded(maps, z, 1, labels=(y + 3) % 10)
    assert np.max(np.abs(a - b)) > 1e-4

    labels = np.arange(6, dtype=np.int32) % 10
    guided = distill_eval.generators(config, model, params_list, maps, (1,),
                                     labels=labels, guidance_w=2.0, network=network)
    plain = distill_eval.generators(config, model, params_list, maps, (1,))
    assert [g[:2] for g in guided] == [g[:2] for g in plain]
    for (_, _, _, gen_w), (_, _, _, gen_0) in zip(guided, plain):
        x_w, x_0 = np.asarray(gen_w(z)), np.asarray(gen_0(z))
        assert x_w.shape == z.shape and np.max(np.abs(x_w - x_0)) > 1e-4
    with pytest.raises(ValueError, match="labels"):
        distill_eval.generators(config, model, params_list, maps, (1,), guidance_w=2.0)
    with pytest.raises(ValueError, match="train_labels"):
        lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                   dataset.train, out_dir=str(tmp_path / "x"),
                                   guidance_w=1.0)
    # settings: the same w loads the distilled blocks; another w, or none, is refused
    same = dict(out_dir=str(tmp_path / "d"), objective="lsd", hidden=(16,), steps=2,
                batch_size=8, max_pairs=32, verbose=False,
                train_labels=dataset.train_labels)
    _, infos = lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                          dataset.train, guidance_w=1.0, **same)
    assert all(i.get("loaded") for i in infos)
    for other in (2.0, None):
        with pytest.raises(ValueError, match="other settings"):
            lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                       dataset.train, guidance_w=other, **same)


def test_learned_weighting_students(conditional_lfm, tmp_path):
    """learned_weighting gives every student a loss weighting lv(s, t) that trains
    (it starts at lv = 0 and moves), is recorded in settings.json, and a rerun
    without it into the same directory is refused; likewise an lr warm-up and the
    diagonal fraction of the time pairs (which changes the training)."""
    from lfm_jax.runs import common, lfm_distill

    config, workdir = conditional_lfm
    dataset = common.load_data(config)
    network, model, params_list = lfm_distill.load_trained_blocks(
        config, workdir, dataset.example_shape)
    kw = dict(out_dir=str(tmp_path / "w"), objective="lsd", hidden=(16,), steps=4,
              batch_size=8, max_pairs=32, verbose=False)
    maps, _ = lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                         dataset.train, learned_weighting=True, **kw)
    fmap, params = maps[0]
    assert fmap.weighting is not None and "weight" in params
    lv = [float(fmap.weighting.apply(params["weight"], s, t))
          for s, t in ((0.0, 0.5), (0.3, 0.3), (0.1, 0.9))]
    assert max(abs(v) for v in lv) > 1e-6  # trained away from its zero start
    with open(tmp_path / "w" / "settings.json") as f:
        assert json.load(f)["learned_weighting"] is True
    with pytest.raises(ValueError, match="other settings"):
        lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                   dataset.train, **kw)
    plain = lfm_distill.student_flow_map(config, model.example_shape, (16,))
    assert plain.weighting is None
    # an lr warm-up is recorded too; one as long as the run is refused before any work
    kw["out_dir"] = str(tmp_path / "warm")
    lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                               dataset.train, warmup_steps=2, **kw)
    with open(tmp_path / "warm" / "settings.json") as f:
        assert json.load(f)["warmup_steps"] == 2
    kw["out_dir"] = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="warmup_steps"):
        lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                   dataset.train, warmup_steps=4, **kw)
    assert not os.path.exists(tmp_path / "bad")
    # diagonal_fraction reaches the time-pair sampler (lsd's own is 0.75) and is recorded
    kw["out_dir"] = str(tmp_path / "diag")
    diag, _ = lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                         dataset.train, diagonal_fraction=0.25, **kw)
    kw["out_dir"] = str(tmp_path / "plain")
    plain_maps, _ = lfm_distill.distill_blocks(config, workdir, network, model,
                                               params_list, dataset.train, **kw)
    delta = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), diag[0][1],
                         plain_maps[0][1])
    assert max(jax.tree.leaves(delta)) > 1e-6
    with open(tmp_path / "diag" / "settings.json") as f:
        assert json.load(f)["diagonal_fraction"] == 0.25
    with pytest.raises(ValueError, match="diagonal_fraction"):
        lfm_distill.distill_blocks(config, workdir, network, model, params_list,
                                   dataset.train, diagonal_fraction=1.0, **kw)


def test_blocks_share_one_compiled_step(conditional_lfm, tmp_path, monkeypatch):
    """`lfm_distill.distill_blocks` (experiments/distill_lfm.py) trains every block
    with ONE jitted step, traced and compiled once (the teachers' params are its
    argument, the student is shared): null-class and guided distillation."""
    from lfm_jax import train
    from lfm_jax.runs import common, lfm_distill

    made = []
    make = train.make_train_step

    def counting(*args, **kwargs):
        made.append(make(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(train, "make_train_step", counting)
    config, workdir = conditional_lfm
    dataset = common.load_data(config)
    network, model, params_list = lfm_distill.load_trained_blocks(
        config, workdir, dataset.example_shape)
    for w in (None, 1.0):
        made.clear()
        maps, infos = lfm_distill.distill_blocks(
            config, workdir, network, model, params_list, dataset.train,
            out_dir=str(tmp_path / f"d{w}"), objective="lmd", hidden=(16,), steps=4,
            steps_per_call=2, batch_size=8, max_pairs=32, verbose=False, guidance_w=w,
            train_labels=dataset.train_labels)
        assert len(infos) == 2 and not any(i.get("loaded") for i in infos)
        assert len(made) == 1 and made[0]._cache_size() == 1, (w, len(made))
        assert maps[0][0] is maps[1][0]


@pytest.mark.parametrize("objective", ["lmd", "lsd"])
def test_shared_step_gives_the_per_block_results(conditional_lfm, objective):
    """The shared step (teachers as `distill.Teacher`s, params an argument) trains the
    same students as a step per block with the params baked in (plain-function
    teachers, the code before): exactly without a teacher (lsd); with one (lmd) to the
    last bits, as XLA may rewrite the teacher around constant params."""
    from lfm_jax import distill, flow_map
    from lfm_jax.runs import common, lfm_distill

    config, workdir = conditional_lfm
    network = common.velocity_network(config, (8, 8, 1))
    _, _, params_list = lfm_distill.load_trained_blocks(config, workdir, (8, 8, 1))
    rng = np.random.default_rng(0)
    pairs = [(rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
              rng.normal(size=(32, 8, 8, 1)).astype(np.float32)) for _ in params_list]
    fmap = flow_map.make_flow_map((8, 8, 1), hidden=(16,), num_frequencies=2)
    teachers = [distill.velocity_teacher(network, p) for p in params_list]
    plain = [lambda t, x, *y, b=b: b(t, x, *y) for b in teachers]
    kw = dict(objective=objective, key=jax.random.PRNGKey(3),
              train_kwargs=dict(num_steps=4, batch_size=8, steps_per_call=2))
    shared = distill.distill_lfm_blocks(teachers, pairs, lambda: fmap, **kw)
    per_block = distill.distill_lfm_blocks(plain, pairs, lambda: fmap, **kw)
    for (_, a), (_, b) in zip(shared, per_block):
        if objective == "lsd":
            jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
        else:
            jax.tree_util.tree_map(
                lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6), a, b)
