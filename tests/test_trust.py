"""Run-level trust: config validation, provenance, kill -9 during a checkpoint save."""

import glob
import json
import time
import importlib
import os

import ml_collections
import pytest

from lfm_jax.runs import validation

CONFIG_FILES = sorted(glob.glob("configs/*.py"))


def _config(path="configs/default.py", method=None):
    module = importlib.import_module("configs." + os.path.basename(path)[:-3])
    if not hasattr(module, "get_config"):
        return None
    config = module.get_config()
    if method is not None:
        config.method = method
    return config


@pytest.mark.parametrize("path", [p for p in CONFIG_FILES
                                  if not p.endswith(("__init__.py", "_defaults.py"))])
def test_every_shipped_config_is_valid(path):
    validation.validate_config(_config(path))


@pytest.mark.parametrize("method, key, value, requirement", [
    ("fm", "train.steps", 0, "an integer >= 1"),
    ("lfm", "lfm.steps_per_block", 0, "an integer >= 1"),
    ("flow_map", "train.steps", 0, "an integer >= 1"),
    ("fm", "train.batch_size", 0, "an integer >= 1"),
    ("fm", "train.steps_per_call", 0, "an integer >= 1"),
    ("fm", "train.checkpoint_every", 0, "an integer >= 1"),
    ("fm", "train.keep_checkpoints", 0, "an integer >= 1"),
    ("fm", "train.lr", 0.0, "a finite number > 0"),
    ("fm", "train.lr", float("nan"), "a finite number > 0"),
    ("fm", "train.warmup_steps", -1, "an integer >= 0"),
    ("fm", "train.ema_decay", 1.0, "in [0.0, 1.0)"),
    ("lfm", "lfm.num_blocks", -1, "an integer >= 0"),
    ("lfm", "lfm.step_c", 0.0, "a finite number > 0"),
    ("lfm", "lfm.step_sizes", (0.1, -0.2), "a sequence of entries a finite number > 0"),
    ("lfm", "lfm.chunk_size", 0, "an integer >= 1"),
    ("lfm", "lfm.n_probes", 0, "an integer >= 1"),
    ("fm", "eval.n_samples", 0, "an integer >= 1"),
    ("fm", "eval.nll_examples", 0, "an integer >= 1"),
    ("fm", "eval.chunk_size", 0, "an integer >= 1"),
    ("fm", "eval.divergence", "hutch", "one of ['exact', 'hutchinson']"),
    ("flow_map", "flow_map.diagonal_fraction", 1.5, "in [0.0, 1.0]"),
    ("flow_map", "flow_map.sample_steps", (), "a non-empty sequence"),
    ("flow_map", "flow_map.sample_steps", (1, 0), "a non-empty sequence"),
    ("flow_map", "flow_map.teacher_steps", 0, "an integer >= 1"),
    ("fm", "model.hidden", (64, 0), "a sequence of entries an integer >= 1"),
    ("fm", "data.n_train", 0, "an integer >= 1"),
])
def test_bad_value_is_refused_naming_the_key(method, key, value, requirement):
    config = _config(method=method)
    section, name = key.rsplit(".", 1)
    validation.get_path(config, section)[name] = value
    with pytest.raises(ValueError) as err:
        validation.validate_config(config)
    msg = str(err.value)
    assert msg.startswith(f"config.{key} must be {requirement}"), msg
    assert f"got {value!r}" in msg


@pytest.mark.parametrize("method, key", [("fm", "train.steps"), ("lfm", "lfm.steps_per_block"),
                                         ("flow_map", "flow_map.teacher_steps")])
def test_step_counts_must_be_multiples_of_fused_steps(method, key):
    config = _config(method=method)
    config.train.steps_per_call = 7
    config.train.steps, config.lfm.steps_per_block = 70, 70
    config.flow_map.teacher_steps = 70
    validation.validate_config(config)
    section, name = key.rsplit(".", 1)
    validation.get_path(config, section)[name] = 75
    with pytest.raises(ValueError, match=rf"config\.{key} must be a multiple of config\.train"
                                         r"\.steps_per_call, got 75 \(config\.train\.steps_per_call=7\)"):
        validation.validate_config(config)


