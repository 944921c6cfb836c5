"""Local Flow Matching on MAF-preprocessed POWER (6-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder), the official layout
(config/tabular_LFM_power.yaml, configs/lfm_official.py): 3 OU blocks h = 0.15, 0.2,
0.26 + a free block, 4x256 ReLU, batch 30,000, 100,000 iterations per block, lr 5e-3
x0.99 every 1k, one U(0, 1) t per pair, warm start.

    --config configs/lfm_power.py                  official layout, test split, dopri5
    --config configs/lfm_power.py:paper_nll        the paper's NLL (val split, Euler)
    --config configs/lfm_power.py:quick            tiny, on the MAF files
    --config configs/lfm_power.py:quick,standin    tiny, 6-D Gaussian mixture: < 1 min CPU
"""

from configs import lfm_official


def _make():
    return lfm_official.tabular(
        "power", step_sizes=(0.15, 0.2, 0.26), hidden=(256,) * 4, activation="relu",
        batch_size=30_000, steps_per_block=100_000, lr=5e-3, decay_rate=0.99,
        decay_every=1_000)


def get_config(arg: str = ""):
    return lfm_official.build(_make, arg, lfm_official.TABULAR_VARIANTS)
