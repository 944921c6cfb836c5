"""Checkerboard test NLL against wall-clock training time: lfm-jax vs the torch peers.

    python -m experiments.benchmarks.time_to_quality [--budgets=15,30,60,120] \
        [--seeds=0,1,2] [--batch=256] [--n_eval=2000] [--out=DIR]

Every implementation trains the same MLP (4x256 SiLU, 17 Fourier time features) with
plain flow matching (linear path, t ~ U[0, 1], independent coupling), Adam 1e-3
(constant), batch 256, on the same 50k-point checkerboard training set, in the same
process, one after another. The clock starts before the first step, so it includes
lfm-jax's jit compilation; a snapshot of the weights is taken the first time the
training clock passes each budget (evaluation time is not counted).

One evaluator for every model: torch weights are ported into our flax params (same
architecture, peers.torch_to_flax) and all NLLs come from `flow_matching.log_prob`
(diffrax Tsit5, rtol = atol = 1e-5, exact divergence = trace of the 2x2 Jacobian) on
the same held-out points. Peers' own likelihood code (flow_matching's
ODESolver.compute_likelihood, torchdiffeq) would give the same number up to solver
tolerance; one evaluator removes that variable. lfm-jax is reported with its raw
weights (as the peers) and with the EMA (decay 0.999) its trainer keeps for free.

Floor: the checkerboard with the default /0.45 scaling is uniform on 8 squares of side
1/0.45, density 0.45^2 / 8, so its entropy (the lowest achievable NLL) is
log(8 / 0.45^2) = 3.676 nats; checked here against -mean log p(test).
Writes time_to_quality.json and time_to_quality.md in --out.
"""

from __future__ import annotations

import json
import math
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
from lfm_jax import flow_matching, networks, ode

flags.DEFINE_string("budgets", "15,30,60,120", "Training-time budgets in seconds.")
flags.DEFINE_string("seeds", "0,1,2", "Seeds (weights, noise, batches).")
flags.DEFINE_integer("batch", 256, "Batch size (all implementations).")
flags.DEFINE_integer("width", 256, "Hidden width (4 hidden layers).")
flags.DEFINE_integer("fused", 50, "Steps fused per jitted call (lfm-jax).")
flags.DEFINE_integer("n_eval", 2000, "Held-out points for the NLL.")
flags.DEFINE_string("peers", "torchcfm,flow_matching,rectified_flow", "Peers to run.")
flags.DEFINE_string("torch_threads", "auto",
                    "torch CPU threads: an integer, 'default', or 'auto' (the faster of "
                    "default and 1, timed briefly before each peer trains).")
flags.DEFINE_float("target", 3.75, "NLL target (nats) for the time-to-target column.")
flags.DEFINE_string("out", "benchmark_results", "Output directory.")
FLAGS = flags.FLAGS

N_TRAIN = 50_000


def verify_floor(test: np.ndarray) -> dict:
    closed = data_lib.checkerboard_entropy()
    by_hand = math.log(8.0 / 0.45**2)
    mc = -float(jnp.mean(data_lib.log_density_checkerboard(jnp.asarray(test))))
    assert abs(closed - by_hand) < 1e-9 and abs(mc - closed) < 1e-5, (closed, by_hand, mc)
    return {"closed_form": closed, "log(8/0.45^2)": by_hand, "minus_mean_log_p_test": mc}


def make_evaluator(width: int, test: np.ndarray):
    net = networks.velocity_mlp((2,), hidden=(width,) * 4)
    options = ode.Options("tsit5", rtol=1e-5, atol=1e-5)
    logp = jax.jit(lambda p, x: flow_matching.log_prob(net.apply, p, x, options=options,
                                                       method="exact"))
    x = jnp.asarray(test)

    def nll(params):
        t0 = time.perf_counter()
        lp = np.asarray(logp(params, x))
        nll.seconds += time.perf_counter() - t0
        return float(-lp.mean()), float(lp.std() / math.sqrt(len(lp)))

    nll.seconds = 0.0

    return nll


def train_with_snapshots(trainer, unit: int, budgets, snapshot):
    """Train until the last budget; snapshot(trainer) when the clock first passes each."""
    out = []
    pending = sorted(budgets)
    t0 = time.perf_counter()
    while pending:
        trainer.step(unit)
        trainer.sync()
        elapsed = time.perf_counter() - t0
        while pending and elapsed >= pending[0]:
            out.append({"budget_s": pending.pop(0), "elapsed_s": elapsed,
                        "steps": trainer.steps, **snapshot(trainer)})
    return out


def torch_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_threads(factory, data, batch, width, setting: str) -> int:
    default = torch.get_num_threads()
    if setting == "default" or torch_device() != "cpu":
        return default
    if setting != "auto":
        return int(setting)
    rates = {}
    for n in sorted({default, 1}):
        torch.set_num_threads(n)
        tr = peers.TorchTrainer(factory, 2, (width,) * 4, data, batch)
        tr.step(3)
        t0 = time.perf_counter()
        tr.step(20)
        rates[n] = 20 / (time.perf_counter() - t0)
    torch.set_num_threads(default)
    return max(rates, key=rates.get)


