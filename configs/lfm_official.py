"""The official Local Flow Matching layouts (issue 10; docs/official_lfm.md), shared by
the `configs/lfm_<data>.py` files. Not a config itself: the experiment files call
`build(make, arg, variants)`.

Every official layout is L OU blocks with explicit step sizes followed by one free block
(x_r ~ N(0, I) independent of x_l): `lfm.step_sizes` = the L OU step sizes,
`lfm.free_last_block = True`, `lfm.num_blocks = 0` (= L + 1). All official runs: trig
interpolant, time concatenated raw to x (no Fourier features), torch.nn.Linear
initialisation, Adam without EMA (train.ema_decay 0, eval.use_ema False), warm-up or
gradient clipping, the lr decayed by a step schedule (torch StepLR, one step per
batch), a fresh optimiser each block (always, in lfm_jax), pushes with dopri5 at
rtol = atol = 1e-5.

Variants (`--config configs/lfm_<data>.py:<variant>[,<variant>]`):
  quick:     the same block layout (L OU + free), tiny networks of the same depth, a
             few steps per block, small batches and evaluation sets, loose ODE
             tolerances: trains end to end on a CPU (2-D: under a minute; tabular: see standin).
  standin:   tabular only: the Gaussian-mixture stand-in of the data set's dimension
             (`<name>_gmm`, 50,000 rows, exact density, no download) instead of the MAF
             files. `quick` on the full MAF files pushes the whole training split through
             every block (minutes on a CPU); `quick,standin` is under a minute.
  paper_nll: the paper's tabular evaluation: NLL on the MAF validation split with a
             fixed-step Euler log-determinant on the official grid
             torch.linspace(0, 1, 150), i.e. 149 Euler steps (eval.split "val",
             eval.ode.solver "euler", eval.ode.num_steps 149). lfm_jax's num_steps is
             the number of steps: num_steps=150 gives 150 steps of 1/150.
"""

from configs import default

# 2-D: the step sizes of the official YAML files (config/2d_LFM_{rose,tree}.yaml), the
# 3-decimal values of 0.025 * 1.25^k, k = 0..7.
TOY_2D_STEP_SIZES = (0.025, 0.031, 0.039, 0.049, 0.061, 0.076, 0.095, 0.119)


def _official_base(config) -> None:
    """The settings shared by every official layout (module docstring)."""
    config.method = "lfm"
    config.model.time_embedding = "raw"
    config.model.weight_init = "torch"
    config.lfm.num_blocks = 0  # len(step_sizes) OU blocks + the free block
    config.lfm.free_last_block = True
    config.lfm.warm_start = True
    config.lfm.interpolant = "trig"
    config.lfm.time_sampler = "uniform"
    config.lfm.times_per_pair = 1
    config.lfm.push_ode.solver = "dopri5"
    config.lfm.push_ode.rtol = config.lfm.push_ode.atol = 1e-5
    config.lfm.n_val = 5_000
    config.train.schedule = "step"
    config.train.warmup_steps = 0
    config.train.grad_clip = 0.0
    config.train.weight_decay = 0.0
    config.train.ema_decay = 0.0
    config.eval.use_ema = False
    config.eval.ode.solver = "dopri5"
    config.eval.ode.rtol = config.eval.ode.atol = 1e-5


def toy_2d(name: str):
    """The official 2-D layout (rose, tree; also used for checkerboard and 8 gaussians):
    8 OU blocks (TOY_2D_STEP_SIZES) + free, 3x256 Softplus(beta=20), batch 10,000,
    50,000 iterations per block, lr 2e-4 x0.99 every 1,000, one U(0, 1) t per pair,
    warm start; 2,000,000 training and 100,000 test samples (main_2d.py)."""
    config = default.get_config()
    _official_base(config)
    config.data.name = name
    config.data.n_train = 2_000_000
    config.data.n_val = 5_000
    config.data.n_test = 100_000
    config.model.hidden = (256,) * 3
    config.model.activation = "softplus"
    config.model.softplus_beta = 20.0
    config.lfm.step_sizes = TOY_2D_STEP_SIZES
    config.lfm.steps_per_block = 50_000
    config.lfm.chunk_size = 50_000
    config.train.batch_size = 10_000
    config.train.lr = 2e-4
    config.train.decay_rate = 0.99
    config.train.decay_every = 1_000
    config.train.steps_per_call = 500
    config.train.checkpoint_every = 5_000
    config.eval.n_samples = 10_000
    config.eval.nll_examples = 100_000
    config.eval.chunk_size = 10_000
    return config


