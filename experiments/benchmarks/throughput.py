"""Training throughput (steps/s): lfm-jax vs torchcfm, flow_matching, rectified-flow-pytorch.

    python -m experiments.benchmarks.throughput [--seconds=2] [--repeats=3] \
        [--sizes=2:256,43:512] [--batches=256,4096] [--fused=50] [--out=DIR]

Same model (4 hidden SiLU layers of `width`, 17 Fourier time features, see peers.py),
same data (2-D checkerboard; 43-D standard Gaussian), same optimiser (Adam 1e-3), same
batch, same process. Every trainer draws its batches on its device from a 50k-row
training set. lfm-jax: "per-step" = one jitted step per Python call (async dispatch),
"fused" = K steps per call (lax.scan); our step also updates an EMA of the weights,
the peers' plain loops do not. Torch runs on CUDA if available, else on the CPU, timed
both with its default thread count and with 1 thread (--torch_threads): on a shared,
loaded 2-core machine torch's OpenMP threads can slow down many-fold, so each peer is
credited with its faster setting. Implementations are timed in turn, `repeats` times,
and the median is reported, so a background load hits every side alike.
Writes throughput.json and throughput.md in --out.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
import torch
from absl import app, flags

from experiments.benchmarks import ours, peers
from lfm_jax import data as data_lib

flags.DEFINE_float("seconds", 2.0, "Timing duration per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per implementation (median reported).")
flags.DEFINE_string("sizes", "2:256,43:512", "dim:width list (depth 4).")
flags.DEFINE_string("batches", "256,4096", "Batch sizes.")
flags.DEFINE_integer("fused", 50, "Steps fused per call for lfm-jax (lax.scan).")
flags.DEFINE_string("peers", "torchcfm,flow_matching,rectified_flow", "Peers to run.")
flags.DEFINE_string("torch_threads", "default,1",
                    "torch CPU thread counts to time ('default' = torch's own choice); each "
                    "peer's table entry is its best over these.")
flags.DEFINE_string("out", "benchmark_results", "Output directory.")
FLAGS = flags.FLAGS

N_TRAIN = 50_000


def make_data(dim: int) -> np.ndarray:
    key = jax.random.PRNGKey(0)
    if dim == 2:
        return np.asarray(data_lib.sample_checkerboard(key, N_TRAIN))
    return np.asarray(jax.random.normal(key, (N_TRAIN, dim)), np.float32)


def time_trainer(trainer, unit: int, seconds: float) -> float:
    """Steps per second of trainer.step(unit) over about `seconds`."""
    t0 = time.perf_counter()
    trainer.step(unit)
    trainer.sync()
    one = max(time.perf_counter() - t0, 1e-6)
    calls = max(3, int(seconds / one))
    t0 = time.perf_counter()
    for _ in range(calls):
        trainer.step(unit)
    trainer.sync()
    return calls * unit / (time.perf_counter() - t0)


def bench_config(dim, width, batch, fused, seconds, repeats, peer_factories, device, mesh,
                 thread_counts):
    data = make_data(dim)
    hidden = (width,) * 4
    trainers = {
        "ours_fused": (ours.JaxTrainer(dim, hidden, data, batch, steps_per_call=fused,
                                       mesh=mesh), fused),
        "ours_per_step": (ours.JaxTrainer(dim, hidden, data, batch, steps_per_call=1,
                                          mesh=mesh), 1),
    }
    threads = {}
    for name, factory in peer_factories.items():
        for n in thread_counts:
            key = f"{name}@{n}threads"
            trainers[key] = (peers.TorchTrainer(factory, dim, hidden, data, batch,
                                                device=device), 1)
            threads[key] = n
    default_threads = torch.get_num_threads()

    def run(name, fn):
        torch.set_num_threads(threads.get(name, default_threads))
        try:
            return fn()
        finally:
            torch.set_num_threads(default_threads)

    # Warm-up: compile (JAX), allocator / kernels (torch).
    def warm_up(tr, unit):
        for _ in range(3):
            tr.step(unit)
        tr.sync()

    for name, (tr, unit) in trainers.items():
        run(name, lambda: warm_up(tr, unit))
    samples = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, (tr, unit) in trainers.items():
            samples[name].append(run(name, lambda: time_trainer(tr, unit, seconds)))
    n_params = sum(p.numel() for p in peers.MLP(dim, hidden).parameters())
    by_variant = {k: statistics.median(v) for k, v in samples.items()}
    rates = {k: v for k, v in by_variant.items() if k.startswith("ours")}
    best_threads = {}
    for name in peer_factories:
        variants = {k: v for k, v in by_variant.items() if k.startswith(name + "@")}
        best = max(variants, key=variants.get)
        rates[name] = variants[best]
        best_threads[name] = threads[best]
    row = {"dim": dim, "width": width, "depth": 4, "batch": batch, "params": n_params,
           "steps_per_s": rates, "peer_best_threads": best_threads,
           "steps_per_s_by_variant": by_variant, "all_steps_per_s": samples,
           "loadavg_after": os.getloadavg()}
    peer_rates = {k: v for k, v in rates.items() if not k.startswith("ours")}
    if peer_rates:
        best = max(peer_rates, key=peer_rates.get)
        row["fastest_peer"] = best
        row["fused_vs_fastest_peer"] = row["steps_per_s"]["ours_fused"] / peer_rates[best]
        row["per_step_vs_fastest_peer"] = (row["steps_per_s"]["ours_per_step"]
                                           / peer_rates[best])
    return row


def markdown(result) -> str:
    names = ["ours_fused", "ours_per_step"] + list(result["peers"])
    head = ("| dim | width | batch | " + " | ".join(names)
            + " | fused / fastest peer | per-step / fastest peer |")
    lines = [head, "|" + "---|" * (len(names) + 5)]
    for r in result["rows"]:
        cells = [f"{r['steps_per_s'][n]:.0f}" for n in names]
        ratio = (f"{r['fused_vs_fastest_peer']:.2f}x ({r['fastest_peer']})"
                 if "fastest_peer" in r else "-")
        ratio2 = f"{r['per_step_vs_fastest_peer']:.2f}x" if "fastest_peer" in r else "-"
        lines.append(f"| {r['dim']} | {r['width']} | {r['batch']} | " + " | ".join(cells)
                     + f" | {ratio} | {ratio2} |")
    return "\n".join(lines)


def main(argv):
    del argv
    from lfm_jax import distributed

    load_start = os.getloadavg()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    wanted = [p for p in FLAGS.peers.split(",") if p]
    factories, missing = peers.available_peers(wanted)
    mesh = distributed.make_mesh()
    default_threads = torch.get_num_threads()
    thread_counts = sorted({default_threads if t == "default" else int(t)
                            for t in FLAGS.torch_threads.split(",") if t}, reverse=True)
    if device != "cpu":
        thread_counts = [default_threads]
    rows = []
    for spec in FLAGS.sizes.split(","):
        dim, width = (int(v) for v in spec.split(":"))
        for batch in (int(b) for b in FLAGS.batches.split(",")):
            row = bench_config(dim, width, batch, FLAGS.fused, FLAGS.seconds, FLAGS.repeats,
                               factories, device, mesh, thread_counts)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("dim", "width", "batch", "steps_per_s")}),
                  flush=True)
    result = {"benchmark": "throughput", "torch_device": device, **ours.device_info(),
              **peers.versions(), "fused": FLAGS.fused, "seconds": FLAGS.seconds,
              "repeats": FLAGS.repeats, "torch_thread_counts": thread_counts,
              "loadavg_start": load_start, "peers": list(factories), "peers_missing": missing,
              "rows": rows}
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(os.path.join(FLAGS.out, "throughput.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
