"""Local Flow Matching on MAF-preprocessed POWER (6-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
Official layout: 4 blocks 4x256, h_n = 0.15 * 1.3^(n-1) (0.15, 0.195, 0.25, 0.33)."""

from configs import lfm_tabular


def get_config():
    return lfm_tabular.get_tabular_config(
        "power", hidden=(256,) * 4, num_blocks=4, step_c=0.15, step_rho=1.3)
