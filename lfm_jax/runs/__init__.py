"""Full jobs (train, evaluate, write artefacts) chosen by `config.method`.

Each method module exposes `run(config, workdir) -> dict of final metrics`, wrapped by
`jobs.job`: the config is validated and recorded in the workdir before any work, and a
diverged run is marked so that a lower lr may resume it.
Modules are imported lazily so that one method's dependencies never slow another.
"""

import importlib

METHODS = {
    "fm": "lfm_jax.runs.flow_matching",
    "lfm": "lfm_jax.runs.lfm",
    "flow_map": "lfm_jax.runs.flow_map",
    "classifier": "lfm_jax.runs.classifier_job",  # the evaluation classifier (issue 11)
}


def get(method: str):
    """The `run(config, workdir)` function of a method."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHODS)}")
    return importlib.import_module(METHODS[method]).run
