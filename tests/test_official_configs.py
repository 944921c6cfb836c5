"""The official LFM configs (issue 10; docs/official_lfm.md): layouts against the
issue's table, the config plumbing to networks and optimiser, the `:quick` variants
end to end, the evaluation split, and chi_square.png."""
import importlib
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lfm_official
from lfm_jax import ode, plots, runs
from lfm_jax.runs import common, lfm_parts, validation

TOY = lfm_official.TOY_2D_STEP_SIZES
# config module: (data, OU step sizes, hidden, activation, batch, iterations per block,
# lr, decay rate, decay every, t per pair, Beta(1, b) b, warm start); the table.
OFFICIAL = {
    "lfm_rose": ("rose", TOY, (256,) * 3, "softplus", 10_000, 50_000, 2e-4, 0.99, 1_000,
                 1, 1.0, True),
    "lfm_tree": ("tree", TOY, (256,) * 3, "softplus", 10_000, 50_000, 2e-4, 0.99, 1_000,
                 1, 1.0, True),
    "lfm_8gaussians": ("eight_gaussians", TOY, (256,) * 3, "softplus", 10_000, 50_000, 2e-4,
                       0.99, 1_000, 1, 1.0, True),
    "lfm_checkerboard_official": ("checkerboard", TOY, (256,) * 3, "softplus", 10_000,
                                  50_000, 2e-4, 0.99, 1_000, 1, 1.0, True),
    "lfm_power": ("power", (0.15, 0.2, 0.26), (256,) * 4, "relu", 30_000, 100_000, 5e-3,
                  0.99, 1_000, 1, 1.0, True),
    "lfm_gas": ("gas", (0.05,), (362,) * 5, "relu", 50_000, 100_000, 2e-3, 0.99, 1_000, 10,
                0.5, True),
    "lfm_miniboone": ("miniboone", (0.35,), (362,) * 4, "relu", 1_000, 100_000, 5e-3, 0.9,
                      4_000, 4, 1.0, True),
    "lfm_bsds300": ("bsds300", (0.25,) * 3, (512,) * 4, "elu", 500, 30_000, 2e-3, 0.8,
                    4_000, 1, 1.0, False),
    # no official HEPMASS run: our choice (configs/lfm_hepmass.py docstring)
    "lfm_hepmass": ("hepmass", (0.15, 0.2, 0.26), (362,) * 4, "relu", 10_000, 100_000, 2e-3,
                    0.99, 1_000, 1, 1.0, True),
}
# rose runs by default (~20 s of CPU, mostly compilation); the other toys go the same
# code path with other data and run with -m slow.
TOYS = ["lfm_rose"] + [pytest.param(n, marks=pytest.mark.slow) for n in
                       ("lfm_tree", "lfm_8gaussians", "lfm_checkerboard_official")]


def _config(name, arg=""):
    return importlib.import_module(f"configs.{name}").get_config(arg)


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_layout_matches_the_table(name):
    (data, hs, hidden, act, batch, steps, lr, rate, every, tpp, beta_b,
     warm) = OFFICIAL[name]
    for arg in ("", "quick"):
        c = _config(name, arg)
        validation.validate_config(c)
        # L OU blocks with the table's step sizes, then exactly one free block
        got = lfm_parts.make_step_sizes(c)
        assert math.isinf(got[-1]) and all(math.isfinite(h) for h in got[:-1])
        np.testing.assert_array_equal(got[:-1], hs)
        assert (c.lfm.interpolant, c.model.time_embedding, c.model.weight_init) == (
            "trig", "raw", "torch")
        assert c.model.activation == act and len(c.model.hidden) == len(hidden)
        assert c.model.softplus_beta == (20.0 if act == "softplus" else 1.0)
        assert c.lfm.times_per_pair == tpp and c.lfm.warm_start == warm
        if beta_b == 1.0:
            assert c.lfm.time_sampler == "uniform"
        else:
            assert (c.lfm.time_sampler, c.lfm.beta_a, c.lfm.beta_b) == ("beta", 1.0, beta_b)
        assert c.train.schedule == "step" and c.train.decay_rate == rate
        assert (c.train.grad_clip, c.train.warmup_steps, c.train.weight_decay) == (0, 0, 0)
        assert c.train.ema_decay == 0.0 and not c.eval.use_ema
        assert c.lfm.push_ode.solver == "dopri5"
        assert c.eval.split == "test" and c.eval.ode.num_steps == 0  # our default: adaptive
    c = _config(name)
    assert c.data.name == data and tuple(c.model.hidden) == hidden
    assert (c.train.batch_size, c.lfm.steps_per_block) == (batch, steps)
    assert (c.train.lr, c.train.decay_every) == (lr, every)
    assert c.lfm.push_ode.rtol == c.lfm.push_ode.atol == 1e-5


