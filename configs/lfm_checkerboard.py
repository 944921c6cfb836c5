"""Local Flow Matching on the 2-D checkerboard: the README's main job.

Our tuned quick CPU setting (not the official layout): 3 OU blocks with
h = 0.15, 0.3, 0.6 (cumulative OU time 1.05) and a free last block, 3x256 SiLU MLPs
with Fourier time features, cosine lr, EMA. The official 2-D layout (8 OU blocks
h = 0.025 * 1.25^k + a free block, 3x256 Softplus(beta=20), 50,000 iterations per
block) is configs/lfm_checkerboard_official.py (`:quick` for a CPU).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "checkerboard"
    config.data.n_train = 20_000
    config.data.n_val = 2_000
    config.data.n_test = 5_000
    config.model.hidden = (256, 256, 256)
    config.lfm.num_blocks = 4
    config.lfm.step_c = 0.15
    config.lfm.step_rho = 2.0
    config.lfm.free_last_block = True
    config.lfm.steps_per_block = 3_000
    config.lfm.push_ode.rtol = 1e-4
    config.lfm.push_ode.atol = 1e-4
    config.lfm.n_val = 1_000
    config.train.batch_size = 512
    config.train.steps_per_call = 100
    config.train.lr = 1e-3
    config.train.ema_decay = 0.99
    config.train.checkpoint_every = 500
    config.eval.n_samples = 5_000
    config.eval.nll_examples = 1_000
    config.eval.ode.rtol = 1e-4
    config.eval.ode.atol = 1e-4
    return default.locked(config)
