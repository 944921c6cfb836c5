"""The fastest torch step a user can write for the benchmark's flow-matching step.

Same network (`peers.MLP`), data, loss and optimiser (Adam 1e-3) as the peers; the loss
is plain flow matching written out (x0 ~ N(0, I), t ~ U[0, 1], x_t = (1 - t) x0 + t x1,
target x1 - x0, mean squared error), which is what each peer computes, without the
peers' Python-side wrappers. Two ways to remove torch's per-op launch overhead:

- `GraphTrainer`: the WHOLE step (batch indices, noise and times drawn on the GPU,
  forward, backward, Adam) captured once in a CUDA graph (`torch.cuda.graph`) and
  replayed per step. Random numbers come from the default CUDA generator, which torch
  advances per replay (philox offsets), so every replay draws fresh batches; Adam is
  `fused=True, capturable=True` (its step count and lr live on the GPU). Gradients are
  allocated inside the graph (set_to_none before capture), so each replay overwrites
  them.
- `CompiledTrainer`: `torch.compile` of the loss (sampling + forward; AOTAutograd
  compiles its backward) and of `opt.step()`, in a given mode ("reduce-overhead" =
  inductor kernels replayed through CUDA graphs, "max-autotune-no-cudagraphs" = inductor
  with autotuned matmul kernels, "default").

precision: "fp32" (torch's default: full float32 matmuls), "tf32" (the matmuls on TF32
tensor cores, `torch.backends.cuda.matmul.allow_tf32`, as JAX's default precision on a
GPU), "bf16" (`torch.autocast(dtype=torch.bfloat16)` around the forward, TF32 elsewhere).
The flag is global in torch, so `precision_scope` sets it around every call of a trainer.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np
import torch

from experiments.benchmarks import peers

PRECISIONS = ("fp32", "tf32", "bf16")


@contextlib.contextmanager
def precision_scope(precision: str):
    """Sets torch's TF32 matmul / cuDNN flags for `precision`, restoring them after."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = precision != "fp32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def fm_loss(mlp, data, batch_size: int, precision: str):
    """Plain flow-matching loss of a batch drawn on data's device (no host sync)."""
    n, device = data.shape[0], data.device
    idx = torch.randint(0, n, (batch_size,), device=device)
    x1 = torch.index_select(data, 0, idx)
    x0 = torch.randn_like(x1)
    t = torch.rand(batch_size, device=device)
    xt = (1.0 - t[:, None]) * x0 + t[:, None] * x1
    ctx = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
           else contextlib.nullcontext())
    with ctx:
        v = mlp(xt, t)
    return torch.mean((v.float() - (x1 - x0)) ** 2)


class _Base:
    def __init__(self, dim, hidden, data: np.ndarray, batch_size: int, *, lr: float,
                 seed: int, device: str, precision: str):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; known: {PRECISIONS}")
        torch.manual_seed(seed)
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.mlp = peers.MLP(dim, hidden).to(self.device)
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32,
                                    device=self.device)
        self.lr = lr
        self.steps = 0
        self.setup_s = None

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()


class GraphTrainer(_Base):
    """One CUDA graph per step: sampling, forward, backward and fused Adam (CUDA only)."""

    def __init__(self, dim, hidden, data, batch_size, *, lr: float = 1e-3, seed: int = 0,
                 device: str = "cuda", precision: str = "tf32", warmup: int = 3):
        super().__init__(dim, hidden, data, batch_size, lr=lr, seed=seed, device=device,
                         precision=precision)
        if self.device.type != "cuda":
            raise RuntimeError("GraphTrainer needs CUDA (torch.cuda.graph)")
        t0 = time.perf_counter()
        self.opt = torch.optim.Adam(self.mlp.parameters(), lr=lr, fused=True,
                                    capturable=True)
        with precision_scope(precision):
            # Warm up on a side stream (the allocator and cuBLAS workspaces), then capture.
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.opt.zero_grad(set_to_none=True)
                    fm_loss(self.mlp, self.data, self.batch_size, precision).backward()
                    self.opt.step()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(self.graph):
                self.loss = fm_loss(self.mlp, self.data, self.batch_size, precision)
                self.loss.backward()
                self.opt.step()
        self.sync()
        self.setup_s = time.perf_counter() - t0

    def step(self, n: int = 1):
        for _ in range(n):
            self.graph.replay()
        self.steps += n
        return self.loss


class CompiledTrainer(_Base):
    """torch.compile(mode) of the loss (sampling + forward, backward by AOTAutograd) and
    of Adam's step; zero_grad and backward() are called from Python per step."""

    def __init__(self, dim, hidden, data, batch_size, *, lr: float = 1e-3, seed: int = 0,
                 device: str = "cuda", precision: str = "tf32",
                 mode: str = "max-autotune-no-cudagraphs", warmup: int = 3):
        super().__init__(dim, hidden, data, batch_size, lr=lr, seed=seed, device=device,
                         precision=precision)
        self.mode = mode
        cuda = self.device.type == "cuda"
        # capturable keeps Adam's state on the GPU, which the cudagraph modes need.
        self.opt = torch.optim.Adam(self.mlp.parameters(), lr=lr, capturable=cuda,
                                    foreach=True)
        mlp, data_t, b = self.mlp, self.data, self.batch_size
        self._loss = torch.compile(lambda: fm_loss(mlp, data_t, b, precision), mode=mode)
        self._opt_step = torch.compile(self.opt.step, mode=mode)
        t0 = time.perf_counter()
        for _ in range(warmup):  # compiles (and records the CUDA graphs)
            self.step(1)
        self.sync()
        self.setup_s = time.perf_counter() - t0
        self.steps = 0

    def step(self, n: int = 1):
        with precision_scope(self.precision):
            for _ in range(n):
                if self.mode == "reduce-overhead":
                    torch.compiler.cudagraph_mark_step_begin()
                loss = self._loss()
                loss.backward()
                self._opt_step()
                self.opt.zero_grad(set_to_none=True)
        self.steps += n
        return loss


def matmul_params(mlp: torch.nn.Module) -> int:
    """Number of weights that enter matrix products (Linear weights, no biases)."""
    return sum(m.weight.numel() for m in mlp.modules() if isinstance(m, torch.nn.Linear))


# Dense (no sparsity) peak tensor-core throughput, FLOP/s, by device name (substring,
# first match): from NVIDIA's data sheets (H100 SXM5 / H200: 494.7 TF32, 989.4 BF16;
# the "with sparsity" figures are twice these).
PEAK_FLOPS = (
    ("H200", {"tf32": 494.7e12, "bf16": 989.4e12}),
    ("H100 PCIe", {"tf32": 378.0e12, "bf16": 756.0e12}),
    ("H100", {"tf32": 494.7e12, "bf16": 989.4e12}),
    ("A100", {"tf32": 156.0e12, "bf16": 312.0e12}),
)


def peak_flops(device_name: str) -> dict | None:
    """{"tf32": FLOP/s, "bf16": FLOP/s} dense peaks for a device name, or None."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_name.lower():
            return {"matched": key, **peaks}
    return None
