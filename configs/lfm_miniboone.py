"""Local Flow Matching on MAF-preprocessed MINIBOONE (43-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder), the official layout
(config/tabular_LFM_miniboone.yaml, configs/lfm_official.py): 1 OU block h = 0.35 + a
free block, 4x362 ReLU, batch 1,000, 100,000 iterations per block, lr 5e-3 x0.9 every
4k, 4 times t per pair from U(0, 1), warm start.

    --config configs/lfm_miniboone.py                  official layout, test split, dopri5
    --config configs/lfm_miniboone.py:paper_nll        the paper's NLL (val split, Euler)
    --config configs/lfm_miniboone.py:quick            tiny, on the MAF files
    --config configs/lfm_miniboone.py:quick,standin    tiny, 43-D Gaussian mixture: < 1 min CPU
"""

from configs import lfm_official


def _make():
    return lfm_official.tabular(
        "miniboone", step_sizes=(0.35,), hidden=(362,) * 4, activation="relu",
        batch_size=1_000, steps_per_block=100_000, lr=5e-3, decay_rate=0.9,
        decay_every=4_000, times_per_pair=4)


def get_config(arg: str = ""):
    return lfm_official.build(_make, arg, lfm_official.TABULAR_VARIANTS)
