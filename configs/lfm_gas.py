"""Local Flow Matching on MAF-preprocessed GAS (8-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder), the official layout
(config/tabular_LFM_gas.yaml, configs/lfm_official.py): 1 OU block h = 0.05 + a free
block, 5x362 ReLU, batch 50,000, 100,000 iterations per block, lr 2e-3 x0.99 every 1k,
10 times t per pair drawn from Beta(1, 0.5), warm start.

    --config configs/lfm_gas.py                  official layout, test split, dopri5
    --config configs/lfm_gas.py:paper_nll        the paper's NLL (val split, Euler)
    --config configs/lfm_gas.py:quick            tiny, on the MAF files
    --config configs/lfm_gas.py:quick,standin    tiny, 8-D Gaussian mixture: < 1 min CPU
"""

from configs import lfm_official


def _make():
    return lfm_official.tabular(
        "gas", step_sizes=(0.05,), hidden=(362,) * 5, activation="relu",
        batch_size=50_000, steps_per_block=100_000, lr=2e-3, decay_rate=0.99,
        decay_every=1_000, times_per_pair=10, beta_b=0.5)


def get_config(arg: str = ""):
    return lfm_official.build(_make, arg, lfm_official.TABULAR_VARIANTS)
