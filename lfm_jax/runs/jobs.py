"""What every job does around its work, in one place (`job`), and the checks shared by
the jobs' results (`gaussian_nll`, `worse_than_base`).

Before any work (data loading, compilation) a job
  1. validates every number of the config (`validation.validate_config`: a message
     naming the key, in microseconds);
  2. records what produced the workdir (`provenance.record_run`: config.json, the
     command line in runs.jsonl) and refuses a resume whose settings change training,
     listing the changed keys.
When training stops on a non-finite loss (`train.NonFiniteLossError`, whose message
names the kept checkpoint) the workdir is marked diverged
(`provenance.mark_diverged`), so that the same command with a lower `train.lr` (or
`train.grad_clip`, `train.warmup_steps`) resumes from the kept checkpoint.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from lfm_jax import train
from lfm_jax.runs import provenance, validation

RESTART_ADVICE = ("re-run the same command with a lower --config.train.lr (or "
                  "--config.train.grad_clip / --config.train.warmup_steps): it resumes "
                  "from the kept checkpoint (step 0 if none was kept); other training "
                  "settings may not change.")


def job(run):
    """Decorate `run(config, workdir)`: validate, record, then run; mark the workdir
    diverged on `train.NonFiniteLossError` (re-raised). The wrapped function takes an
    optional `argv` (recorded command line, default sys.argv)."""

    @functools.wraps(run)
    def wrapped(config, workdir: str, *, argv=None):
        from lfm_jax.runs import common

        validation.validate_config(config)
        workdir = common.check_workdir(workdir)
        provenance.record_run(config, workdir, argv)
        try:
            return run(config, workdir)
        except train.NonFiniteLossError as e:
            provenance.mark_diverged(workdir, str(e))
            raise

    return wrapped


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
