"""LFM vs one flow-matching (FM) model under two protocols, side by side (SPEC 3).

    python -m experiments.compare_lfm_fm --workdir W [--datasets checkerboard,rose,...]
        [--seeds 0,1,2] [--iters 1000] [--budgets 15,30] [--protocols paper,equal_compute]

- paper: every LFM block and the FM model are the SAME network (--hidden); LFM trains
  --iters iterations per block, FM the same total (iters * number of blocks). Reported:
  test NLL, excess over the entropy floor, wall time (LFM: training plus the pushes of
  the training set that train the next blocks; FM: training), parameters.
- equal_compute: equal total parameters (FM's width chosen so that its count is closest
  to the sum over LFM's blocks, same depth) and equal training wall-clock B for each
  budget in --budgets. LFM: each block trains for (B - (N - 1) * push) / N seconds,
  push = the measured time of pushing the training set through one block (from the
  paper run of the same data and seed when there is one, else measured once), so that
  training plus the N - 1 needed pushes is about B; FM trains until B. Both stop after
  the first fused call past their time and their lr schedules span the steps expected
  from the measured speed of one call. The full model only (no truncated LFM).

Compilation, evaluation and the per-block validation reports are not timed. Every
number is a mean over --seeds with its standard error (std / sqrt(seeds)); the data
(distribution, splits) are fixed by --data_seed, the seed changes initialisation and
training randomness. Test NLL in nats, exact divergence, adaptive solver; test points
whose solve fails are left out and counted (n_failed in the JSON).

Data are drawn FRESH every step from the known sampler (--fresh_samples, default on):
FM and LFM's block 1; LFM's later blocks train on the fixed training set pushed through
the earlier blocks (--n_train points). Block layouts (OU step sizes, then a free block):
2-D sets --layout quick: 0.15, 0.3, 0.6 + free; official: 0.025 * 1.25^k, k = 0..7 +
free; gmm6: 0.15, 0.225, 0.3375 + free (configs/lfm_gmm6.py); gmm43: 0.35, 0.35 + free
(configs/lfm_gmm43.py). Writes <workdir>/compare.json, compare.md (both tables) and
prints the tables; finished runs are cached in <workdir>/results/ (a rerun skips them).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory.")
flags.DEFINE_list("datasets", ["checkerboard", "rose", "8gaussians", "gmm6", "gmm43"],
                  "Data sets: checkerboard, rose, 8gaussians, gmm6, gmm43.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds.")
flags.DEFINE_list("protocols", ["paper", "equal_compute"], "paper and/or equal_compute.")
flags.DEFINE_integer("iters", 1000, "paper: iterations per LFM block (FM: times blocks).")
flags.DEFINE_list("budgets", ["15", "30"], "equal_compute: training seconds per method.")
flags.DEFINE_list("hidden", ["128", "128", "128"], "Hidden widths of an LFM block (and "
                  "of FM in the paper protocol).")
flags.DEFINE_enum("layout", "quick", ["quick", "official"], "Block layout of 2-D sets.")
flags.DEFINE_integer("batch_size", 256, "Batch size.")
flags.DEFINE_float("lr", 1e-3, "Peak lr (cosine schedule, 100 warm-up steps).")
flags.DEFINE_integer("steps_per_call", 50, "Steps fused per compiled call.")
flags.DEFINE_integer("n_train", 20_000, "Training set (LFM pushes it for blocks >= 2).")
flags.DEFINE_integer("nll_examples", 1000, "Test points of every NLL.")
flags.DEFINE_integer("data_seed", 0, "Seed of the data distribution and splits.")
flags.DEFINE_bool("fresh_samples", True, "Fresh data every step (config.data.fresh_samples).")
flags.DEFINE_bool("keep_best", False, "Keep the params of the best validation loss.")
flags.DEFINE_float("rtol", 1e-4, "rtol = atol of the pushes and of the test NLL.")
flags.mark_flags_as_required(["workdir"])

# name -> (config.data fields, OU step sizes or None for the 2-D --layout)
DATASETS = {
    "checkerboard": ({"name": "checkerboard"}, None),
    "rose": ({"name": "rose"}, None),
    "8gaussians": ({"name": "eight_gaussians"}, None),
    "gmm6": ({"name": "gmm", "dim": 6, "n_components": 8}, (0.15, 0.225, 0.3375)),
    "gmm43": ({"name": "gmm", "dim": 43, "n_components": 10}, (0.35, 0.35)),
}
LAYOUTS_2D = {"quick": (0.15, 0.3, 0.6),
              "official": tuple(0.025 * 1.25 ** k for k in range(8))}


def make_config(name, seed):
    """The study's LFM config for data set `name` (FM reuses its train/eval fields)."""
    from configs import default

    fields, hs = DATASETS[name]
    c = default.get_config()
    c.method = "lfm"
    c.seed = int(seed)
    for k, v in fields.items():
        setattr(c.data, k, v)
    c.data.n_train = FLAGS.n_train
    c.data.n_val = c.data.n_test = max(FLAGS.nll_examples, 1000)
    c.data.fresh_samples = FLAGS.fresh_samples
    c.model.hidden = tuple(int(w) for w in FLAGS.hidden)
    c.lfm.step_sizes = hs if hs is not None else LAYOUTS_2D[FLAGS.layout]
    c.lfm.num_blocks = 0
    c.lfm.free_last_block = True
    c.lfm.steps_per_block = FLAGS.iters
    c.lfm.push_ode.rtol = c.lfm.push_ode.atol = FLAGS.rtol
    c.lfm.n_val = 500
    c.train.batch_size = FLAGS.batch_size
    c.train.steps_per_call = FLAGS.steps_per_call
    c.train.lr = FLAGS.lr
    c.train.ema_decay = 0.99
    c.train.checkpoint_every = 10**9
    c.train.keep_checkpoints = 1
    c.train.keep_best = FLAGS.keep_best
    c.eval.ode.rtol = c.eval.ode.atol = FLAGS.rtol
    c.eval.nll_examples = FLAGS.nll_examples
    return default.locked(c)


