"""Defaults of the `lfm` config section (Local Flow Matching)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.num_blocks = 4
    return c
