"""Local Flow Matching job: block-by-block training (resumable), evaluation, artefacts.

`train_blocks(config, dataset, workdir)` trains blocks n = 1..N in turn. Block n:
  1. its OU pairs come from x_l ~ q_{n-1}, the training set pushed through the
     trained blocks 1..n-1 (on device, `lfm.make_sample_batch` + `lfm.make_block_loss`);
  2. it trains with `train.make_train_step` / `train.fit` (fused steps, orbax
     checkpoints in blocks/<n>/ckpt, per-step keys fold_in(key_n, step));
  3. its final params (raw and EMA) are saved to blocks/<n>/params.msgpack, then the
     training set and the validation subset are pushed through it (chunks sharded over
     the mesh) and saved, with the cumulative log-determinant of the validation points,
     as .npy files; then blocks/<n>/report.json (train_time_s, push_time_s of the
     training set, val_logdet_time_s).
Every file is written to a temporary name and renamed, so a run killed at any moment
and restarted with the same command restores blocks < n with their pushed data (only
what is missing is recomputed) and resumes inside block n from its latest checkpoint,
ending with the same params as an uninterrupted run.

Failed ODE solves (an adaptive solve exhausting eval.max_steps on a stiff or
non-finite stretch of a long-trained field): the training-set push must be complete,
so a failure there raises `PushFailedError` naming the block and how many points
failed; validation and test evaluation use `on_failure="nan"`, drop the failed points
from the NLL, and report their count (`val_n_failed` per block, `n_failed` and
`n_samples_failed` in metrics.json) with a printed warning (a loud one above
`FAILED_FRACTION_WARN`), so a few bad points do not end a run.

`run(config, workdir)` is the `experiments.train` entry: trains, then writes
metrics.json (test NLL in nats and bits/dim, the NLL floor where known, energy
distance / MMD / sliced W2 of samples against test data, per-block reports),
metrics.jsonl (training losses), samples.png, loss.png, block_nll.png and, where the
data density is known, chi_square.png.
"""

from __future__ import annotations

import json
import math
import os
import time

import flax.serialization
import jax
import numpy as np

from lfm_jax import checkpoint, distributed, interpolants, lfm, metrics, networks, plots
from lfm_jax import logging as log_lib
from lfm_jax import train
from lfm_jax.runs import common


# Above this fraction of failed evaluation points the warning is printed loudly.
FAILED_FRACTION_WARN = 0.01


class PushFailedError(RuntimeError):
    """The ODE solve failed for some training points pushed through a block."""


# ------------------------------------------------------------------------ building

def make_step_sizes(config) -> tuple:
    """OU step sizes (h_1, ..., h_N) of config.lfm (inf marks a free block)."""
    c = config.lfm
    return lfm.step_sizes(c.num_blocks, c=c.step_c, rho=c.step_rho,
                          explicit=tuple(c.step_sizes) or None,
                          free_last_block=c.free_last_block)


def make_model(config, network, example_shape) -> lfm.LocalFlow:
    """The LocalFlow whose maps T_n are used while training (push_* ODE options)."""
    c = config.lfm
    return lfm.LocalFlow(network.apply, make_step_sizes(config), tuple(example_shape),
                         solver=c.push_solver, rtol=c.push_rtol, atol=c.push_atol,
                         num_steps=c.push_num_steps or None, chunk_size=c.chunk_size,
                         max_steps=config.eval.max_steps)


def eval_model(config, model: lfm.LocalFlow) -> lfm.LocalFlow:
    """The same blocks with the config.eval ODE options (test NLL, sampling)."""
    e = config.eval
    return lfm.LocalFlow(model.velocity, model.step_sizes, model.example_shape,
                         solver=e.solver, rtol=e.rtol, atol=e.atol, num_steps=None,
                         chunk_size=e.chunk_size, max_steps=e.max_steps)


# ------------------------------------------------------------------------- files

def _save_npy(path, arr) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        np.save(f, np.asarray(arr))
    os.replace(tmp, path)