def test_ode_sections_are_checked_when_present_and_skipped_when_absent():
    config = _config()
    ode = ml_collections.ConfigDict({"solver": "tsit5", "rtol": 1e-5, "atol": 1e-5,
                                     "num_steps": 0, "max_steps": 4096})
    config.eval.ode = ode
    config.lfm.push_ode = ml_collections.ConfigDict(ode.to_dict())
    validation.validate_config(config)
    config.lfm.push_ode.rtol = 0.0
    with pytest.raises(ValueError, match=r"config\.lfm\.push_ode\.rtol must be a finite number > 0"):
        validation.validate_config(config)
    config.lfm.push_ode.rtol = 1e-5
    config.eval.ode.max_steps = 0
    with pytest.raises(ValueError, match=r"config\.eval\.ode\.max_steps must be an integer >= 1"):
        validation.validate_config(config)
    # plain nested dicts work too, and a missing key is skipped
    validation.validate_config({"method": "fm", "train": {"steps": 10}})
    with pytest.raises(ValueError, match=r"config\.train\.steps must be"):
        validation.validate_config({"method": "fm", "train": {"steps": 0}})


def test_record_run_writes_config_and_refuses_training_changes(tmp_path):
    from lfm_jax.runs import provenance

    workdir = str(tmp_path)
    config = _config("configs/lfm_checkerboard.py")
    argv = ["experiments/train.py", "--config=configs/lfm_checkerboard.py"]
    assert provenance.record_run(config, workdir, argv) == {}
    saved = json.load(open(tmp_path / "config.json"))
    assert saved["lfm"]["steps_per_block"] == config.lfm.steps_per_block
    assert saved["model"]["hidden"] == list(config.model.hidden)
    # evaluation-only changes are accepted and recorded
    config.eval.n_samples = 17
    config.train.steps = config.train.steps * 2
    config.train.checkpoint_every = 5
    changes = provenance.record_run(config, workdir, argv + ["--config.eval.n_samples=17"])
    assert set(changes) == {"eval.n_samples", "train.steps", "train.checkpoint_every"}
    runs = [json.loads(line) for line in open(tmp_path / "runs.jsonl")]
    assert [r["resumed"] for r in runs] == [False, True]
    assert runs[1]["argv"][-1] == "--config.eval.n_samples=17"
    assert runs[1]["changed"]["eval.n_samples"][1] == 17
    # training changes are refused, listing every changed key
    for key, value in [("lfm.steps_per_block", 3), ("train.lr", 0.5), ("seed", 3),
                       ("data.name", "moons"), ("model.hidden", (8,)), ("method", "fm"),
                       ("fm.interpolant", "trig"), ("flow_map.objective", "x")]:
        changed = _config("configs/lfm_checkerboard.py")
        changed.eval.n_samples, changed.train.steps = 17, config.train.steps
        changed.train.checkpoint_every = 5
        section, _, name = key.rpartition(".")
        (validation.get_path(changed, section) if section else changed)[name] = value
        changed.train.batch_size = 64
        with pytest.raises(provenance.ConfigChangedError) as err:
            provenance.record_run(changed, workdir, argv)
        msg = str(err.value)
        assert f"  {key}: " in msg and "  train.batch_size: " in msg and workdir in msg
    assert json.load(open(tmp_path / "config.json"))["eval"]["n_samples"] == 17


def test_after_divergence_the_lr_may_change_once(tmp_path):
    from lfm_jax.runs import provenance

    workdir = str(tmp_path)
    config = _config()
    provenance.record_run(config, workdir, [])
    config.train.lr = 1e-4
    with pytest.raises(provenance.ConfigChangedError, match="train.lr"):
        provenance.record_run(config, workdir, [])
    provenance.mark_diverged(workdir, "loss became inf at step 3")
    assert provenance.record_run(config, workdir, []) == {"train.lr": (1e-3, 1e-4)}
    config.train.lr = 1e-5  # the marker is consumed by the start that used it
    with pytest.raises(provenance.ConfigChangedError, match="train.lr"):
        provenance.record_run(config, workdir, [])