def tabular(name: str, *, step_sizes, hidden, activation: str, batch_size: int,
            steps_per_block: int, lr: float, decay_rate: float, decay_every: int,
            times_per_pair: int = 1, beta_b: float = 1.0, warm_start: bool = True):
    """An official MAF tabular layout (config/tabular_LFM_<name>.yaml): the test split
    scored with an adaptive dopri5 (rtol = atol = 1e-5) by default (`paper_nll` for the
    paper's protocol). t ~ Beta(1, beta_b) (uniform when beta_b = 1)."""
    config = default.get_config()
    _official_base(config)
    config.data.name = name
    config.model.hidden = tuple(hidden)
    config.model.activation = activation
    config.lfm.step_sizes = tuple(step_sizes)
    config.lfm.steps_per_block = steps_per_block
    config.lfm.times_per_pair = times_per_pair
    config.lfm.warm_start = warm_start
    if beta_b != 1.0:
        config.lfm.time_sampler = "beta"
        config.lfm.beta_a, config.lfm.beta_b = 1.0, float(beta_b)
    config.lfm.chunk_size = 10_000
    config.train.batch_size = batch_size
    config.train.lr = lr
    config.train.decay_rate = decay_rate
    config.train.decay_every = decay_every
    config.train.steps_per_call = 500
    config.train.checkpoint_every = 5_000
    config.eval.nll_examples = 1_000_000  # the whole split
    config.eval.n_samples = 10_000
    config.eval.chunk_size = 10_000
    return config


# ------------------------------------------------------------------------ variants

def _quick(config) -> None:
    """Tiny CPU settings with the same block layout (module docstring)."""
    config.model.hidden = tuple(min(w, 64) for w in config.model.hidden)
    config.data.n_train, config.data.n_val, config.data.n_test = 2_000, 500, 500
    config.lfm.steps_per_block = 40
    config.train.batch_size = min(config.train.batch_size, 256)
    config.train.steps_per_call = 20
    config.train.checkpoint_every = 40
    config.train.lr = max(config.train.lr, 2e-3)
    config.train.decay_every = 20
    # One chunk shape and one set of ODE options for pushes, per-block val log-dets,
    # the test NLL and sampling: the compiled solves are shared (compile time dominates).
    config.lfm.n_val = config.eval.nll_examples = config.eval.n_samples = 500
    config.lfm.chunk_size = config.eval.chunk_size = 500
    config.lfm.push_ode.rtol = config.lfm.push_ode.atol = 1e-3
    config.eval.ode.rtol = config.eval.ode.atol = 1e-3


def _standin(config) -> None:
    """Tabular: the `<name>_gmm` Gaussian-mixture stand-in (lfm_jax.tabular.standin)."""
    if not config.data.name.endswith("_gmm"):
        config.data.name = config.data.name + "_gmm"


def _paper_nll(config) -> None:
    config.eval.split = "val"
    config.eval.ode.solver = "euler"
    config.eval.ode.num_steps = 149  # torch.linspace(0, 1, 150): 150 points, 149 steps


VARIANTS = {"quick": _quick, "standin": _standin, "paper_nll": _paper_nll}
TOY_VARIANTS = ("quick",)
TABULAR_VARIANTS = ("quick", "standin", "paper_nll")


def build(make, arg: str = "", allowed=TOY_VARIANTS):
    """make() (an unlocked official config) with the comma-separated variants of arg
    (each one of `allowed`) applied in order; locked."""
    variants = [v.strip() for v in (arg or "").split(",") if v.strip()]
    unknown = [v for v in variants if v not in allowed]
    if unknown:
        raise ValueError(f"unknown config variant(s) {unknown} in {arg!r}; known: "
                         f"{sorted(allowed)}")
    config = make()
    for v in variants:
        VARIANTS[v](config)
    return default.locked(config)