def _save_bytes(path, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _save_json(path, obj) -> None:
    _save_bytes(path, json.dumps(log_lib._to_python(obj), indent=2).encode())


def _load_npy(path):
    return np.load(path) if os.path.exists(path) else None


def push_training_data(model, params, x, n: int, *, mesh=None) -> np.ndarray:
    """T_n(x) for the data that trains block n + 1; every point must succeed.

    Solved with on_failure="nan" so that a failure is counted rather than reported as
    diffrax's bare max-steps error; any failed point raises `PushFailedError` (a NaN
    in the pushed data would poison the next block)."""
    x_next = model.block_map(params, x, mesh=mesh, on_failure="nan")
    failed = int(lfm.failed_rows(x_next).sum())
    if failed:
        raise PushFailedError(
            f"block {n}: the ODE solve failed for {failed} of {len(x_next)} training "
            f"points pushed through the block (solver {model.solver}, rtol "
            f"{model.rtol}, atol {model.atol}, max_steps {model.max_steps}); the "
            f"pushed data would contain NaN and poison block {n + 1}. Raise "
            f"eval.max_steps or loosen lfm.push_rtol / lfm.push_atol.")
    return x_next


def finite_nll(log_q) -> tuple:
    """(NLL over the finite points, their stderr, number of failed points).

    log_q (n,) from a solve with on_failure="nan"; NaN/Inf entries are failed solves.
    With no finite point the NLL and stderr are NaN."""
    log_q = np.asarray(log_q, np.float64)
    ok = np.isfinite(log_q)
    n_failed = int(len(log_q) - ok.sum())
    good = log_q[ok]
    nll = float(-np.mean(good)) if len(good) else float("nan")
    se = float(np.std(good, ddof=1) / math.sqrt(len(good))) if len(good) > 1 else float("nan")
    return nll, se, n_failed


def warn_failed(n_failed: int, n_total: int, what: str) -> None:
    """Print a warning naming how many of n_total points' ODE solves failed (loud
    above FAILED_FRACTION_WARN of them); nothing when none failed."""
    if not n_failed:
        return
    frac = n_failed / max(n_total, 1)
    msg = (f"{n_failed} of {n_total} {what} ({100 * frac:.2f}%) failed the ODE solve "
           f"(max_steps reached or non-finite velocity) and are left out")
    if frac > FAILED_FRACTION_WARN:
        bar = "!" * 78
        print(f"{bar}\nWARNING: MORE THAN {100 * FAILED_FRACTION_WARN:g}% FAILED: {msg}; "
              f"the reported numbers are over the remaining points only and may be "
              f"biased.\n{bar}", flush=True)
    else:
        print(f"WARNING: {msg}.", flush=True)


class _BlockFiles:
    """Paths of block n's artefacts under workdir/blocks/<n>."""

    def __init__(self, workdir, n):
        self.dir = os.path.join(workdir, "blocks", str(n))
        os.makedirs(self.dir, exist_ok=True)
        self.ckpt = os.path.join(self.dir, "ckpt")
        self.params = os.path.join(self.dir, "params.msgpack")
        self.train = os.path.join(self.dir, "train_pushed.npy")
        self.val = os.path.join(self.dir, "val_pushed.npy")
        self.val_logdet = os.path.join(self.dir, "val_logdet.npy")
        self.report = os.path.join(self.dir, "report.json")
        self.loss = os.path.join(self.dir, "loss.jsonl")


# ---------------------------------------------------------------------- training

def train_blocks(config, dataset, workdir: str, *, mesh=None, callback=None,
                 verbose: bool = True, block_train_budget_s=None):
    """Train all blocks (resuming where the workdir left off).

    Args:
      config: a full config (sections lfm, train, model, eval).
      dataset: `data.Dataset` (train, val arrays (n, d); optional log_prob).
      workdir: output directory; blocks/<n>/ holds block n's files.
      mesh: device mesh (default from config.train.num_devices).
      callback: optional f(block, step, metrics) after every fused call (e.g. to
        stop a run for tests by raising).
      block_train_budget_s: optional wall-clock limit (seconds) on each block's
        training (not its push): the block stops after the first fused call that ends
        past it, or at steps_per_block (the lr schedule spans steps_per_block). For
        equal-time comparisons; the steps run are in the block's report.
    Returns:
      (model, params_list, reports): the LocalFlow (push options), the model params of
      each block (EMA if config.eval.use_ema), and the per-block report dicts.
    """
    c = config.lfm
    mesh = common.make_mesh(config) if mesh is None else mesh
    example_shape = tuple(dataset.train.shape[1:])
    network, model, opt, step_fn = _components(config, example_shape, mesh)
    key = jax.random.PRNGKey(config.seed)
    init_key, train_key, div_key = jax.random.split(key, 3)
    template = network.init(init_key)
    div_kw = dict(method=c.divergence, n_probes=c.n_probes)

    x_train = np.asarray(dataset.train)
    x_val = np.asarray(dataset.val[: c.n_val])
    val_logdet = np.zeros(len(x_val), np.float64)
    log_p_val = None
    if dataset.log_prob is not None:
        log_p_val = np.asarray(jax.jit(jax.vmap(dataset.log_prob))(x_val), np.float64)
    hs = model.step_sizes
    cum_h = lfm.cumulative_ou_time(hs)
    reports = [_initial_report(model, x_val, log_p_val, mesh)]
    params_list, raw_prev = [], None

    for n in range(1, model.num_blocks + 1):
        files = _BlockFiles(workdir, n)
        h = hs[n - 1]
        timing = {}
        if os.path.exists(files.params):
            saved = _load_params(files.params, template)
        else:
            if c.warm_start and raw_prev is not None:
                init = raw_prev
            else:
                init = network.init(jax.random.fold_in(init_key, n))
            t0 = time.perf_counter()
            saved, steps_run = _train_one_block(
                n, h, x_train, init, opt, step_fn, files, config,
                jax.random.fold_in(train_key, n), mesh, callback, verbose,
                block_train_budget_s)
            timing["train_time_s"] = time.perf_counter() - t0
            timing["steps_trained"] = steps_run
            _save_bytes(files.params, flax.serialization.to_bytes(saved))
        raw_prev = saved["params"]
        params = saved["ema_params"] if config.eval.use_ema else saved["params"]
        params_list.append(params)

        t0 = time.perf_counter()
        x_next = _load_npy(files.train)
        if x_next is None:
            x_next = push_training_data(model, params, x_train, n, mesh=mesh)
            _save_npy(files.train, x_next)
        push_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        v_next, v_logdet = _load_npy(files.val), _load_npy(files.val_logdet)
        if v_next is None or v_logdet is None:
            bkey = jax.random.fold_in(div_key, n)
            # on_failure="nan": a failed validation point is NaN (left out of the val
            # NLL and counted as val_n_failed), not the end of the run.
            v_next, delta = model.block_log_det(params, x_val, key=bkey, mesh=mesh,
                                                on_failure="nan", **div_kw)
            v_logdet = val_logdet + delta
            _save_npy(files.val, v_next)
            _save_npy(files.val_logdet, v_logdet)
        val_time = time.perf_counter() - t0

        if os.path.exists(files.report):
            with open(files.report) as f:
                report = json.load(f)
        else:
            report = _block_report(model, n, h, cum_h[n], x_train, x_next, v_next,
                                   v_logdet, log_p_val, files, mesh)
            # push_time_s: the training set through the block (part of LFM training);
            # val_logdet_time_s: the validation points and their log-det (evaluation).
            report.update(timing, push_time_s=push_time, val_logdet_time_s=val_time)
            _save_json(files.report, report)
        reports.append(report)
        if verbose:
            print(_format_report(report), flush=True)
        x_train, x_val, val_logdet = x_next, v_next, v_logdet
    return model, params_list, reports


def _config_key(config) -> str:
    return json.dumps({k: config[k].to_dict() for k in ("model", "lfm", "train", "eval")},
                      sort_keys=True, default=str)


_COMPONENTS = {}


def _components(config, example_shape, mesh):
    """(network, model, optimizer, jitted step) for a config, built once per process
    (keyed by the config's JSON, the example shape and the mesh) so that repeated
    jobs in one process reuse the compiled functions."""
    key = (_config_key(config), example_shape, mesh)
    if key not in _COMPONENTS:
        _COMPONENTS[key] = _build_components(config, example_shape, mesh)
    return _COMPONENTS[key]


def _build_components(config, example_shape, mesh):
    c, t_cfg = config.lfm, config.train
    network = common.velocity_network(config, example_shape)
    model = make_model(config, network, example_shape)
    interp = interpolants.get(c.interpolant)
    opt = common.optimizer(config, total_steps=c.steps_per_block)
    loss_fn = lfm.make_block_loss(network.apply, interp, common.make_time_sampler(c))
    step_fn = train.make_train_step(
        loss_fn, opt, sample_batch=lfm.make_sample_batch(t_cfg.batch_size),
        steps_per_call=t_cfg.steps_per_call, ema_decay=t_cfg.ema_decay, mesh=mesh)
    return network, model, opt, step_fn


def _train_one_block(n, h, x_l, init_params, opt, step_fn, files, config, key, mesh,
                     user_callback, verbose, budget_s=None):
    """Train block n from init_params (or its latest checkpoint); returns
    ({"params", "ema_params"} on the host, steps run). With budget_s, stops after the
    first fused call that ends past budget_s seconds."""
    t_cfg = config.train
    steps = config.lfm.steps_per_block
    state = train.create_train_state(key, init_params, opt)
    state = distributed.replicate(state, mesh)
    ckpt = checkpoint.Checkpointer(files.ckpt, save_every=t_cfg.checkpoint_every,
                                   keep=t_cfg.keep_checkpoints)
    try:
        state = ckpt.restore(state)
        start = int(state.step)
        log_lib.truncate_jsonl(files.loss, start)
        writer = log_lib.MetricsWriter(files.loss)
        if start and verbose:
            print(f"block {n}: resuming from step {start} in {files.ckpt}", flush=True)

        def callback(step, m):
            writer.write(step, loss=float(np.mean(m["loss"])),
                         grad_norm=float(np.mean(m["grad_norm"])))
            if user_callback is not None:
                user_callback(n, step, m)

        data = distributed.replicate(
            {"x": np.asarray(x_l), "h": np.asarray(h, np.asarray(x_l).dtype)}, mesh)
        progress = log_lib.Progress(steps, initial=start, desc=f"lfm block {n}",
                                    disable=None if verbose else True)
        spc = t_cfg.steps_per_call
        try:
            if budget_s is None:
                state, _ = train.fit(state, step_fn, data, steps, steps_per_call=spc,
                                     callback=callback, checkpointer=ckpt,
                                     progress=progress)
            else:
                t0 = time.perf_counter()
                step = int(state.step)
                while step < steps and time.perf_counter() - t0 < budget_s:
                    step = min(steps, step + spc)
                    state, _ = train.fit(state, step_fn, data, step, steps_per_call=spc,
                                         callback=callback, progress=progress)
                ckpt.save(int(state.step), state, force=True)
                ckpt.wait()
        finally:
            progress.close()
    finally:
        ckpt.close()
    return (jax.device_get({"params": state.params, "ema_params": state.ema_params}),
            int(state.step) - start)


def _load_params(path, template):
    with open(path, "rb") as f:
        return flax.serialization.from_bytes(
            {"params": template, "ema_params": template}, f.read())


# ----------------------------------------------------------------------- reports

def _nll_summary(log_q, dim) -> dict:
    """val NLL over the finite points, and how many failed (NaN: failed solves)."""
    nll, se, n_failed = finite_nll(log_q)
    return {"val_nll": nll, "val_nll_stderr": se,
            "val_bpd": float(metrics.bits_per_dim(nll, dim)), "val_n_failed": n_failed}


def _initial_report(model, x_val, log_p_val, mesh) -> dict:
    """Block 0: the base N(0, I) alone (the chi-square diagnostics' starting point)."""
    log_q = model._base_log_prob(x_val, mesh)
    report = {"block": 0, "h": 0.0, "cumulative_ou_time": 0.0, **_nll_summary(log_q, model.dim)}
    if log_p_val is not None:
        report.update(lfm.chi_square_diagnostics(log_p_val, log_q))
    return report


def _block_report(model, n, h, cum_h, x_prev, x_next, v_next, v_logdet, log_p_val, files,
                  mesh) -> dict:
    dim = model.dim
    log_q = model._base_log_prob(v_next, mesh) + v_logdet
    losses = [r for r in log_lib.read_jsonl(files.loss)] if os.path.exists(files.loss) else []
    report = {
        "block": n,
        "h": None if math.isinf(h) else float(h),
        "free": bool(math.isinf(h)),
        "cumulative_ou_time": None if math.isinf(cum_h) else float(cum_h),
        "final_loss": losses[-1]["loss"] if losses else None,
        **_nll_summary(log_q, dim),
        "moments": lfm.moment_check(x_prev, x_next, h),
    }
    if log_p_val is not None:
        report.update(lfm.chi_square_diagnostics(log_p_val, log_q))
    warn_failed(report["val_n_failed"], len(log_q), f"validation points (block {n})")
    return report


def _format_report(r) -> str:
    h = "free" if r.get("free") else f"h={r['h']:.4g}"
    parts = [f"block {r['block']} ({h})", f"val NLL {r['val_nll']:.4f}"]
    if r.get("val_n_failed"):
        parts.append(f"{r['val_n_failed']} val points failed")
    if r.get("final_loss") is not None:
        parts.append(f"loss {r['final_loss']:.4g}")
    if "chi2" in r:
        parts.append(f"excess NLL {r['excess_nll']:.4f} chi2 {r['chi2']:.3g}")
    m = r["moments"]
    parts.append(f"OU mean err {m['mean_err_max']:.3g} cov err {m['cov_err_max']:.3g}")
    if r.get("train_time_s") is not None:
        parts.append(f"train {r['train_time_s']:.1f}s")
    parts.append(f"push {r.get('push_time_s', 0.0):.1f}s")
    return ", ".join(parts)


# --------------------------------------------------------------------------- job

def run(config, workdir: str) -> dict:
    """Train (resumable), evaluate, and write metrics.json and plots to workdir."""
    workdir = common.check_workdir(workdir)
    dataset = common.load_data(config)
    mesh = common.make_mesh(config)
    t0 = time.perf_counter()
    model, params_list, reports = train_blocks(config, dataset, workdir, mesh=mesh)
    train_time = time.perf_counter() - t0
    results = evaluate(config, model, params_list, dataset,
                       jax.random.fold_in(jax.random.PRNGKey(config.seed), 99), workdir,
                       mesh=mesh)
    n_params = sum(networks.count_params(p) for p in params_list)
    results.update(method="lfm", num_blocks=model.num_blocks,
                   step_sizes=[None if math.isinf(h) else h for h in model.step_sizes],
                   steps=config.lfm.steps_per_block * model.num_blocks,
                   train_time_s=train_time, num_params=n_params, blocks=reports)
    _write_curves(workdir, model, reports, results.get("nll_floor"))
    log_lib.write_json(os.path.join(workdir, "metrics.json"), results)
    return results


def evaluate(config, model, params_list, dataset, key, workdir, *, mesh=None) -> dict:
    """Test NLL (nats, bits/dim), NLL floor, sample metrics and samples.png."""
    e, c = config.eval, config.lfm
    emodel = eval_model(config, model)
    k_sample, k_metric, k_div = jax.random.split(key, 3)
    # on_failure="nan": points / samples whose solve fails are NaN, counted and left
    # out (n_failed, n_samples_failed), instead of one of them ending the run.
    t0 = time.perf_counter()
    samples = emodel.generate(params_list, k_sample, e.n_samples, mesh=mesh,
                              on_failure="nan")
    sample_time = time.perf_counter() - t0
    test = np.asarray(dataset.test[: e.nll_examples])
    t0 = time.perf_counter()
    lp = emodel.log_prob(params_list, test, method=e.divergence, n_probes=c.n_probes,
                         key=k_div if e.divergence != "exact" else None, mesh=mesh,
                         on_failure="nan")
    nll_time = time.perf_counter() - t0
    nll, nll_se, n_failed = finite_nll(lp)
    warn_failed(n_failed, len(lp), "test points")
    results = {
        "test_nll": nll,
        "test_nll_stderr": nll_se,
        "test_bpd": float(metrics.bits_per_dim(nll, dataset.dim)),
        "n_failed": n_failed,
        "nll_examples": int(len(lp)),
        "dim": int(dataset.dim),
        "sample_time_s": sample_time,
        "nll_time_s": nll_time,
    }
    floor = metrics.entropy_floor(dataset)
    if floor is not None:
        results["nll_floor"] = float(floor)
    bad = lfm.failed_rows(samples)
    results["n_samples_failed"] = int(bad.sum())
    warn_failed(int(bad.sum()), len(samples), "generated samples")
    if bad.all():  # nothing to measure or plot; the NLL metrics are still written
        return results
    samples = samples[~bad]
    results.update(common.sample_metrics(k_metric, samples, np.asarray(dataset.test)))
    plots.plot_samples(os.path.join(workdir, "samples.png"), samples,
                       data=np.asarray(dataset.test),
                       title=f"LFM, {model.num_blocks} blocks, test NLL {nll:.3f}")
    return results


def _write_curves(workdir, model, reports, floor) -> None:
    """loss.png (all blocks, one after another), block_nll.png and chi_square.png."""
    steps, losses, offset = [], [], 0
    for n in range(1, model.num_blocks + 1):
        path = _BlockFiles(workdir, n).loss
        recs = log_lib.read_jsonl(path) if os.path.exists(path) else []
        steps += [offset + r["step"] for r in recs]
        losses += [r["loss"] for r in recs]
        offset = steps[-1] if steps else offset
    if steps:
        plots.plot_loss(os.path.join(workdir, "loss.png"), steps, losses,
                        title="LFM training loss (blocks in turn)")
    blocks = [r["block"] for r in reports]
    plots.plot_curves(os.path.join(workdir, "block_nll.png"),
                      {"val NLL of blocks 1..n": (blocks, [r["val_nll"] for r in reports])},
                      xlabel="blocks n", ylabel="NLL (nats)", hline=floor,
                      hline_label=None if floor is None else "entropy (floor)")
    ou = [r for r in reports if r.get("cumulative_ou_time") is not None and "chi2" in r]
    if len(ou) >= 2:
        H = np.array([r["cumulative_ou_time"] for r in ou])
        ex = np.array([r["excess_nll"] for r in ou])
        chi = np.array([r["chi2"] for r in ou])
        curves = {"excess NLL (KL estimate)": (H, ex), "chi2(p || q_n) estimate": (H, chi),
                  "exp(-2H) x excess NLL at H=0": (H, ex[0] * np.exp(-2 * H))}
        plots.plot_curves(os.path.join(workdir, "chi_square.png"), curves,
                          xlabel="cumulative OU time H_n", ylabel="nats / chi2", ylog=True,
                          title="truncated LFM vs data (validation)")


# ------------------------------------------------------------------ distillation

def load_trained_blocks(config, workdir: str, example_shape):
    """(network, model, params_list) of an LFM trained in workdir (blocks/<n>/), not
    retrained. Raises FileNotFoundError naming the missing file and the command that
    trains it. params: EMA if config.eval.use_ema (as `train_blocks` returns them)."""
    network = common.velocity_network(config, tuple(example_shape))
    model = make_model(config, network, tuple(example_shape))
    template = network.init(jax.random.PRNGKey(0))
    params_list = []
    for n in range(1, model.num_blocks + 1):
        path = os.path.join(workdir, "blocks", str(n), "params.msgpack")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"{path} is missing: block {n} of {model.num_blocks} is not trained in "
                f"{workdir}. Train the LFM first (same config and overrides), e.g. "
                f"`python -m experiments.train --config configs/lfm_checkerboard.py "
                f"--workdir {workdir}`")
        try:
            saved = _load_params(path, template)
        except Exception as err:  # wrong architecture for this config
            raise ValueError(f"cannot load {path} with this config's network "
                             f"(hidden={tuple(config.model.hidden)}): {err}") from err
        params_list.append(saved["ema_params"] if config.eval.use_ema else saved["params"])
    return network, model, params_list


