"""Local Flow Matching on MAF-preprocessed MINIBOONE (43-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
Official layout: 2 blocks 4x362, h = 0.35, 4 times t per OU pair."""

from configs import lfm_tabular


def get_config():
    return lfm_tabular.get_tabular_config(
        "miniboone", hidden=(362,) * 4, num_blocks=2, step_c=0.35, steps_per_block=10_000,
        lr=5e-4, times_per_pair=4)
