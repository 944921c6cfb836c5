"""Benchmark: steps/s of the flow-matching train step, per-step jit vs K fused steps.

    python -m experiments.bench_train_step [--fused=50] [--seconds=3] [--out=bench.json] \
        [--compute_dtype=bfloat16]

Models: MLP 4x256 (SiLU) on 2-D data and 4x512 on 43-D data; batches 256 and 4096.
Batches are drawn on device from a dataset held on the device mesh (no host round
trip). "per-step" calls the jitted single step in a Python loop (async dispatch,
one block at the end); "fused" runs K steps per call with lax.scan. --compute_dtype
picks the MLP's matmul dtype (`networks.COMPUTE_DTYPES`). Prints a table and writes JSON
with the device, JAX version and microseconds per step. The throughput benchmark
(experiments/benchmarks/throughput.py) adds the torch rows, utilisation and memory.
"""

import json
import platform

import jax
from absl import app, flags

from experiments import timing
from lfm_jax import distributed, flow_matching, interpolants, networks, time_sampling, train

flags.DEFINE_integer("fused", 50, "Steps fused per call (lax.scan).")
flags.DEFINE_float("seconds", 3.0, "Target timing duration per configuration.")
flags.DEFINE_string("out", "bench_train_step.json", "JSON output path.")
flags.DEFINE_string("sizes", "2:256,43:512", "dim:width list (depth 4).")
flags.DEFINE_string("batches", "256,4096", "Batch sizes.")
flags.DEFINE_enum("compute_dtype", "float32", list(networks.COMPUTE_DTYPES),
                  "MLP matmul / activation dtype (params stay float32).")
FLAGS = flags.FLAGS


def bench(dim, width, batch, fused, seconds, mesh, compute_dtype="float32"):
    net = networks.velocity_mlp((dim,), hidden=(width,) * 4, compute_dtype=compute_dtype)
    loss = flow_matching.make_loss(net.apply, interpolants.linear(), time_sampling.get("uniform"))
    opt = train.make_optimizer(lr=1e-3)
    data = distributed.replicate(jax.random.normal(jax.random.PRNGKey(0), (20_000, dim)), mesh)
    out = {}
    for name, k in (("per_step", 1), ("fused", fused)):
        step = train.make_train_step(loss, opt, steps_per_call=k, mesh=mesh,
                                     sample_batch=flow_matching.make_sample_batch(batch))
        state = train.create_train_state(jax.random.PRNGKey(1), net.init(jax.random.PRNGKey(2)),
                                         opt, mesh=mesh)
        out[name] = 1.0 / timing.seconds_per_step(step, state, data, k, seconds=seconds)
    return out, net.num_params(net.init(jax.random.PRNGKey(2)))


def main(argv):
    del argv
    mesh = distributed.make_mesh()
    dev = jax.devices()[0]
    rows = []
    for spec in FLAGS.sizes.split(","):
        dim, width = (int(v) for v in spec.split(":"))
        for batch in (int(b) for b in FLAGS.batches.split(",")):
            sps, n_params = bench(dim, width, batch, FLAGS.fused, FLAGS.seconds, mesh,
                                  FLAGS.compute_dtype)
            rows.append({"dim": dim, "width": width, "depth": 4, "batch": batch,
                         "params": n_params,
                         "per_step_steps_per_s": sps["per_step"],
                         "fused_steps_per_s": sps["fused"],
                         "per_step_us": 1e6 / sps["per_step"],
                         "fused_us": 1e6 / sps["fused"],
                         "fused_speedup": sps["fused"] / sps["per_step"]})
    header = (f"device: {dev.device_kind} x{jax.device_count()} ({dev.platform}), "
              f"jax {jax.__version__}, fused K={FLAGS.fused}, compute_dtype={FLAGS.compute_dtype}")
    print(header)
    print(f"{'dim':>4} {'width':>5} {'batch':>6} {'params':>8} {'per-step st/s':>14} "
          f"{'fused st/s':>11} {'per-step us':>12} {'fused us':>9} {'speedup':>8}")
    for r in rows:
        print(f"{r['dim']:>4} {r['width']:>5} {r['batch']:>6} {r['params']:>8} "
              f"{r['per_step_steps_per_s']:>14.1f} {r['fused_steps_per_s']:>11.1f} "
              f"{r['per_step_us']:>12.1f} {r['fused_us']:>9.1f} {r['fused_speedup']:>8.2f}")
    with open(FLAGS.out, "w") as f:
        json.dump({"device": dev.device_kind, "platform": dev.platform,
                   "device_count": jax.device_count(), "jax": jax.__version__,
                   "host": platform.node(), "fused": FLAGS.fused,
                   "compute_dtype": FLAGS.compute_dtype, "rows": rows}, f, indent=2)
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
