"""Local Flow Matching on MAF-preprocessed HEPMASS (21-D; lfm_jax.tabular; set
--config.data.path or $LFM_DATA to the extracted MAF data folder).

The official code has no HEPMASS run: this layout is OUR CHOICE, in the style of the
official POWER / MINIBOONE configs (configs/lfm_official.py: trig, raw time, torch
init, no EMA or clipping, step-decay lr, warm start, dopri5 pushes at 1e-5): POWER's 3
OU blocks h = 0.15, 0.2, 0.26 + a free block, MINIBOONE's 4x362 ReLU (21-D lies between
POWER's 6 and MINIBOONE's 43), batch 10,000, 100,000 iterations per block, lr 2e-3
x0.99 every 1k, one U(0, 1) t per pair. Untuned.

    --config configs/lfm_hepmass.py                  our layout, test split, dopri5
    --config configs/lfm_hepmass.py:paper_nll        val split, Euler (as the paper's)
    --config configs/lfm_hepmass.py:quick            tiny, on the MAF files
    --config configs/lfm_hepmass.py:quick,standin    tiny, 21-D Gaussian mixture: < 1 min CPU
"""

from configs import lfm_official


def _make():
    return lfm_official.tabular(
        "hepmass", step_sizes=(0.15, 0.2, 0.26), hidden=(362,) * 4, activation="relu",
        batch_size=10_000, steps_per_block=100_000, lr=2e-3, decay_rate=0.99,
        decay_every=1_000)


def get_config(arg: str = ""):
    return lfm_official.build(_make, arg, lfm_official.TABULAR_VARIANTS)
