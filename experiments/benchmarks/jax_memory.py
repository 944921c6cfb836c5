"""Peak device memory of one lfm-jax benchmark trainer, measured in a fresh process.

    python -m experiments.benchmarks.jax_memory --dim=43 --width=512 --batch=4096 \
        [--steps_per_call=50] [--compute_dtype=float32] [--steps=100]

JAX's `memory_stats()["peak_bytes_in_use"]` counts from process start and cannot be
reset, so each trainer is built and run (a few calls) in its own process with
XLA_PYTHON_CLIENT_PREALLOCATE=false (the allocator grows as needed; the peak is what
the program used: dataset, params, optimiser and EMA state, and the step's
temporaries). Prints one JSON line {"peak_bytes": int | null, ...}; null where the
backend keeps no statistics (the CPU). `measure(...)` runs this in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

flags.DEFINE_integer("dim", 2, "Data dimension.")
flags.DEFINE_integer("width", 256, "Hidden width (depth 4).")
flags.DEFINE_integer("batch", 256, "Batch size.")
flags.DEFINE_integer("steps_per_call", 50, "Steps fused per call.")
flags.DEFINE_string("compute_dtype", "float32", "networks.COMPUTE_DTYPES key.")
flags.DEFINE_integer("steps", 100, "Steps to run (a multiple of steps_per_call).")
FLAGS = flags.FLAGS


def measure(dim, width, batch, steps_per_call, compute_dtype="float32", steps=None,
            timeout=300) -> dict:
    """Runs this module in a subprocess; returns its JSON (or {"error": ...})."""
    steps = steps or 2 * steps_per_call
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    cmd = [sys.executable, "-m", "experiments.benchmarks.jax_memory", f"--dim={dim}",
           f"--width={width}", f"--batch={batch}", f"--steps_per_call={steps_per_call}",
           f"--compute_dtype={compute_dtype}", f"--steps={steps}"]
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    import jax

    from experiments.benchmarks import ours
    trainer = ours.JaxTrainer(FLAGS.dim, (FLAGS.width,) * 4, ours.make_data(FLAGS.dim),
                              FLAGS.batch, steps_per_call=FLAGS.steps_per_call,
                              compute_dtype=FLAGS.compute_dtype)
    trainer.step(FLAGS.steps)
    trainer.sync()
    print(json.dumps({"peak_bytes": ours.peak_memory_bytes(),
                      "device": jax.devices()[0].device_kind, "dim": FLAGS.dim,
                      "width": FLAGS.width, "batch": FLAGS.batch,
                      "steps_per_call": FLAGS.steps_per_call,
                      "compute_dtype": FLAGS.compute_dtype}))


if __name__ == "__main__":
    app.run(main)
