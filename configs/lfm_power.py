"""Local Flow Matching on MAF-preprocessed POWER (6-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
Official layout: 4 blocks 4x256, h_n = 0.15 * 1.3^(n-1) (0.15, 0.195, 0.25, 0.33)."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "power"
    config.model.hidden = (256,) * 4
    config.lfm.num_blocks = 4
    config.lfm.step_c = 0.15
    config.lfm.step_rho = 1.3
    config.lfm.steps_per_block = 20_000
    config.lfm.push_rtol = 1e-5
    config.lfm.push_atol = 1e-5
    config.lfm.chunk_size = 10_000
    config.lfm.n_val = 5_000
    config.train.lr = 1e-3
    config.train.batch_size = 2_048
    config.train.steps_per_call = 200
    config.train.ema_decay = 0.999
    config.train.checkpoint_every = 2_000
    config.eval.nll_examples = 1_000_000  # the whole test split
    config.eval.n_samples = 10_000
    config.eval.chunk_size = 10_000
    return default.locked(config)
