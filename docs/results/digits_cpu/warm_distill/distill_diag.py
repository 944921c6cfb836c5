"""experiments.distill_lfm with the LMD time-pair sampler putting a fraction of every batch
on the diagonal s = t (flow_map.upper_triangle's diagonal_fraction), via BlockDistiller's
loss_kwargs. Usage: DIAG=0.5 python distill_diag.py <distill_lfm flags>"""
import os, sys
sys.path.insert(0, os.getcwd())  # run from the repository root
from absl import app
from lfm_jax import distill
frac = float(os.environ.get("DIAG", "0.5"))
orig = distill.BlockDistiller.__init__
def init(self, **kw):
    kw["loss_kwargs"] = {**(kw.get("loss_kwargs") or {}), "sampler_kwargs": {"diagonal_fraction": frac}}
    orig(self, **kw)
distill.BlockDistiller.__init__ = init
from experiments import distill_lfm
app.run(distill_lfm.main)
