"""Shared settings of the Local Flow Matching configs for the MAF tabular data sets
(POWER, GAS, HEPMASS, MINIBOONE, BSDS300; `lfm_jax.tabular`). Set
--config.data.path or $LFM_DATA to the extracted MAF data folder."""

from configs import default


def get_tabular_config(name: str, *, hidden, num_blocks: int, step_c: float,
                       step_rho: float = 1.0, steps_per_block: int = 20_000,
                       lr: float = 1e-3, times_per_pair: int = 1):
    """The default config with the tabular training/evaluation settings, locked."""
    config = default.get_config()
    config.method = "lfm"
    config.data.name = name
    config.model.hidden = tuple(hidden)
    config.lfm.num_blocks = num_blocks
    config.lfm.step_c = step_c
    config.lfm.step_rho = step_rho
    config.lfm.steps_per_block = steps_per_block
    config.lfm.times_per_pair = times_per_pair
    config.lfm.push_ode.rtol = 1e-5
    config.lfm.push_ode.atol = 1e-5
    config.lfm.chunk_size = 10_000
    config.lfm.n_val = 5_000
    config.train.lr = lr
    config.train.batch_size = 2_048
    config.train.steps_per_call = 200
    config.train.ema_decay = 0.999
    config.train.checkpoint_every = 2_000
    config.eval.nll_examples = 1_000_000  # the whole test split
    config.eval.n_samples = 10_000
    config.eval.chunk_size = 10_000
    return default.locked(config)
