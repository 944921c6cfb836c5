"""Local Flow Matching on MAF-preprocessed HEPMASS (21-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).
No official layout given; our choice: 3 blocks 4x512, h = 0.1, 0.15, 0.225."""

from configs import default


def get_config():
    config = default.get_config()
    config.method = "lfm"
    config.data.name = "hepmass"
    config.model.hidden = (512,) * 4
    config.lfm.num_blocks = 3
    config.lfm.step_c = 0.1
    config.lfm.step_rho = 1.5
    config.lfm.steps_per_block = 20_000
    config.lfm.push_rtol = 1e-5
    config.lfm.push_atol = 1e-5
    config.lfm.chunk_size = 10_000
    config.lfm.n_val = 5_000
    config.train.lr = 5e-4
    config.train.batch_size = 2_048
    config.train.steps_per_call = 200
    config.train.ema_decay = 0.999
    config.train.checkpoint_every = 2_000
    config.eval.nll_examples = 1_000_000  # the whole test split
    config.eval.n_samples = 10_000
    config.eval.chunk_size = 10_000
    return default.locked(config)