def test_variants_are_checked_and_paper_nll_is_149_euler_steps():
    with pytest.raises(ValueError, match="unknown config variant"):
        _config("lfm_rose", "standin")  # tabular only
    with pytest.raises(ValueError, match="unknown config variant"):
        _config("lfm_power", "quik")
    assert _config("lfm_power", "quick,standin").data.name == "power_gmm"
    c = _config("lfm_gas", "paper_nll")
    validation.validate_config(c)
    assert (c.eval.split, c.eval.ode.solver, c.eval.ode.num_steps) == ("val", "euler", 149)
    # num_steps is the number of Euler steps: dx/dt = x from 1 gives (1 + 1/n)^n, the
    # official torch.linspace(0, 1, 150) grid's 149 steps
    opts = ode.options_from_config(c.eval.ode)
    y = ode.integrate(lambda t, x: x, jnp.ones((1,)), 0.0, 1.0, options=opts)
    np.testing.assert_allclose(float(y[0]), (1 + 1 / 149) ** 149, rtol=1e-5)
    bad = _config("lfm_power")
    bad.unlock()
    for key, value in (("train.decay_rate", 0.0), ("train.decay_rate", 1.5),
                       ("train.decay_every", 0), ("model.softplus_beta", 0.0),
                       ("eval.split", "train")):
        section, field = key.split(".")
        old = bad[section][field]
        bad[section][field] = value
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            validation.validate_config(bad)
        bad[section][field] = old


def test_config_network_is_the_direct_official_mlp():
    """common.velocity_network of the official 2-D config: [t, x] raw, Softplus(beta=20)
    hidden layers, linear output, torch init; recomputed in numpy."""
    c = _config("lfm_rose", "quick")
    net = common.velocity_network(c, (2,))
    params = net.init(jax.random.PRNGKey(0))
    inner = params["params"]
    layers = [inner[k] for k in sorted(inner, key=lambda k: int(k.split("_")[-1]))]
    assert np.asarray(layers[0]["kernel"]).shape == (3, 64)
    assert np.abs(np.asarray(layers[0]["kernel"])).max() <= 1 / np.sqrt(3)  # torch init
    t, x = 0.3, np.array([0.5, -1.0])
    h = np.concatenate([[t], x])
    for i, layer in enumerate(layers):
        h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        if i < len(layers) - 1:
            h = np.logaddexp(0.0, 20.0 * h) / 20.0
    out = net.apply(params, jnp.asarray(t), jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(out), h, rtol=1e-4, atol=1e-5)


