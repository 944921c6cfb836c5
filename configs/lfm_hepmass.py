"""Local Flow Matching on MAF-preprocessed HEPMASS (21-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
No official layout given; our choice: 3 blocks 4x512, h = 0.1, 0.15, 0.225."""

from configs import lfm_tabular


def get_config():
    return lfm_tabular.get_tabular_config(
        "hepmass", hidden=(512,) * 4, num_blocks=3, step_c=0.1, step_rho=1.5, lr=5e-4)
