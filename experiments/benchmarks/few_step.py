"""Few-step generation on the checkerboard: our flow-map objectives vs LsdFlow and MeanFlow.

    python -m experiments.benchmarks.few_step [--seconds=60] [--seeds=0] \
        [--objectives=lsd,...] [--out=DIR]

Every model is a two-time MLP (4x256 SiLU, 17 Fourier features per time, see peers.py),
trained from scratch with Adam 1e-3 (constant), batch 256, for the same wall-clock time
(clock includes our jit compilation), on the same 50k checkerboard points. Sampling with
K = 1, 2, 4 steps from N(0, I); 2000 samples scored against 2000 held-out points with
energy distance and sliced W2 (`lfm_jax.metrics`, same keys for all).

- ours: `lfm_jax.distill.make_loss(name, flow_map)` for the self-distillation
  objectives (lsd, esd_meanflow, psd; 75% of each batch on the diagonal s = t) and direct flow
  map matching, X_{s,t}(x) = x + (t - s) v_{s,t}(x); sampled with `flow_map.sample`.
- LsdFlow (rectified-flow-pytorch): its forward loss (75% diagonal, as ours), sampled
  with its own `sample(steps=K)` (the same x + (t - s) v grid).
- MeanFlow (rectified-flow-pytorch): its forward loss with the library defaults
  (adaptive weighting, logit-normal times, 50% plain FM). 1 step: its own `sample`.
  K > 1: the library's `slow_sample` takes Euler steps with the instantaneous velocity
  (interval 0); we report both it ("meanflow_lib") and mean-velocity steps
  z <- z - h u(z, t, h) ("meanflow"), which is what the MeanFlow paper does.
Ours are sampled with raw weights, as the peers, unless --use_ema.
Writes few_step.json and few_step.md in --out.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags

from experiments.benchmarks import ours, peers
from lfm_jax import data as data_lib
from lfm_jax import distill, metrics
from lfm_jax import flow_map as flow_map_lib

flags.DEFINE_float("seconds", 60.0, "Training time per model (s).")
flags.DEFINE_string("seeds", "0", "Seeds.")
flags.DEFINE_string("steps", "1,2,4", "Sampling steps K.")
flags.DEFINE_string("objectives", "lsd,esd_meanflow,psd,fmm",
                    "Our flow-map objectives (keys of lfm_jax.losses.OBJECTIVES).")
flags.DEFINE_string("peers", "lsd_flow,mean_flow", "Peers.")
flags.DEFINE_integer("batch", 256, "Batch size.")
flags.DEFINE_integer("width", 256, "Hidden width (4 layers).")
flags.DEFINE_integer("fused", 50, "Steps fused per call (ours).")
flags.DEFINE_integer("n_samples", 2000, "Samples scored per K.")
flags.DEFINE_bool("use_ema", False, "Sample our flow maps with their EMA weights (warmed-up "
                  "decay 0.999) instead of the raw ones (the peers use raw weights).")
flags.DEFINE_string("torch_threads", "1", "torch CPU threads ('default' or an integer).")
flags.DEFINE_string("out", "benchmark_results", "Output directory.")
FLAGS = flags.FLAGS

N_TRAIN = 50_000


def train_for(trainer, unit, seconds):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        trainer.step(unit)
        trainer.sync()
    return time.perf_counter() - t0


def score(samples, test, key):
    x = jnp.asarray(np.asarray(samples, np.float32))
    y = jnp.asarray(test[: x.shape[0]])
    if not bool(jnp.all(jnp.isfinite(x))):
        return {"energy_distance": float("nan"), "sliced_w2": float("nan")}
    return {"energy_distance": float(metrics.energy_distance(x, y)),
            "sliced_w2": float(metrics.sliced_wasserstein(key, x, y))}


def run_ours(name, seed, data, test, ks):
    fmap = flow_map_lib.make_flow_map((2,), hidden=(FLAGS.width,) * 4)
    loss = distill.make_loss(name, fmap)
    tr = ours.JaxTrainer(2, None, data, FLAGS.batch, steps_per_call=FLAGS.fused, seed=seed,
                         loss=lambda p, k, b: loss(p, k, b), init=fmap.init)
    elapsed = train_for(tr, FLAGS.fused, FLAGS.seconds)
    params = tr.params(ema=FLAGS.use_ema)
    z = jax.random.normal(jax.random.PRNGKey(1000 + seed), (FLAGS.n_samples, 2))
    out = []
    for k in ks:
        x = flow_map_lib.sample(fmap.bind(params), z, flow_map_lib.uniform_grid(k))
        out.append({"impl": f"ours:{name}", "seed": seed, "steps": k, "train_steps": tr.steps,
                    "train_s": elapsed, **score(x, test, jax.random.PRNGKey(7))})
    return out


class _MeanFlowNet(torch.nn.Module):
    """MeanFlow calls model(x, t, delta_t)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, t, delta):
        return self.mlp(x, t, delta)


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_peer(name, seed, data, test, ks):
    rf = peers.import_rectified_flow()
    dev = torch_device()
    torch.manual_seed(seed)
    mlp = peers.MLP(2, (FLAGS.width,) * 4, num_times=2).to(dev)
    if name == "lsd_flow":
        model = rf.LsdFlow(mlp, data_shape=(2,))
    else:
        model = rf.MeanFlow(_MeanFlowNet(mlp), data_shape=(2,))
    model.to(dev)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3)
    x_train = torch.as_tensor(np.asarray(data), dtype=torch.float32, device=dev)
    gen = torch.Generator(device=dev).manual_seed(seed + 12345)

    class T:
        steps = 0

        def step(self, n):
            for _ in range(n):
                idx = torch.randint(0, x_train.shape[0], (FLAGS.batch,), generator=gen,
                                    device=dev)
                loss = model(x_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            self.steps += n

        def sync(self):
            if dev == "cuda":
                torch.cuda.synchronize()

    tr = T()
    elapsed = train_for(tr, 1, FLAGS.seconds)
    torch.manual_seed(1000 + seed)
    z = torch.randn(FLAGS.n_samples, 2).to(dev)
    out = []
    with torch.no_grad():
        for k in ks:
            if name == "lsd_flow":
                variants = {"lsd_flow": model.sample(batch_size=len(z), noise=z, steps=k)}
            else:
                # noise at t = 1, data at t = 0; u(z, t, h) is the mean velocity on [t-h, t]
                x = z.clone()
                h = 1.0 / k
                for i in range(k):
                    t = torch.full((len(z),), 1.0 - i * h, device=dev)
                    x = x - h * mlp(x, t, torch.full_like(t, h))
                variants = {"mean_flow": x,
                            "mean_flow_lib": model.slow_sample(steps=k, noise=z) if k > 1
                            else model.sample(batch_size=len(z), noise=z)}
            for impl, x in variants.items():
                out.append({"impl": impl, "seed": seed, "steps": k, "train_steps": tr.steps,
                            "train_s": elapsed,
                            **score(x.cpu().numpy(), test, jax.random.PRNGKey(7))})
    return out


def summarize(rows):
    table = {}
    for r in rows:
        cell = table.setdefault(r["impl"], {}).setdefault(r["steps"], {"ed": [], "sw": [],
                                                                      "n": []})
        cell["ed"].append(r["energy_distance"])
        cell["sw"].append(r["sliced_w2"])
        cell["n"].append(r["train_steps"])
    return {impl: {k: {"energy_distance": statistics.mean(c["ed"]),
                       "sliced_w2": statistics.mean(c["sw"]),
                       "train_steps": statistics.mean(c["n"])} for k, c in by_k.items()}
            for impl, by_k in table.items()}


def markdown(result) -> str:
    ks = result["sampling_steps"]
    lines = ["| model | train steps | " + " | ".join(f"K={k} energy dist / SW2" for k in ks)
             + " |", "|---|---|" + "---|" * len(ks)]
    for impl, by_k in result["summary"].items():
        first = next(iter(by_k.values()))
        cells = []
        for k in ks:
            c = by_k.get(k) or by_k.get(str(k))
            cells.append(f"{c['energy_distance']:.4f} / {c['sliced_w2']:.3f}" if c else "-")
        lines.append(f"| {impl} | {first['train_steps']:.0f} | " + " | ".join(cells) + " |")
    ref = result["reference"]
    lines.append(f"\nReference (two independent held-out samples of the data): energy "
                 f"distance {ref['energy_distance']:.4f}, SW2 {ref['sliced_w2']:.3f}. "
                 f"Training time {result['seconds']:g} s per model; seeds {result['seeds']}.")
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.torch_threads != "default" and torch_device() == "cpu":
        torch.set_num_threads(int(FLAGS.torch_threads))
    ks = [int(k) for k in FLAGS.steps.split(",")]
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    n = FLAGS.n_samples
    ds = data_lib.make_dataset("checkerboard", N_TRAIN, n, n, seed=0)
    test = np.asarray(ds.test)
    reference = score(np.asarray(ds.val), test, jax.random.PRNGKey(7))
    rows = []
    for seed in seeds:
        for name in [o for o in FLAGS.objectives.split(",") if o]:
            rows += run_ours(name, seed, ds.train, test, ks)
            print(json.dumps(rows[-1]), flush=True)
        for name in [p for p in FLAGS.peers.split(",") if p]:
            rows += run_peer(name, seed, ds.train, test, ks)
            print(json.dumps(rows[-1]), flush=True)
    result = {"benchmark": "few_step", **ours.device_info(), **peers.versions(),
              "torch_device": torch_device(),
              "seconds": FLAGS.seconds, "seeds": seeds, "sampling_steps": ks,
              "batch": FLAGS.batch, "n_samples": n, "use_ema": FLAGS.use_ema, "reference": reference,
              "summary": summarize(rows), "rows": rows}
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "few_step.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(os.path.join(FLAGS.out, "few_step.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
