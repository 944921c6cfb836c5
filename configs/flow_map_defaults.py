"""Defaults of the `flow_map` config section (flow map matching)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.objective = "lagrangian_self_distillation"
    return c
