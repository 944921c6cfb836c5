"""Per-block reports of Local Flow Matching training (saved with the block's
artefacts, `block_store`).

Each block's report holds the validation NLL of the model truncated after it (nats,
bits/dim; failed solves left out and counted as `val_n_failed`), the OU moment check of
the pushed training data, and, where the data density is known, the chi-square
diagnostics (`lfm.chi_square_diagnostics`). Block 0 is the base N(0, I) alone.
"""

from __future__ import annotations

import math

from lfm_jax import lfm, metrics
from lfm_jax.runs import common


def _nll_summary(log_q, dim) -> dict:
    """val NLL over the finite points, and how many failed (NaN: failed solves)."""
    nll, se, n_failed = common.finite_nll(log_q)
    return {"val_nll": nll, "val_nll_stderr": se,
            "val_bpd": float(metrics.bits_per_dim(nll, dim)), "val_n_failed": n_failed}


def initial_report(model, x_val, log_p_val, mesh) -> dict:
    """Block 0: the base N(0, I) alone (the chi-square diagnostics' starting point)."""
    log_q = model.base_log_prob(x_val, mesh=mesh)
    report = {"block": 0, "h": 0.0, "cumulative_ou_time": 0.0,
              **_nll_summary(log_q, model.dim)}
    if log_p_val is not None:
        report.update(lfm.chi_square_diagnostics(log_p_val, log_q))
    return report


def block_report(model, n, cum_h, x_prev, x_next, v_next, v_logdet, log_p_val, losses,
                 mesh) -> dict:
    """Report of block n: x_prev / x_next the training data before / after it, v_next
    and v_logdet the pushed validation points and their cumulative log-det, losses the
    block's loss records."""
    h = model.step_sizes[n - 1]
    log_q = model.base_log_prob(v_next, mesh=mesh) + v_logdet
    report = {
        "block": n,
        "h": None if math.isinf(h) else float(h),
        "free": bool(math.isinf(h)),
        "cumulative_ou_time": None if math.isinf(cum_h) else float(cum_h),
        "final_loss": losses[-1]["loss"] if losses else None,
        **_nll_summary(log_q, model.dim),
        "moments": lfm.moment_check(x_prev, x_next, h),
    }
    if log_p_val is not None:
        report.update(lfm.chi_square_diagnostics(log_p_val, log_q))
    common.warn_failed(report["val_n_failed"], len(log_q), f"validation points (block {n})")
    return report


def format_report(r) -> str:
    """One printed line of a block report."""
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
