"""Local Flow Matching on MAF-preprocessed BSDS300 (63-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
Official layout: 4 blocks 4x512, h = 0.25. Hutchinson divergence."""

from configs import lfm_tabular


def get_config():
    config = lfm_tabular.get_tabular_config(
        "bsds300", hidden=(512,) * 4, num_blocks=4, step_c=0.25, lr=5e-4)
    config.lfm.divergence = "hutchinson"  # 63-D: exact traces cost 63 JVPs per step
    config.eval.divergence = "hutchinson"
    return config
