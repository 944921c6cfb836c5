"""Couplings of (x0, x1) minibatches (SPEC 2).

A coupling takes a key and two batches of shape (n, ...) and returns a batch of
pairs (x0', x1'), each of shape (n, ...). Couplings act on a whole minibatch, so
they run before the per-example loss is vmapped.

- `independent`: the pairs as given (x0 and x1 drawn independently).
- `minibatch_ot`: OT-CFM (Tong et al. 2023). Squared-Euclidean optimal transport
  between the two empirical measures of the batch; `method="exact"` solves the
  assignment problem with the Hungarian algorithm (optax.assignment, O(n^3),
  fine up to a few hundred points), `method="sinkhorn"` solves the entropic
  problem with ott-jax and draws n pairs from the plan, as torchcfm does.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def independent(key, x0, x1):
    """The independent coupling: returns (x0, x1) unchanged."""
    del key
    return x0, x1


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _cost(x0, x1):
    a, b = _flat(x0), _flat(x1)
    return (jnp.sum(a**2, -1)[:, None] + jnp.sum(b**2, -1)[None, :]
            - 2.0 * a @ b.T)


def minibatch_ot(key, x0, x1, method: str = "exact", epsilon: float = 0.01):
    """Pairs (x0, x1) by minibatch optimal transport with squared-Euclidean cost.

    Args:
      key: PRNG key (used by the Sinkhorn sampler).
      x0, x1: batches of equal shape (n, ...).
      method: "exact" (Hungarian; a permutation of x1) or "sinkhorn" (entropic
        plan, pairs drawn from it with replacement).
      epsilon: entropic regularisation relative to the mean cost (Sinkhorn).
    Returns:
      (x0', x1'), each of shape (n, ...).
    """
    if x0.shape != x1.shape:
        raise ValueError(f"OT coupling needs batches of equal shape, got {x0.shape} "
                         f"and {x1.shape}")
    cost = _cost(x0, x1)
    if method == "exact":
        rows, cols = optax.assignment.hungarian_algorithm(cost)
        return x0[rows], x1[cols]
    if method == "sinkhorn":
        from ott.geometry import geometry
        from ott.solvers.linear import sinkhorn

        geom = geometry.Geometry(cost_matrix=cost, epsilon=epsilon,
                                 relative_epsilon="mean")
        with jax.numpy_rank_promotion("allow"):  # ott-jax broadcasts implicitly
            out = sinkhorn.Sinkhorn()(_problem(geom))
        plan = out.matrix
        n = x0.shape[0]
        logits = jnp.log(jnp.maximum(plan.reshape(-1), 1e-30))
        idx = jax.random.categorical(key, logits, shape=(n,))
        return x0[idx // n], x1[idx % n]
    raise ValueError(f"unknown OT method {method!r}; use 'exact' or 'sinkhorn'")


def _problem(geom):
    from ott.problems.linear import linear_problem
    return linear_problem.LinearProblem(geom)


COUPLINGS = {
    "independent": independent,
    "ot": functools.partial(minibatch_ot, method="exact"),
    "ot_exact": functools.partial(minibatch_ot, method="exact"),
    "ot_sinkhorn": functools.partial(minibatch_ot, method="sinkhorn"),
}


def get(name: str):
    """Coupling by name: independent, ot (= ot_exact), ot_exact, ot_sinkhorn."""
    if name not in COUPLINGS:
        raise ValueError(f"unknown coupling {name!r}; known: {sorted(COUPLINGS)}")
    return COUPLINGS[name]