def test_config_optimizer_is_adam_with_step_decay():
    """common.optimizer of the official MINIBOONE config: with a constant gradient,
    Adam's update k is -lr_k exactly, lr_k = 5e-3 * 0.9 ** floor(k / 4000)."""
    c = _config("lfm_miniboone")
    opt = common.optimizer(c, total_steps=c.lfm.steps_per_block)
    p = jnp.zeros(())
    state = opt.init(p)

    def body(s, _):
        u, s = opt.update(jnp.ones(()), s, p)
        return s, u

    _, updates = jax.jit(lambda s: jax.lax.scan(body, s, None, length=8_001))(state)
    k = np.array([0, 3_999, 4_000, 7_999, 8_000])
    np.testing.assert_allclose(-np.asarray(updates)[k], 5e-3 * 0.9 ** (k // 4000), rtol=1e-5)


def _check_job(results, workdir, config):
    hs = lfm_parts.make_step_sizes(config)
    assert results["num_blocks"] == len(hs) and results["step_sizes"][-1] is None
    assert results["blocks"][-1]["free"] and not any(r.get("free") for r in
                                                     results["blocks"][:-1])
    assert np.isfinite(results["test_nll"])
    saved = json.loads((workdir / "metrics.json").read_text())
    assert saved["num_blocks"] == len(hs)


@pytest.mark.parametrize("name", TOYS)
def test_quick_2d_official_trains_end_to_end(name, tmp_path, monkeypatch):
    """The :quick variant (8 OU + free) trains and evaluates on the CPU and writes
    chi_square.png from plots.plot_chi_square: H_n the cumulative OU times of the 8 OU
    blocks, anchored at the excess NLL of N(0, I) (block 0)."""
    calls = []
    real = plots.plot_chi_square

    def spy(path, cum_time, excess_nll, **kw):
        calls.append((np.asarray(cum_time), np.asarray(excess_nll), kw))
        return real(path, cum_time, excess_nll, **kw)

    monkeypatch.setattr(plots, "plot_chi_square", spy)
    config = _config(name, "quick")
    results = runs.get("lfm")(config, str(tmp_path))
    _check_job(results, tmp_path, config)
    assert results["nll_floor"] is not None and results["eval_split"] == "test"
    assert (tmp_path / "chi_square.png").stat().st_size > 0
    (H, ex, kw), = calls
    np.testing.assert_allclose(H, np.cumsum(TOY), rtol=1e-6)
    blocks = results["blocks"]
    np.testing.assert_allclose(ex, [r["excess_nll"] for r in blocks[1:9]])
    assert kw["initial_excess"] == blocks[0]["excess_nll"]


def _tiny_maf_files(root):
    rng = np.random.default_rng(0)
    (root / "power").mkdir()
    np.save(root / "power" / "data.npy",
            rng.normal(size=(400, 8)) * np.arange(1, 9) + np.arange(8))
    (root / "miniboone").mkdir()
    np.save(root / "miniboone" / "data.npy", rng.normal(size=(300, 43)) * 3 + 2)


@pytest.mark.parametrize("name", ["lfm_power",
                                  pytest.param("lfm_miniboone", marks=pytest.mark.slow)])
def test_quick_tabular_on_tiny_maf_files_scores_the_chosen_split(name, tmp_path):
    """:quick on tiny MAF-format files (1 or 3 OU + free); with eval.split "val" the
    NLL is over the MAF validation split (its size, not the test split's)."""
    _tiny_maf_files(tmp_path)
    config = _config(name, "quick")
    config.data.path = str(tmp_path)
    config.eval.split = "val"
    dataset = common.load_data(config)
    assert len(dataset.val) != len(dataset.test)
    results = runs.get("lfm")(config, str(tmp_path / "run"))
    _check_job(results, tmp_path / "run", config)
    assert results["eval_split"] == "val" and results["nll_examples"] == len(dataset.val)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lfm_gas", "lfm_bsds300", "lfm_hepmass"])
def test_quick_standin_tabular_trains_end_to_end(name, tmp_path):
    """:quick,standin: the Gaussian-mixture stand-in of the data set's dimension."""
    config = _config(name, "quick,standin")
    results = runs.get("lfm")(config, str(tmp_path))
    _check_job(results, tmp_path, config)
    assert results["nll_floor"] is not None
