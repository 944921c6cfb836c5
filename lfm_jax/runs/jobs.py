"""What every job does around its work, in one place (`job`), and the checks shared by
the jobs' results (`gaussian_nll`, `worse_than_base`).

Before any work (data loading, compilation) a job
  1. validates every number of the config (`validation.validate_config`: a message
     naming the key, in microseconds);
  2. records what produced the workdir (`provenance.record_run`: config.json, the
     command line in runs.jsonl) and refuses a resume whose settings change training,
     listing the changed keys.
Every job times its phases (`phases.PhaseClock`: seconds and compile seconds per
phase, printed as a table at the end) and writes metrics.json through
`write_metrics`, which adds the phase table ("phases") and, on a GPU or TPU, the
process's peak device memory ("peak_device_memory_mib").
When training stops on a non-finite loss (`train.NonFiniteLossError`, whose message
names the kept checkpoint) the workdir is marked diverged
(`provenance.mark_diverged`), so that the same command with a lower `train.lr` (or
`train.grad_clip`, `train.warmup_steps`) resumes from the kept checkpoint.
"""

from __future__ import annotations

import functools
import math
import os

import jax
import numpy as np

from lfm_jax import logging as log_lib
from lfm_jax import phases, train
from lfm_jax.runs import provenance, validation

RESTART_ADVICE = ("re-run the same command with a lower --config.train.lr (or "
                  "--config.train.grad_clip / --config.train.warmup_steps): it resumes "
                  "from the kept checkpoint (step 0 if none was kept); other training "
                  "settings may not change.")


def job(run):
    """Decorate `run(config, workdir, clock)`: validate, record, then run; mark the
    workdir diverged on `train.NonFiniteLossError` (re-raised). `clock` is a
    `phases.PhaseClock` the job times its phases with (data, training, pushes,
    sampling, NLL, plots) and stores in metrics.json ("phases"); its table is printed
    at the end. The wrapped function is `run(config, workdir, *, argv=None)` (argv:
    the recorded command line, default sys.argv)."""

    @functools.wraps(run)
    def wrapped(config, workdir: str, *, argv=None):
        from lfm_jax.runs import common

        validation.validate_config(config)
        workdir = common.check_workdir(workdir)
        provenance.record_run(config, workdir, argv)
        clock = phases.PhaseClock()
        try:
            results = run(config, workdir, clock)
        except train.NonFiniteLossError as e:
            provenance.mark_diverged(workdir, str(e))
            raise
        memory = results.get("peak_device_memory_mib") if isinstance(results, dict) else None
        if jax.process_index() == 0:
            print("where the time went (this start; compiling: JAX tracing, lowering, XLA)\n"
                  + clock.table(), flush=True)
            if memory is not None:
                print(f"peak device memory: {memory:.1f} MiB", flush=True)
        write_tensorboard(config, workdir, results)
        return results

    return wrapped


def write_metrics(workdir: str, results: dict, clock=None) -> None:
    """Write a job's final results to <workdir>/metrics.json (process 0), with the
    phase table of `clock` ("phases") and, where the backend reports it, the peak
    device memory ("peak_device_memory_mib", `phases.peak_device_memory_mib`) added
    to results first."""
    if clock is not None:
        results["phases"] = clock.as_dict()
    memory = phases.peak_device_memory_mib()
    if memory is not None:
        results["peak_device_memory_mib"] = memory
    log_lib.write_json(os.path.join(workdir, "metrics.json"), results)


def gaussian_nll(x) -> float:
    """Mean NLL (nats) of the rows of x (n, ...) under the base N(0, I):
    mean_i |x_i|^2 / 2 + (d / 2) log(2 pi), d the size of one row."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return float(np.mean(0.5 * np.sum(x * x, axis=1)) + 0.5 * x.shape[1] * math.log(2 * math.pi))


def worse_than_base(nll: float, base_nll: float, what: str) -> list:
    """[a warning] when nll (nats) is worse than base_nll, the NLL of the same points
    under the base N(0, I) (a model that learnt nothing); [] otherwise."""
    if not (math.isfinite(nll) and nll <= base_nll):
        return [f"{what} NLL {nll:.4f} nats is worse than the base N(0, I)'s "
                f"{base_nll:.4f} on the same points: the model is worse than no model"]
    return []


def report_warnings(results: dict, found: list) -> None:
    """Print each warning ("WARNING: ...") and add them to results["warnings"]."""
    for w in found:
        print(f"WARNING: {w}", flush=True)
    results["warnings"] = results.get("warnings", []) + list(found)


def write_tensorboard(config, workdir: str, results: dict) -> None:
    """The final metrics (numbers at the top level of results, "final/<key>"), the LFM
    per-block reports ("blocks/<key>" at step = block) and the workdir's PNG figures,
    as TensorBoard events in the workdir (`common.tracker`: off with
    config.log.tensorboard = False)."""
    import glob
    import os

    from lfm_jax.runs import common

    step = int(results.get("steps") or 0)
    with common.tracker(config, workdir, subdir="final") as board:
        board.write_scalars(step, {f"final/{k}": v for k, v in results.items()
                                   if _is_number(v)})
        for r in results.get("blocks") or []:
            board.write_scalars(int(r.get("block", 0)), {
                f"blocks/{k}": v for k, v in r.items() if k != "block" and _is_number(v)})
        board.write_image_files(step, {os.path.basename(p)[:-4]: p for p in
                                       sorted(glob.glob(os.path.join(workdir, "*.png")))})


def _is_number(v) -> bool:
    return (isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
            and math.isfinite(float(v)))