def test_train_clock_adds_up_across_restarts(tmp_path):
    from lfm_jax.runs import provenance

    path = str(tmp_path / "block" / "train_clock.json")
    first = provenance.TrainClock(path)
    time.sleep(0.05)
    t1 = first.save(10, steps_trained=10)
    assert t1 >= 0.05
    second = provenance.TrainClock(path)  # a restart
    assert second.base == pytest.approx(t1)
    time.sleep(0.05)
    t2 = second.save(20, steps_trained=20)
    assert t2 >= t1 + 0.05
    stored = json.load(open(path))
    assert stored == {"train_time_s": t2, "step": 20, "steps_trained": 20}
    with open(path, "w") as f:
        f.write('{"train_time_s": 1')
    with pytest.warns(RuntimeWarning, match="train_clock.json"):
        assert provenance.TrainClock(path).base == 0.0


_KILL_SCRIPT = '''
import os, signal, sys
import jax, jax.numpy as jnp, numpy as np
from lfm_jax import checkpoint, flow_matching, interpolants, networks, time_sampling, train

kill_at, runs = int(sys.argv[1]), sys.argv[2:]  # runs: workdir, out, workdir, out ...
net = networks.velocity_mlp((2,), hidden=(16, 16))
loss = flow_matching.make_loss(net.apply, interpolants.linear(), time_sampling.get("uniform"))
opt = train.make_optimizer(lr=1e-2)
step = train.make_train_step(loss, opt, sample_batch=flow_matching.make_sample_batch(32),
                             steps_per_call=2)
state = train.create_train_state(jax.random.PRNGKey(0), net.init(jax.random.PRNGKey(1)), opt)
data = jax.random.normal(jax.random.PRNGKey(2), (256, 2))


class KillDuringSave(checkpoint.Checkpointer):
    def save(self, s, st, force=False):
        saved = super().save(s, st, force)  # async: the write is in flight
        if s == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return saved


init = state
for workdir, out in zip(runs[::2], runs[1::2]):
    with KillDuringSave(workdir, save_every=4, keep=2) as ckpt:
        state = ckpt.restore(jax.tree_util.tree_map(jnp.copy, init))
        print(workdir, "start", int(state.step), flush=True)
        state, _ = train.fit(state, step, data, 24, steps_per_call=2, checkpointer=ckpt)
    leaves = jax.tree_util.tree_leaves(jax.device_get((state.params, state.ema_params)))
    np.save(out, np.concatenate([np.ravel(x) for x in leaves]))
'''


def test_kill9_during_checkpoint_save_then_restart_matches_uninterrupted(
        tmp_path, compile_cache_env):
    import subprocess
    import sys

    import numpy as np

    script = tmp_path / "train_script.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": os.getcwd(),
           **compile_cache_env}  # the later processes load the first one's executables

    def run(kill_at, *runs):
        return subprocess.run([sys.executable, str(script), str(kill_at), *map(str, runs)],
                              cwd=os.getcwd(), env=env, capture_output=True, text=True,
                              timeout=120)

    a, b = tmp_path / "a", tmp_path / "b"
    killed = run(12, b, tmp_path / "b.npy")
    assert killed.returncode == -9, killed.stderr
    assert not (tmp_path / "b.npy").exists()
    # one process: the uninterrupted run in a/, then the restart in b/
    both = run(-1, a, tmp_path / "a.npy", b, tmp_path / "b.npy")
    assert both.returncode == 0, both.stderr
    start = int(both.stdout.split(f"{b} start")[1].split()[0])
    assert start in (8, 12)  # 12 if the killed write had been committed, else 8
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"))
    assert not [p for p in os.listdir(tmp_path / "b") if "tmp" in p]


