"""Local Flow Matching on a 43-D Gaussian mixture (exact density: known NLL floor),
the MINIBOONE-sized stand-in: MINIBOONE's official 2 OU blocks 4x362 with h = 0.35,
plus a free last block to N(0, I). Hutchinson divergence for the per-block validation
NLL; exact for the final test NLL. Training settings as configs/lfm_gmm6.py."""

from configs import lfm_gmm6


def get_config():
    config = lfm_gmm6.get_config()  # locked: a misspelt field raises
    config.data.dim = 43
    config.data.n_components = 10
    config.model.hidden = (362, 362, 362, 362)
    config.lfm.num_blocks = 3
    config.lfm.step_c = 0.35
    config.lfm.step_rho = 1.0
    config.lfm.steps_per_block = 5_000
    config.lfm.divergence = "hutchinson"
    config.lfm.n_probes = 4
    return config
