"""Two processes with two CPU devices each (jax.distributed on a localhost
coordinator) train exactly as one process with four devices: the FM job's losses and
one LFM block's losses and pushed training set are equal (the push with a fixed-step
solver: an adaptive solve amplifies float32 rounding differences of a differently
composed device batch into differences of the order of its tolerance).

The same holds for host-fed batches (config.data.placement = "host": each process
feeds only its rows of every batch, `train.HostBatches`), and a run stopped after a
checkpoint by 2 processes resumes in 1 process with 4 devices to the same losses as
the uninterrupted run (resume on another process count).

Each process runs the jobs through `lfm_jax.runs` in one interpreter (the driver
below); the workdir is shared, as on a cluster file system: every process takes part
in the orbax checkpoints and the LFM block artefacts (composite checkpoints), and only
process 0 writes logs and metrics."""

import json
import os
import socket
import shutil
import subprocess
import sys

import numpy as np

DRIVER = r"""
import sys
import jax
if len(sys.argv) > 3:  # -c workdir address process_id
    jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
from configs import fm_checkerboard, lfm_checkerboard
from lfm_jax import runs

def tiny(config):
    config.model.hidden = (16, 16)
    config.data.n_train = 2000
    config.train.batch_size = 64
    config.train.steps_per_call = 10
    config.train.checkpoint_every = 20
    config.eval.n_samples = 64
    config.eval.nll_examples = 64
    config.eval.ode.rtol = config.eval.ode.atol = 1e-3
    return config

def fm_config(placement="device"):
    fm = tiny(fm_checkerboard.get_config())
    fm.train.steps = 40
    fm.data.placement = placement
    return fm

def lfm_config():
    lfm = tiny(lfm_checkerboard.get_config())
    lfm.lfm.num_blocks = 2          # an OU block, its push (all 2000 rows), a free block
    lfm.lfm.step_c = 0.3
    lfm.lfm.free_last_block = True
    lfm.lfm.steps_per_block = 20
    lfm.lfm.n_val = 64
    lfm.lfm.push_ode.num_steps = 8   # fixed steps: the push is compared to float rounding
    return lfm

workdir = sys.argv[1]
if len(sys.argv) == 3:  # resume only: the fm and lfm runs of another process count
    runs.get("fm")(fm_config(), sys.argv[2] + "/fm")
    runs.get("lfm")(lfm_config(), sys.argv[2] + "/lfm")
    print("DRIVER DONE", jax.process_index(), jax.device_count(), flush=True)
    sys.exit(0)
runs.get("fm")(fm_config(), workdir + "/fm")
runs.get("fm")(fm_config("host"), workdir + "/fm_host")
runs.get("lfm")(lfm_config(), workdir + "/lfm")
print("DRIVER DONE", jax.process_index(), jax.device_count(), flush=True)
"""


