"""Local Flow Matching on a 43-D Gaussian mixture (exact density: known NLL floor),
the MINIBOONE-sized stand-in: MINIBOONE's official 2 OU blocks 4x362 with h = 0.35,
plus a free last block to N(0, I) (without it the pushed data, after OU time 0.7, is
still far from the Gaussian base and the NLL is poor). Hutchinson divergence for the per-block validation NLL; exact for the
final test NLL."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "gmm"
    config.data.dim = 43
    config.data.n_components = 10
    config.data.n_train = 50_000
    config.model.hidden = (362, 362, 362, 362)
    config.lfm.num_blocks = 3
    config.lfm.free_last_block = True
    config.lfm.step_c = 0.35
    config.lfm.step_rho = 1.0
    config.lfm.steps_per_block = 5_000
    config.lfm.divergence = "hutchinson"
    config.lfm.n_probes = 4
    config.train.batch_size = 512
    config.train.steps_per_call = 100
    config.train.ema_decay = 0.995
    config.eval.nll_examples = 2_000
    return default.locked(config)