_BLOCKS_KILL_SCRIPT = '''
import os, signal, sys, threading, time
import jax, numpy as np
from configs import default
from lfm_jax.runs import block_store, common, lfm_blocks

kill_version, runs = int(sys.argv[1]), sys.argv[2:]  # runs: workdir, out, ...
config = default.get_config()
config.method = "lfm"
config.data.n_train, config.data.n_val, config.data.n_test = 256, 64, 64
config.model.hidden, config.model.num_frequencies = (16, 16), 2
c = config.lfm
c.num_blocks, c.step_c, c.free_last_block, c.steps_per_block = 2, 0.3, True, 20
c.push_ode.solver, c.push_ode.num_steps = "euler", 4
c.chunk_size, c.n_val = 128, 32
t = config.train
t.batch_size, t.steps_per_call, t.checkpoint_every, t.warmup_steps = 32, 10, 10, 0
dataset = common.load_data(config)


def kill_while_saving(workdir):
    """SIGKILL this process while version kill_version of block 1's artefacts is
    being written (its temporary folder exists)."""
    folder = block_store.artefacts_dir(workdir, 1)
    while True:
        names = os.listdir(folder) if os.path.isdir(folder) else []
        if any(n.startswith(f"{kill_version}.orbax-checkpoint-tmp") for n in names):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.0005)


for workdir, out in zip(runs[::2], runs[1::2]):
    if kill_version > 0:
        threading.Thread(target=kill_while_saving, args=(workdir,), daemon=True).start()
    _, params_list, _ = lfm_blocks.train_blocks(config, dataset, workdir, verbose=False,
                                                callback=lambda b, s, m: print(
                                                    workdir, "trains", b, s, flush=True))
    with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
        pushed = store.train_pushed()
    leaves = jax.tree_util.tree_leaves(jax.device_get(params_list)) + [pushed]
    np.save(out, np.concatenate([np.ravel(x) for x in leaves]))
'''


def test_kill9_during_block_artefacts_save_then_restart_matches_uninterrupted(
        tmp_path, compile_cache_env):
    """SIGKILL while block 1's artefacts are written (orbax's temporary folder of
    version 1: the params, or 2: the pushed rows); the same command then ends with the
    params and pushed rows of an uninterrupted run, without training block 1 again."""
    import subprocess
    import sys

    import numpy as np

    script = tmp_path / "blocks_script.py"
    script.write_text(_BLOCKS_KILL_SCRIPT)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": os.getcwd(),
           **compile_cache_env}  # the later processes load the first one's executables

    def run(kill_version, *runs):
        return subprocess.run([sys.executable, str(script), str(kill_version),
                               *map(str, runs)], cwd=os.getcwd(), env=env,
                              capture_output=True, text=True, timeout=300)

    for version in (1, 2):
        killed = run(version, tmp_path / f"k{version}", tmp_path / "unused.npy")
        assert killed.returncode == -9, killed.stderr[-3000:]
        art = os.listdir(tmp_path / f"k{version}" / "blocks" / "1" / "artefacts")
        assert f"{version}.orbax-checkpoint-tmp" in " ".join(art), art
    # one process: the uninterrupted run, then the restarts
    both = run(0, tmp_path / "a", tmp_path / "a.npy", tmp_path / "k1", tmp_path / "k1.npy",
               tmp_path / "k2", tmp_path / "k2.npy")
    assert both.returncode == 0, both.stderr[-3000:]
    for version in (1, 2):
        workdir = tmp_path / f"k{version}"
        assert f"{workdir} trains 1" not in both.stdout  # block 1 not trained again
        np.testing.assert_array_equal(np.load(tmp_path / f"k{version}.npy"),
                                      np.load(tmp_path / "a.npy"))
        art = os.listdir(workdir / "blocks" / "1" / "artefacts")
        assert len(art) == 1 and art[0].isdigit(), art  # the unfinished one removed
