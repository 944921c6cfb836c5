"""The lfm-jax side of the benchmarks: the flow-matching trainer, exactly as a user calls it."""

from __future__ import annotations

import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import data as data_lib
from lfm_jax import distributed, flow_matching, interpolants, networks, time_sampling, train

N_TRAIN = 50_000


def make_data(dim: int, n: int = N_TRAIN) -> np.ndarray:
    """The benchmark's training set: the 2-D checkerboard, else N(0, I) in `dim` dims."""
    key = jax.random.PRNGKey(0)
    if dim == 2:
        return np.asarray(data_lib.sample_checkerboard(key, n))
    return np.asarray(jax.random.normal(key, (n, dim)), np.float32)


class JaxTrainer:
    """Adam(lr), K steps fused per jitted call, of `loss` (default: plain FM with the
    linear path, t ~ U[0, 1], on `networks.velocity_mlp((dim,), hidden)`).

    Batches are drawn on device from the dataset replicated on the mesh. `step(n)`
    runs n steps (n a multiple of K), asynchronously; `sync()` blocks.
    `loss`, `init`: a batch loss (params, key, x1) -> (loss, aux) and key -> params.
    `compute_dtype`: the default network's `networks.COMPUTE_DTYPES` key ("bfloat16":
    bf16 matmuls and activations, float32 params).
    `optimizer`: an optax transformation (default `train.make_optimizer(lr=lr)`).
    """

    def __init__(self, dim, hidden, data, batch_size: int, *, steps_per_call: int = 1,
                 lr: float = 1e-3, seed: int = 0, ema_decay: float = 0.999, mesh=None,
                 loss=None, init=None, compute_dtype: str = "float32", optimizer=None):
        self.mesh = distributed.make_mesh() if mesh is None else mesh
        if loss is None:
            self.net = networks.velocity_mlp((dim,), hidden=tuple(hidden),
                                             compute_dtype=compute_dtype)
            loss = flow_matching.make_loss(self.net.apply, interpolants.linear(),
                                           time_sampling.get("uniform"))
            init = self.net.init
        opt = train.make_optimizer(lr=lr) if optimizer is None else optimizer
        self.k = int(steps_per_call)
        self.step_fn = train.make_train_step(
            loss, opt, sample_batch=flow_matching.make_sample_batch(batch_size),
            steps_per_call=self.k, ema_decay=ema_decay, mesh=self.mesh)
        key = jax.random.PRNGKey(seed)
        k_init, k_state = jax.random.split(key)
        self.state = train.create_train_state(k_state, init(k_init), opt,
                                              mesh=self.mesh)
        self.data = distributed.replicate(jnp.asarray(data, jnp.float32), self.mesh)
        self.steps = 0
        self._metrics = None

    def step(self, n: int = 1):
        if n % self.k:
            raise ValueError(f"n={n} is not a multiple of steps_per_call={self.k}")
        for _ in range(n // self.k):
            self.state, self._metrics = self.step_fn(self.state, self.data)
        self.steps += n
        return self._metrics

    def sync(self):
        jax.block_until_ready((self.state, self._metrics))

    def params(self, ema: bool = False):
        return jax.device_get(self.state.ema_params if ema else self.state.params)


def peak_memory_bytes() -> int | None:
    """Peak bytes in use on the first device since the process started (None: the
    backend keeps no statistics, e.g. the CPU). JAX cannot reset this counter, so one
    measurement needs one process: see `experiments.benchmarks.jax_memory`."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else int(stats.get("peak_bytes_in_use", 0)) or None


def device_info() -> dict:
    dev = jax.devices()[0]
    return {"jax": jax.__version__, "jax_device": dev.device_kind, "jax_platform": dev.platform,
            "jax_device_count": jax.device_count(), "host": platform.node(),
            "cpu": platform.processor() or platform.machine()}


def time_trainer(trainer, unit: int, seconds: float, min_calls: int = 3) -> float:
    """Steps per second of trainer.step(unit) over about `seconds` (one synchronised
    call first to size the window; then at least min_calls calls, synchronised)."""
    t0 = time.perf_counter()
    trainer.step(unit)
    trainer.sync()
    one = max(time.perf_counter() - t0, 1e-6)
    calls = max(min_calls, int(seconds / one))
    t0 = time.perf_counter()
    for _ in range(calls):
        trainer.step(unit)
    trainer.sync()
    return calls * unit / (time.perf_counter() - t0)