def run_one(name, seed, data, budgets, nll):
    w, batch = FLAGS.width, FLAGS.batch
    if name == "ours":
        tr = ours.JaxTrainer(2, (w,) * 4, data, batch, steps_per_call=FLAGS.fused, seed=seed)
        snaps = train_with_snapshots(tr, FLAGS.fused, budgets, lambda t: {
            "params": t.params(), "ema_params": t.params(ema=True)})
        rows = []
        for s in snaps:
            p, e = s.pop("params"), s.pop("ema_params")
            m, se = nll(p)
            me, see = nll(e)
            rows.append({**s, "impl": "ours", "seed": seed, "nll": m, "nll_stderr": se})
            rows.append({**s, "impl": "ours_ema", "seed": seed, "nll": me, "nll_stderr": see})
        return rows
    factory = peers.FM_PEERS[name]
    default = torch.get_num_threads()
    threads = pick_threads(factory, data, batch, w, FLAGS.torch_threads)
    torch.set_num_threads(threads)
    try:
        tr = peers.TorchTrainer(factory, 2, (w,) * 4, data, batch, seed=seed,
                                device=torch_device())
        snaps = train_with_snapshots(tr, 1, budgets,
                                     lambda t: {"params": peers.torch_to_flax(t.mlp)})
    finally:
        torch.set_num_threads(default)
    rows = []
    for s in snaps:
        m, se = nll(s.pop("params"))
        rows.append({**s, "impl": name, "seed": seed, "nll": m, "nll_stderr": se,
                     "torch_threads": threads})
    return rows


def summarize(rows, budgets, target):
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    table = {}
    for impl in impls:
        table[impl] = {}
        for b in budgets:
            vals = [r["nll"] for r in rows if r["impl"] == impl and r["budget_s"] == b]
            steps = [r["steps"] for r in rows if r["impl"] == impl and r["budget_s"] == b]
            if vals:
                table[impl][b] = {"mean": statistics.mean(vals),
                                  "std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
                                  "steps": statistics.mean(steps), "n": len(vals)}
        hit = [b for b in budgets if b in table[impl] and table[impl][b]["mean"] <= target]
        table[impl]["first_budget_at_target"] = hit[0] if hit else None
    return table


def markdown(result) -> str:
    budgets = result["budgets"]
    lines = ["| implementation | " + " | ".join(f"{b:g} s" for b in budgets)
             + f" | first budget with mean NLL <= {result['target']} |",
             "|---|" + "---|" * (len(budgets) + 1)]
    for impl, row in result["summary"].items():
        cells = []
        for b in budgets:
            c = row.get(b) or row.get(str(b))
            cells.append(f"{c['mean']:.3f} ± {c['std']:.3f} ({c['steps']:.0f} steps)"
                         if c else "-")
        hit = row["first_budget_at_target"]
        lines.append(f"| {impl} | " + " | ".join(cells) + f" | {f'{hit:g} s' if hit else 'not reached'} |")
    lines.append(f"\nFloor (entropy of the data): {result['floor']['closed_form']:.4f} nats. "
                 f"Mean ± std over seeds {result['seeds']}; test NLL on {result['n_eval']} "
                 "held-out points.")
    return "\n".join(lines)


def main(argv):
    del argv
    budgets = [float(b) for b in FLAGS.budgets.split(",")]
    seeds = [int(s) for s in FLAGS.seeds.split(",")]
    ds = data_lib.make_dataset("checkerboard", N_TRAIN, 1000, max(FLAGS.n_eval, 2), seed=0)
    test = np.asarray(ds.test[: FLAGS.n_eval])
    floor = verify_floor(test)
    nll = make_evaluator(FLAGS.width, test)
    factories, missing = peers.available_peers([p for p in FLAGS.peers.split(",") if p])
    impls = ["ours"] + list(factories)
    rows = []
    for seed in seeds:
        for name in impls:
            new = run_one(name, seed, ds.train, budgets, nll)
            for r in new:
                print(json.dumps(r), flush=True)
            rows += new
    summary = summarize(rows, budgets, FLAGS.target)
    result = {"benchmark": "time_to_quality", **ours.device_info(), **peers.versions(),
              "torch_device": torch_device(),
              "budgets": budgets, "seeds": seeds, "batch": FLAGS.batch,
              "width": FLAGS.width, "n_eval": FLAGS.n_eval, "target": FLAGS.target,
              "floor": floor, "peers_missing": missing, "summary": summary, "rows": rows,
              "eval_seconds": nll.seconds, "loadavg_end": os.getloadavg()}
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "time_to_quality.json"), "w") as f:
        json.dump(result, f, indent=2)
    table = markdown(result)
    with open(os.path.join(FLAGS.out, "time_to_quality.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