def load_dataset(name):
    from lfm_jax.runs import common

    config = make_config(name, FLAGS.data_seed)
    config.unlock()
    config.seed = FLAGS.data_seed
    return common.load_data(config)


# ------------------------------------------------------------------------------ FM

def fm_network(config, dim, hidden):
    from lfm_jax import networks

    m = config.model
    return networks.velocity_mlp((dim,), hidden=tuple(hidden), activation=m.activation,
                                 num_frequencies=m.num_frequencies,
                                 max_frequency=m.max_frequency)


def fm_width(config, dim, n_params_target):
    """Width w (depth of config.model.hidden) whose FM parameter count is closest to
    n_params_target; returns (w, count)."""
    import jax

    from lfm_jax import networks

    depth = len(config.model.hidden)

    def count(w):
        net = fm_network(config, dim, (w,) * depth)
        return networks.count_params(jax.eval_shape(net.init, jax.random.PRNGKey(0)))

    lo, hi = 4, 8192
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= n_params_target else (lo, mid)
    w = min((lo, hi), key=lambda v: abs(count(v) - n_params_target))
    return w, count(w)


def train_fm(config, dataset, hidden, mesh, *, steps=None, budget_s=None):
    """Train one FM model (LFM's interpolant and time law, noise at t = 0) for `steps`
    steps, or until `budget_s` seconds of training (its schedule then spans the steps
    expected from the measured speed). Returns (net, params for evaluation, info)."""
    import jax
    import numpy as np

    from experiments import timing
    from lfm_jax import distributed, flow_matching, interpolants, train
    from lfm_jax.runs import common, data_feed

    t, spc = config.train, config.train.steps_per_call
    net = fm_network(config, dataset.dim, hidden)
    loss_fn = flow_matching.make_loss(net.apply, interpolants.get(config.lfm.interpolant),
                                      common.make_time_sampler(config.lfm))
    sample_batch = data_feed.fm_sample_batch(config, dataset)
    data = distributed.replicate(np.asarray(dataset.train), mesh)
    init_key, state_key = jax.random.split(jax.random.PRNGKey(config.seed))

    def make(total):
        opt = common.optimizer(config, total_steps=total)
        step_fn = train.make_train_step(loss_fn, opt, sample_batch=sample_batch,
                                        steps_per_call=spc, ema_decay=t.ema_decay,
                                        mesh=mesh)
        return opt, step_fn

    def fresh(opt):
        return train.create_train_state(state_key, net.init(init_key), opt, mesh=mesh)

    sec_per_step = None
    if steps is None:
        opt, step_fn = make(10**6)
        sec_per_step = timing.seconds_per_step(step_fn, fresh(opt), data, spc,
                                               seconds=1.0)
        steps = max(spc, -(-int(budget_s / sec_per_step) // spc) * spc)
    opt, step_fn = make(steps)
    jax.block_until_ready(step_fn(fresh(opt), data)[1])  # compile outside the timing
    state = fresh(opt)
    keeper = data_feed.make_keep_best(config, loss_fn, np.asarray(dataset.val[:2000]))
    t0 = time.perf_counter()
    if budget_s is None:
        state, _ = train.fit(state, step_fn, data, steps, steps_per_call=spc,
                             keep_best=keeper)
    else:
        while int(state.step) < steps and time.perf_counter() - t0 < budget_s:
            state, _ = train.fit(state, step_fn, data, int(state.step) + spc,
                                 steps_per_call=spc, keep_best=keeper)
    train_s = time.perf_counter() - t0
    steps_run = int(state.step)
    state = keeper.apply(state) if keeper is not None else state
    params = state.ema_params if config.eval.use_ema else state.params
    return net, params, {"steps": steps_run, "scheduled_steps": steps, "train_s": train_s,
                         "num_params": int(net.num_params(params)), "hidden": list(hidden),
                         "sec_per_step": sec_per_step}


def fm_test_log_prob(config, net, params, dataset, mesh):
    import jax
    import numpy as np

    from lfm_jax.runs import common
    from lfm_jax.runs import flow_matching as fm_run

    test = np.asarray(dataset.test[: config.eval.nll_examples])
    return fm_run.log_prob_rows(net, params, test, jax.random.PRNGKey(0),
                                options=common.eval_ode_options(config),
                                chunk_size=config.eval.chunk_size, mesh=mesh)


# ----------------------------------------------------------------------------- LFM

def lfm_trainer(config, dataset, mesh):
    """The LFM trainer with its steps and push compiled (outside any timing)."""
    import jax
    import numpy as np

    from lfm_jax import distributed, train
    from lfm_jax.runs import data_feed, lfm_parts

    trainer = lfm_parts.make_trainer(config, (dataset.dim,), mesh,
                                      data_feed.fresh_sampler(config, dataset))
    data = distributed.replicate({"x": np.asarray(dataset.train), "h": np.float32(0.1)},
                                 mesh)
    p0 = trainer.network.init(jax.random.PRNGKey(0))
    for fn in (trainer.step_fn, trainer.first_step_fn):
        if fn is not None:
            state = train.create_train_state(jax.random.PRNGKey(0), p0, trainer.optimizer,
                                             mesh=mesh)
            jax.block_until_ready(fn(state, data)[1])
    n_chunk = min(len(dataset.train), config.lfm.chunk_size * len(jax.devices()))
    trainer.model.block_map(p0, np.asarray(dataset.train[:n_chunk]), mesh=mesh)
    return trainer


def measure_lfm(config, dataset, mesh):
    """(seconds per LFM step, seconds to push the training set through one block),
    measured with an untrained block."""
    import jax
    import numpy as np

    from experiments import timing
    from lfm_jax import distributed, train
    from lfm_jax.runs import lfm_parts

    trainer = lfm_parts.make_trainer(config, (dataset.dim,), mesh)
    p0 = trainer.network.init(jax.random.PRNGKey(0))
    state = train.create_train_state(jax.random.PRNGKey(0), p0, trainer.optimizer,
                                     mesh=mesh)
    data = distributed.replicate({"x": np.asarray(dataset.train), "h": np.float32(0.1)},
                                 mesh)
    tps = timing.seconds_per_step(trainer.step_fn, state, data,
                                  config.train.steps_per_call)
    n_chunk = min(len(dataset.train), config.lfm.chunk_size * len(jax.devices()))
    trainer.model.block_map(p0, np.asarray(dataset.train[:n_chunk]), mesh=mesh)
    t0 = time.perf_counter()
    trainer.model.block_map(p0, np.asarray(dataset.train), mesh=mesh)
    return tps, time.perf_counter() - t0


def train_lfm(config, dataset, mesh, workdir, *, block_budget_s=None):
    """Train all blocks from scratch in workdir (`lfm_blocks.train_blocks`). Returns
    (model, params_list, info); info's train_s = block training + the pushes of
    blocks 1..N-1 (the last block's push trains nothing and is not counted)."""
    from lfm_jax.runs import lfm_blocks

    shutil.rmtree(workdir, ignore_errors=True)
    trainer = lfm_trainer(config, dataset, mesh)
    model, params_list, reports = lfm_blocks.train_blocks(
        config, dataset, workdir, mesh=mesh, trainer=trainer, verbose=False,
        block_train_budget_s=block_budget_s)
    blocks = reports[1:]
    train_s = [r["train_time_s"] for r in blocks]
    push_s = [r["push_time_s"] for r in blocks]
    return model, params_list, {
        "train_s": sum(train_s) + sum(push_s[:-1]), "block_train_s": train_s,
        "push_s": push_s, "steps": sum(r["steps_trained"] for r in blocks),
        "steps_per_block": [r["steps_trained"] for r in blocks],
        "blocks": len(blocks), "hidden": list(config.model.hidden),
        "num_params": int(sum(trainer.network.num_params(p) for p in params_list)),
        "block_budget_s": block_budget_s}


def lfm_test_log_prob(config, model, params_list, dataset, mesh):
    import numpy as np

    from lfm_jax.runs import lfm as lfm_run

    test = np.asarray(dataset.test[: config.eval.nll_examples])
    return lfm_run.eval_model(config, model).log_prob(params_list, test, mesh=mesh)


# ---------------------------------------------------------------------------- runs

def scores(log_q, floor):
    """Mean and median test NLL over the finite points, failures, excess over floor."""
    import numpy as np

    from lfm_jax.runs import common

    nll, _, n_failed = common.finite_nll(log_q)
    common.warn_failed(n_failed, len(log_q), "test points")
    finite = -np.asarray(log_q, np.float64)
    finite = finite[np.isfinite(finite)]
    med = float(np.median(finite)) if len(finite) else float("nan")
    out = {"test_nll": nll, "test_nll_median": med, "n_failed": n_failed}
    if floor is not None:
        out["excess_nll"] = nll - floor
    return out


def run_paper(name, seed, dataset, floor, mesh, workdir):
    config = make_config(name, seed)
    model, params_list, lfm_info = train_lfm(config, dataset, mesh,
                                             os.path.join(workdir, "lfm"))
    lfm_info.update(scores(lfm_test_log_prob(config, model, params_list, dataset, mesh),
                           floor))
    net, params, fm_info = train_fm(config, dataset, config.model.hidden, mesh,
                                    steps=FLAGS.iters * lfm_info["blocks"])
    fm_info.update(scores(fm_test_log_prob(config, net, params, dataset, mesh), floor))
    return {"lfm": lfm_info, "fm": fm_info}


def run_equal_compute(name, seed, budget, dataset, floor, mesh, workdir, paper=None):
    config = make_config(name, seed)
    config.unlock()
    n_blocks = len(config.lfm.step_sizes) + 1
    if paper is not None:  # measured on trained blocks of the same data and seed
        p = paper["lfm"]
        tps = sum(p["block_train_s"]) / p["steps"]
        push = sum(p["push_s"][:-1]) / max(n_blocks - 1, 1)
    else:
        tps, push = measure_lfm(config, dataset, mesh)
    block_budget = max((budget - (n_blocks - 1) * push) / n_blocks, 0.05 * budget / n_blocks)
    spc = config.train.steps_per_call
    config.lfm.steps_per_block = max(spc, -(-int(block_budget / tps) // spc) * spc)
    model, params_list, lfm_info = train_lfm(config, dataset, mesh,
                                             os.path.join(workdir, "lfm"),
                                             block_budget_s=block_budget)
    lfm_info.update(scores(lfm_test_log_prob(config, model, params_list, dataset, mesh),
                           floor), sec_per_step=tps, estimated_push_s=push)
    width, _ = fm_width(config, dataset.dim, lfm_info["num_params"])
    net, params, fm_info = train_fm(config, dataset, (width,) * len(config.model.hidden),
                                    mesh, budget_s=budget)
    fm_info.update(scores(fm_test_log_prob(config, net, params, dataset, mesh), floor))
    return {"lfm": lfm_info, "fm": fm_info}


def cached(path, fn):
    """fn()'s result, cached as JSON at path (a rerun of the study skips it)."""
    from lfm_jax import logging as log_lib

    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    result = log_lib.to_python(fn())
    log_lib.write_json(path, result)
    return result


# -------------------------------------------------------------------------- tables

def mean_se(values):
    """(mean, standard error) of the finite values; se nan with fewer than two."""
    import numpy as np

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if not len(v):
        return float("nan"), float("nan")
    se = float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
    return float(v.mean()), se


def fmt(values, digits=3):
    m, se = mean_se(values)
    if not math.isfinite(m):
        return "-"
    text = f"{m:.{digits}g}" if abs(m) >= 1e4 and digits else f"{m:.{digits}f}"
    return text if not math.isfinite(se) else f"{text} ± {se:.{digits}f}"


def summarise(runs, key):
    """Per-method lists over seeds of `key` from runs = [{"lfm": ..., "fm": ...}]."""
    return {m: [r[m].get(key) for r in runs] for m in ("lfm", "fm")}


def method_rows(prefix, runs, floor):
    rows = []
    for m, label in (("lfm", "LFM"), ("fm", "FM")):
        rs = [r[m] for r in runs]
        hidden = "x".join(map(str, rs[0]["hidden"])) if rs else "-"
        if m == "lfm" and rs:
            hidden = f"{rs[0]['blocks']} x [{hidden}]"
        rows.append(f"| {prefix} | {label} | {hidden} | {rs[0]['num_params']} | "
                    f"{fmt([r['steps'] for r in rs], 0)} | {fmt([r['train_s'] for r in rs], 1)} | "
                    f"{fmt([r['test_nll'] for r in rs])} | "
                    f"{fmt([r.get('excess_nll') for r in rs]) if floor is not None else '-'} | "
                    f"{sum(r['n_failed'] for r in rs)} |")
    return rows


def tables(results, n_seeds):
    head = ("| method | network | params | steps | train s | test NLL | excess NLL | "
            "failed |")
    sep = "|---|---|---|---|---|---|---|---|---|"
    paper, equal = [], []
    for name, res in results.items():
        floor = res["nll_floor"]
        if res.get("paper"):
            paper += method_rows(name, res["paper"], floor)
        for b, runs in res.get("equal_compute", {}).items():
            equal += method_rows(f"{name} | {b}", runs, floor)
    out = [f"NLL in nats on {FLAGS.nll_examples} test points (mean over {n_seeds} seeds ± "
           f"standard error); excess = NLL - entropy of the data (floor); failed = test "
           f"points whose ODE solve failed, summed over seeds (left out). train s: LFM = "
           f"block training + pushes of blocks 1..N-1; compilation and evaluation "
           f"excluded. Steps: LFM summed over blocks."]
    if paper:
        out += ["", f"### Paper protocol: same network per LFM block and for FM, "
                f"{FLAGS.iters} iterations per LFM block, FM the same total", "",
                "| data " + head, sep] + paper
    if equal:
        out += ["", "### Equal compute: equal total parameters and equal training "
                "wall-clock (s), full model", "", "| data | budget s " + head,
                sep + "---|"] + equal
    floors = ", ".join(f"{n} {r['nll_floor']:.4f}" for n, r in results.items()
                       if r["nll_floor"] is not None)
    out += ["", f"Entropy floors (nats): {floors}."]
    return "\n".join(out)


def main(argv):
    del argv
    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from lfm_jax import compilation_cache, metrics
    from lfm_jax import logging as log_lib
    from lfm_jax.runs import common

    for p in FLAGS.protocols:
        if p not in ("paper", "equal_compute"):
            raise app.UsageError(f"unknown protocol {p!r}: use paper, equal_compute")
    for name in FLAGS.datasets:
        if name not in DATASETS:
            raise app.UsageError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    workdir = common.check_workdir(FLAGS.workdir)
    # Every run recompiles the same pushes and likelihood solves: cache them on disk.
    compilation_cache.enable(os.path.join(workdir, "jax_cache"))
    results = {}
    for name in FLAGS.datasets:
        dataset = load_dataset(name)
        mesh = common.make_mesh(make_config(name, 0))
        floor = metrics.entropy_floor(dataset)
        res = results[name] = {"nll_floor": floor, "paper": [], "equal_compute": {}}
        for seed in FLAGS.seeds:
            run_dir = os.path.join(workdir, "runs", name, f"seed{seed}")
            rdir = os.path.join(workdir, "results")
            paper = None
            if "paper" in FLAGS.protocols:
                t0 = time.perf_counter()
                paper = cached(os.path.join(rdir, f"{name}_s{seed}_paper.json"),
                               lambda: run_paper(name, seed, dataset, floor, mesh,
                                                 os.path.join(run_dir, "paper")))
                res["paper"].append(paper)
                print(f"{name} seed {seed} paper: LFM {paper['lfm']['test_nll']:.4f} "
                      f"({paper['lfm']['train_s']:.1f}s) FM {paper['fm']['test_nll']:.4f} "
                      f"({paper['fm']['train_s']:.1f}s) [{time.perf_counter() - t0:.0f}s]",
                      flush=True)
            if "equal_compute" in FLAGS.protocols:
                for b in FLAGS.budgets:
                    t0 = time.perf_counter()
                    r = cached(os.path.join(rdir, f"{name}_s{seed}_equal{b}.json"),
                               lambda: run_equal_compute(name, seed, float(b), dataset,
                                                         floor, mesh,
                                                         os.path.join(run_dir, f"eq{b}"),
                                                         paper))
                    res["equal_compute"].setdefault(b, []).append(r)
                    print(f"{name} seed {seed} equal {b}s: LFM {r['lfm']['test_nll']:.4f} "
                          f"({r['lfm']['train_s']:.1f}s) FM {r['fm']['test_nll']:.4f} "
                          f"({r['fm']['train_s']:.1f}s) [{time.perf_counter() - t0:.0f}s]",
                          flush=True)
        log_lib.write_json(os.path.join(workdir, "compare.json"),
                           {"flags": {k: FLAGS[k].value for k in (
                               "datasets", "seeds", "protocols", "iters", "budgets",
                               "hidden", "layout", "batch_size", "lr", "n_train",
                               "nll_examples", "fresh_samples", "keep_best", "rtol")},
                            "results": results})
    table = tables(results, len(FLAGS.seeds))
    with open(os.path.join(workdir, "compare.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
