"""Local Flow Matching on MAF-preprocessed GAS (8-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
Official layout: 2 blocks 5x362, h = 0.05, 10 times t per OU pair."""

from configs import lfm_tabular


def get_config():
    return lfm_tabular.get_tabular_config(
        "gas", hidden=(362,) * 5, num_blocks=2, step_c=0.05, times_per_pair=10)