def block_inputs(workdir: str, model, params_list, x_train, n: int, *, mesh=None):
    """x_l ~ q_{n-1} for block n: the training set pushed through blocks 1..n-1, read
    from blocks/<n-1>/train_pushed.npy (pushed again, and saved, if missing)."""
    if n == 1:
        return np.asarray(x_train)
    path = _BlockFiles(workdir, n - 1).train
    x = _load_npy(path)
    if x is None:
        x = push_training_data(model, params_list[n - 2],
                               block_inputs(workdir, model, params_list, x_train, n - 1,
                                            mesh=mesh), n - 1, mesh=mesh)
        _save_npy(path, x)
    return x


def distill_blocks(config, workdir: str, network, model, params_list, x_train, *,
                   out_dir: str, objective: str = "lagrangian_distillation",
                   hidden=(256, 256, 256), steps: int = 2000, batch_size: int = 256,
                   lr: float = 1e-3, ema_decay: float = 0.995, steps_per_call: int = 100,
                   max_pairs: int = 0, key=None, mesh=None, verbose: bool = True):
    """Distil every block's inverse into a flow map (`distill.distill_lfm_blocks`).

    Block n's pairs are its pushed data x_l (`block_inputs`) and the OU partner
    x_r = ou_step(x_l, h_n) (x_r ~ N(0, I) for a free block); the teacher is the block
    velocity v_n (objective a key of `distill.OBJECTIVES`; self-distillation objectives
    learn from the pairs alone). Each distilled block is saved to
    out_dir/block_<n>.msgpack with its settings in out_dir/settings.json; a rerun loads
    finished blocks instead of retraining them (a rerun with other settings in the same
    out_dir is an error).

    Returns:
      ([(flow_map, params)] in block order, [per-block info dicts]).
    """
    from lfm_jax import distill, flow_map as flow_map_lib

    if objective not in distill.OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: "
                         f"{sorted(distill.OBJECTIVES)}")
    kind, short, _ = distill.OBJECTIVES[objective]
    mesh = common.make_mesh(config) if mesh is None else mesh
    os.makedirs(out_dir, exist_ok=True)
    settings = {"objective": objective, "hidden": list(hidden), "steps": int(steps),
                "batch_size": int(batch_size), "lr": float(lr), "ema_decay": float(ema_decay),
                "max_pairs": int(max_pairs), "interpolant": config.lfm.interpolant,
                "num_blocks": model.num_blocks}
    settings_path = os.path.join(out_dir, "settings.json")
    if os.path.exists(settings_path):
        with open(settings_path) as f:
            old = json.load(f)
        if old != settings:
            raise ValueError(f"{out_dir} holds blocks distilled with other settings "
                             f"{old}; use another output directory or delete it")
    else:
        _save_json(settings_path, settings)
    key = jax.random.PRNGKey(config.seed + 1) if key is None else key
    m = config.model

    def make_flow_map():
        return flow_map_lib.make_flow_map(model.example_shape, hidden=tuple(hidden),
                                          activation=m.activation,
                                          num_frequencies=m.num_frequencies,
                                          max_frequency=m.max_frequency)

    interp = interpolants.get(config.lfm.interpolant)
    spc = max(1, min(int(steps_per_call), int(steps)))
    train_kwargs = dict(num_steps=int(steps) // spc * spc, batch_size=int(batch_size),
                        lr=float(lr), ema_decay=float(ema_decay), steps_per_call=spc,
                        mesh=mesh)
    maps, infos = [], []
    for n in range(1, model.num_blocks + 1):
        path = os.path.join(out_dir, f"block_{n}.msgpack")
        fm = make_flow_map()
        template = fm.init(jax.random.PRNGKey(0))
        info = {"block": n}
        if os.path.exists(path):
            with open(path, "rb") as f:
                params = flax.serialization.from_bytes(template, f.read())
            info["loaded"] = True
        else:
            k_n = jax.random.fold_in(key, n)
            x_l = block_inputs(workdir, model, params_list, x_train, n, mesh=mesh)
            if max_pairs and len(x_l) > max_pairs:
                x_l = x_l[:max_pairs]
            x_r = np.asarray(lfm.ou_step(jax.random.fold_in(k_n, 0), jax.numpy.asarray(x_l),
                                         model.step_sizes[n - 1]))
            b = distill.velocity_teacher(network, params_list[n - 1])
            t0 = time.perf_counter()
            ((_, params),) = distill.distill_lfm_blocks(
                [b], [(x_l, x_r)], lambda: fm, objective=short, key=k_n, interp=interp,
                train_kwargs=train_kwargs, self_distill=(kind == "self"))
            params = jax.device_get(params)
            info["train_time_s"] = time.perf_counter() - t0
            _save_bytes(path, flax.serialization.to_bytes(params))
            if verbose:
                print(f"distilled block {n}/{model.num_blocks} ({objective}) in "
                      f"{info['train_time_s']:.1f}s -> {path}", flush=True)
        maps.append((fm, params))
        infos.append(info)
    return maps, infos