STORE_DRIVER = r"""
import os, sys, warnings
import jax
import numpy as np
jax.distributed.initialize(sys.argv[2], num_processes=2, process_id=int(sys.argv[3]))
from jax.experimental import multihost_utils
from lfm_jax.runs import block_store

workdir = sys.argv[1]
params = {"params": {"w": np.arange(12.0).reshape(3, 4)}, "ema_params": {"w": np.ones((3, 4))}}
x = np.random.RandomState(0).randn(3000, 2).astype(np.float32)
with block_store.BlockArtefacts(workdir, 1) as store:
    store.save(params=params)
    store.save(train_pushed=x)
    store.save(val_pushed=(x[:64], np.arange(64.0)), report={"block": 1})
multihost_utils.sync_global_devices("saved")
if jax.process_index() == 0:  # truncate the pushed rows' data files
    folder = os.path.join(block_store.artefacts_dir(workdir, 1), "3", "train_pushed")
    for r, _, fs in os.walk(folder):
        for f in fs:
            if os.path.basename(r) == "d":
                path = os.path.join(r, f)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
multihost_utils.sync_global_devices("damaged")
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    with block_store.BlockArtefacts(workdir, 1) as store:
        assert store.train_pushed(x.shape, recover=True) is None
        store.save(train_pushed=x)
assert any("train_pushed: damaged" in str(w.message) for w in caught), caught
with block_store.BlockArtefacts(workdir, 1, read_only=True) as store:
    assert np.array_equal(store.train_pushed(), x) and store.report() == {"block": 1}
    assert np.array_equal(store.params({"w": np.zeros((3, 4))})["params"]["w"],
                          params["params"]["w"])
print("STORE DONE", jax.process_index(), sorted(os.listdir(
    block_store.artefacts_dir(workdir, 1))), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(args, devices, root, driver=DRIVER, cache_env=None):
    """cache_env: environment entries of a persistent compilation cache (the
    `compile_cache_env` fixture): a later process with the same device count loads
    the executables instead of compiling them again."""
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=root, **(cache_env or {}))
    return subprocess.Popen([sys.executable, "-c", driver, *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(path):
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f if line.strip()]


def _pushed(workdir, n):
    """Block n's pushed training rows (its orbax composite, written by 2 processes
    or 1)."""
    from lfm_jax.runs import block_store

    with block_store.BlockArtefacts(str(workdir), n, read_only=True) as store:
        return store.train_pushed()


def _outputs(procs, timeout):
    """Each process's output, in order, after checking that it exited with 0; all are
    killed if one does not end within timeout seconds."""
    outs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


def test_two_processes_train_as_one_process_with_four_devices(tmp_path, compile_cache_env):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    address = f"localhost:{_free_port()}"
    multi, single = tmp_path / "multi", tmp_path / "single"
    procs = [_start([str(multi), address, str(i)], 2, root) for i in range(2)]
    # the 1-process run fills a compilation cache that the resumed run below loads from
    procs.append(_start([str(single)], 4, root, cache_env=compile_cache_env))
    outs = _outputs(procs, 420)
    assert "DRIVER DONE 0 4" in outs[0] and "DRIVER DONE 1 4" in outs[1], outs[0][-2000:]
    assert "DRIVER DONE 0 4" in outs[2]

    fm_multi, fm_single = _losses(multi / "fm/metrics.jsonl"), _losses(single / "fm/metrics.jsonl")
    assert len(fm_multi) == 4 and fm_multi == fm_single
    block = "lfm/blocks/1"
    assert _losses(multi / block / "loss.jsonl") == _losses(single / block / "loss.jsonl")
    # block 2 trains on block 1's push, equal to float32 rounding (below): its losses too
    np.testing.assert_allclose(_losses(multi / "lfm/blocks/2/loss.jsonl"),
                               _losses(single / "lfm/blocks/2/loss.jsonl"), rtol=1e-5)
    pushed_multi, pushed_single = _pushed(multi / "lfm", 1), _pushed(single / "lfm", 1)
    assert pushed_multi.shape == (2000, 2)
    np.testing.assert_allclose(pushed_multi, pushed_single, rtol=1e-5, atol=1e-5)
    # both processes restore the same final checkpoint (every process took part)
    assert sorted(os.listdir(multi / "fm/ckpt")) == sorted(os.listdir(single / "fm/ckpt"))
    # host-fed batches: each process fed its rows; the same losses as 1 process
    host_multi = _losses(multi / "fm_host/metrics.jsonl")
    assert len(host_multi) == 4 and host_multi == _losses(single / "fm_host/metrics.jsonl")
    assert host_multi != fm_multi  # other rows than the on-device sampler's

    # resume on another process count: drop the 2-process run's final checkpoint and
    # metrics (as if killed after the step-20 save), resume with 1 process x 4 devices;
    # LFM: drop block 2's artefacts (as if killed during its push): block 1 comes from
    # its composite written by 2 processes, block 2's params from its final checkpoint
    # (no training), its push, validation points and report are redone
    resumed = tmp_path / "resumed"
    shutil.copytree(multi / "fm", resumed / "fm")
    shutil.rmtree(resumed / "fm" / "ckpt" / "40")
    os.remove(resumed / "fm" / "metrics.json")
    shutil.copytree(multi / "lfm", resumed / "lfm")
    shutil.rmtree(resumed / "lfm" / "blocks" / "2" / "artefacts")
    os.remove(resumed / "lfm" / "metrics.json")
    p = _start([str(tmp_path / "unused"), str(resumed)], 4, root, cache_env=compile_cache_env)
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0 and "resuming from step 20" in out, out[-3000:]
    assert _losses(resumed / "fm" / "metrics.jsonl") == fm_single
    block2 = "lfm/blocks/2/"
    assert _losses(resumed / block2 / "loss.jsonl") == _losses(multi / block2 / "loss.jsonl")
    assert sorted(os.listdir(resumed / block2 / "ckpt")) == sorted(
        os.listdir(multi / block2 / "ckpt"))
    np.testing.assert_array_equal(_pushed(resumed / "lfm", 1), pushed_multi)
    lfm_multi = json.load(open(multi / "lfm" / "metrics.json"))
    lfm_resumed = json.load(open(resumed / "lfm" / "metrics.json"))
    np.testing.assert_allclose([b["val_nll"] for b in lfm_resumed["blocks"]],
                               [b["val_nll"] for b in lfm_multi["blocks"]], rtol=1e-4)


def test_two_processes_save_block_artefacts_and_set_damage_aside(tmp_path):
    """Both processes save a block's composite (collective), both see a damaged item,
    the version is moved aside once (between barriers) and the item saved again."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    address = f"localhost:{_free_port()}"
    procs = [_start([str(tmp_path), address, str(i)], 2, root, STORE_DRIVER)
             for i in range(2)]
    for i, out in enumerate(_outputs(procs, 200)):
        assert f"STORE DONE {i} ['1', '3.damaged']" in out, out[-3000:]
