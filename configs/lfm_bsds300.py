"""Local Flow Matching on MAF-preprocessed BSDS300 (63-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder), the official layout
(config/tabular_LFM_bsds300.yaml, configs/lfm_official.py): 3 OU blocks h = 0.25 each +
a free block, 4x512 ELU, batch 500, 30,000 iterations per block, lr 2e-3 x0.8 every 4k,
one U(0, 1) t per pair, NO warm start (each block from a fresh initialisation).

Our choice (not official): Hutchinson divergence for the per-block and final NLL (the
official code takes exact traces; at 63-D each costs 63 JVPs per ODE step); set
--config.lfm.divergence=exact --config.eval.divergence=exact for exact traces.

    --config configs/lfm_bsds300.py                  official layout, test split, dopri5
    --config configs/lfm_bsds300.py:paper_nll        the paper's NLL (val split, Euler)
    --config configs/lfm_bsds300.py:quick            tiny, on the MAF files
    --config configs/lfm_bsds300.py:quick,standin    tiny, 63-D Gaussian mixture: < 1 min CPU
"""

from configs import lfm_official


def _make():
    config = lfm_official.tabular(
        "bsds300", step_sizes=(0.25, 0.25, 0.25), hidden=(512,) * 4, activation="elu",
        batch_size=500, steps_per_block=30_000, lr=2e-3, decay_rate=0.8,
        decay_every=4_000, warm_start=False)
    config.lfm.divergence = "hutchinson"
    config.eval.divergence = "hutchinson"
    return config


def get_config(arg: str = ""):
    return lfm_official.build(_make, arg, lfm_official.TABULAR_VARIANTS)
