"""U-Net flow-matching training throughput (issue 11): lfm-jax vs torchcfm's CIFAR-10 step.

    python -m experiments.benchmarks.unet_throughput [--batch=128] [--seconds=3] \
        [--repeats=3] [--fused=10] [--dtypes=float32,bfloat16] \
        [--torch_rows=eager,autocast,compile] [--devices=1] [--out=DIR] \
        [--peak_bf16=989.4e12] [--peak_tf32=494.7e12] [--tiny] [--skip_torch]

On a GPU (several minutes: on an H100 XLA compiled ours' 10-step fused program in 79 s
(fp32) and 74 s (bf16) in the memory subprocesses alone, so a 200 s limit ended the run
before any timing; give it 10 minutes, or --nomemory for a shorter run, which reports
the JAX allocator's peak for ours' first row and XLA's static memory estimate of the
compiled step for the others):

    python -m experiments.benchmarks.unet_throughput --seconds=3 --repeats=3 \
        --out=experiments/benchmarks/results_gpu/unet

(the same as `bash experiments/benchmarks/run_gpu_throughput.sh unet`).
A second try on an H100 (--nomemory, 400 s limit) was killed inside torch.compile:
set-up took 123 s (ours fp32), 158 s (ours bf16), 42 s (torchcfm eager) and 20 s
(autocast). Every row is timed once right after it is built and its rate printed
("<row>: first timing ... images/s"), so a run cut short still leaves numbers in the
log; the other --repeats are interleaved across the rows at the end. A third try
(--nomemory --seconds=2 --repeats=2, another H100) finished in 320 s: ours 3,195
images/s fp32 and 5,404 bf16 against torchcfm's best 2,023 (torch.compile); the table
is in BENCHMARKS.md section 7.

Prints a Markdown table and writes unet_throughput.json / unet_throughput.md in --out:
images/s, model FLOP utilisation (MFU), peak device memory and setup seconds of one
training step of the CIFAR-10 U-Net, per implementation.

The step, on both sides as torchcfm's examples/images/cifar10/train_cifar10.py trains
(unconditional): x1 a batch of images, x0 ~ N(0, I), t ~ U[0, 1], x_t = (1 - t) x0 +
t x1, target x1 - x0 (sigma = 0 conditional flow matching, `ConditionalFlowMatcher(
sigma=0)`), squared error, Adam (lr 2e-4, linear warm-up over 5000 steps), gradient
norm clipped at 1, EMA of the weights (decay 0.9999), dropout 0.1 in the residual
blocks (--dropout; --nodropout turns it off on both sides). The data are random
tensors on the device (a pool of --pool images; each step draws its batch from it on
the device): the benchmark measures the training step, not a data pipeline.

- ours: `unet.velocity_unet(**unet.preset("cifar10"))` trained by lfm_jax's own step
  (`train.make_train_step` through `ours.JaxTrainer`: --fused steps per jitted call,
  lax.scan; the batch drawn on device by `flow_matching.make_sample_batch`), with
  `train.make_optimizer(2e-4, warmup_steps=5000, grad_clip=1.0)` and ema_decay 0.9999.
  The loss is `flow_matching.make_loss` (linear interpolant, uniform t; with
  --dropout, the default as torchcfm, `dropout=True`: one dropout key per example, as
  the FM job trains a U-Net with dropout). One row per --dtypes entry: "float32" (XLA's default precision: TF32
  convolutions and matmuls on the GPU) and "bfloat16" (`dtype="bfloat16"`: bf16
  compute, float32 parameters, optimiser and loss).
- torchcfm: `UNetModelWrapper(dim=(3, 32, 32), num_res_blocks=2, num_channels=128,
  channel_mult=[1, 2, 2, 2], num_heads=4, num_head_channels=64,
  attention_resolutions="16", dropout=0.1)`, `ConditionalFlowMatcher(sigma=0.0)`,
  `torch.optim.Adam(lr=2e-4)` with the example's LambdaLR warm-up,
  `clip_grad_norm_(1.0)`, EMA by `torch._foreach_lerp_` (the example's per-tensor
  loop, in one call). Rows (--torch_rows): "eager" float32 with TF32 matmuls and
  convolutions allowed (`torch.backends.cuda.matmul.allow_tf32` and
  `torch.backends.cudnn.allow_tf32`), "autocast" (`torch.autocast("cuda",
  dtype=torch.bfloat16)` around the forward), "compile" (`torch.compile(model,
  mode=--compile_mode)` under the same autocast). cuDNN autotuning
  (`torch.backends.cudnn.benchmark`) is on (--cudnn_benchmark), as XLA autotunes its
  convolutions. On a CPU only the eager row runs (bf16 autocast and torch.compile
  are GPU rows).

Parameter counts of both networks are reported side by side; a difference above 2 %
is printed as a warning (nothing is adjusted).

FLOPs per step:
- ours: XLA's cost analysis of the timed program. "xla_compiled" is
  `compiled.cost_analysis()["flops"]` of the optimised program as it runs
  (convolutions and dots as 2 x multiply-adds, counting only the taps of a 3x3
  window that fall inside the image, not the zero padding, plus one FLOP per element
  of every elementwise op and reduction: GroupNorm, SiLU, softmax, Adam, EMA; XLA
  counts the body of the fused lax.scan ONCE, whatever its trip count, so this is one
  step);
  "xla_lowered" is `lowered.cost_analysis()` of the same program before optimisation.
- torch: `torch.utils.flop_counter.FlopCounterMode` over one eager step (forward and
  backward): the FLOPs of matrix products, convolutions and attention only
  (2 x multiply-adds, the whole window, padding included), nothing elementwise. On
  small feature maps the padding makes the difference (the tiny 8x8 net: XLA 0.66 G,
  torch 0.78 G per step).
MFU = (model FLOPs per step) x (steps/s) / (dense peak of the row's precision):
--peak_tf32 for float32 rows (TF32 tensor cores), --peak_bf16 for bf16 rows (defaults:
H100 / H200 SXM). The model FLOPs are the SAME number for every row (a property of
the model, not of the implementation): torch's counter when torch runs, else XLA's
compiled count (then the column says so). MFU is reported on a GPU only.

Timing: every trainer is built and warmed up first (compilation excluded; its
seconds are the "setup" column), then timed in turn, --repeats times, each
measurement about --seconds long (calls until then, then `block_until_ready` /
`torch.cuda.synchronize`), and the median is reported, so a background load hits
every side alike.

Peak memory: torch's `max_memory_allocated` over building and warming up one trainer,
the counter reset first, minus what was allocated before. Ours: JAX's
`memory_stats()["peak_bytes_in_use"]` cannot be reset, so each of our configurations
is built and run (a few calls) in a fresh subprocess of this script (--child) with
XLA_PYTHON_CLIENT_PREALLOCATE=false, one after another, before any timing (as
`jax_memory.py` does for the MLP benchmark). The main process caps JAX's preallocation
at --jax_mem_fraction so torch has room beside it. No statistics on a CPU. The
children compile into a fresh persistent compilation cache that the main process then
reads, so each of our programs is compiled once: our setup seconds are the child's
cold compilation (the JSON also has the main process's "setup_s_from_cache").
With --nomemory (or where a child failed) ours' first row reports the JAX allocator's
peak_bytes_in_use after compiling and running it (`device.memory_stats()`; it never
resets, so only the first row of a process is its own; the JSON's
"allocator_peak_bytes_so_far" for every row), the later rows XLA's static estimate of
the compiled step's peak (`compiled.memory_analysis()`, buffer assignment of
arguments, outputs and temporaries; the JSON's "xla_peak_bytes", recorded for every
row of ours) and the table says so.

--devices N (N > 1): ours also runs data parallel over the first N local devices
(a 1-D "data" mesh, `distributed.make_mesh`; the batch sharded with NamedSharding,
the state replicated), with the per-device batch kept at --batch (global batch N x
--batch); the "scaling" column is its images/s over the 1-device row's.

--tiny: a small U-Net (8x8x3 images, 32 channels, channel_mult (1, 2), one residual
block per level, attention at 4x4), batch 8 and short windows, so the whole script
runs on a CPU in about a minute: a check that everything runs, not a measurement.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app, flags

flags.DEFINE_integer("batch", 128, "Batch size per device (torchcfm's example: 128).")
flags.DEFINE_integer("fused", 10, "Steps fused per jitted call for lfm-jax (lax.scan).")
flags.DEFINE_float("seconds", 3.0, "Duration of one timing measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per row (median reported).")
flags.DEFINE_string("dtypes", "float32,bfloat16", "lfm-jax compute dtypes (rows).")
flags.DEFINE_string("torch_rows", "eager,autocast,compile",
                    "torchcfm rows: eager (float32, TF32), autocast (bf16), compile.")
flags.DEFINE_string("compile_mode", "default", "torch.compile mode of the compile row.")
flags.DEFINE_bool("cudnn_benchmark", True, "torch.backends.cudnn.benchmark (autotuning).")
flags.DEFINE_bool("dropout", True, "Dropout 0.1 in training on both sides (torchcfm's).")
flags.DEFINE_integer("pool", 2048, "Random images on the device that batches come from.")
flags.DEFINE_integer("devices", 1, "Also run ours data parallel over this many devices.")
flags.DEFINE_float("lr", 2e-4, "Adam learning rate (after warm-up).")
flags.DEFINE_integer("warmup", 5000, "Linear learning-rate warm-up steps.")
flags.DEFINE_float("grad_clip", 1.0, "Global gradient-norm clip.")
flags.DEFINE_float("ema_decay", 0.9999, "EMA decay of the weights.")
flags.DEFINE_float("peak_bf16", 989.4e12, "Dense bf16 peak FLOP/s (H100/H200 SXM).")
flags.DEFINE_float("peak_tf32", 494.7e12, "Dense TF32 peak FLOP/s (H100/H200 SXM).")
flags.DEFINE_float("jax_mem_fraction", 0.4,
                   "XLA_PYTHON_CLIENT_MEM_FRACTION of the main process (unless set).")
flags.DEFINE_bool("memory", True, "Measure ours' peak memory in subprocesses (GPU).")
flags.DEFINE_bool("tiny", False, "Tiny U-Net and short windows: a CPU check.")
flags.DEFINE_bool("skip_torch", False, "Run lfm-jax only.")
flags.DEFINE_string("out", "benchmark_results/unet", "Output directory.")
flags.DEFINE_string("child", "", "Internal: measure the peak memory of this variant.")
flags.DEFINE_string("cache_dir", "", "Internal: the run's compilation cache (children).")
FLAGS = flags.FLAGS

RATIO_WARN = 0.02  # parameter counts further apart than this are flagged

# torchcfm's CIFAR-10 network (examples/images/cifar10/train_cifar10.py) and ours.
CIFAR10 = {
    "ours": {"preset": "cifar10"},
    "torch": dict(dim=(3, 32, 32), num_res_blocks=2, num_channels=128,
                  channel_mult=[1, 2, 2, 2], num_heads=4, num_head_channels=64,
                  attention_resolutions="16", dropout=0.1),
}
# torchcfm's GroupNorm has 32 groups, so channels stay multiples of 32.
TINY = {
    "ours": dict(example_shape=(8, 8, 3), channels=32, channel_mult=(1, 2),
                 num_res_blocks=1, attention_resolutions=(4,), dropout=0.1,
                 num_head_channels=32, num_groups=32),
    "torch": dict(dim=(3, 8, 8), num_res_blocks=1, num_channels=32, channel_mult=[1, 2],
                  num_heads=1, num_head_channels=32, attention_resolutions="4",
                  dropout=0.1),
}


def settings() -> dict:
    """The run's effective sizes (--tiny shrinks the network, batch and windows)."""
    if FLAGS.tiny:
        return {"config": TINY, "batch": min(FLAGS.batch, 8), "fused": min(FLAGS.fused, 2),
                "seconds": min(FLAGS.seconds, 0.5), "repeats": min(FLAGS.repeats, 2),
                "pool": min(FLAGS.pool, 64)}
    return {"config": CIFAR10, "batch": FLAGS.batch, "fused": FLAGS.fused,
            "seconds": FLAGS.seconds, "repeats": FLAGS.repeats, "pool": FLAGS.pool}


def our_unet_kwargs(config: dict, dtype: str, dropout: bool) -> dict:
    from lfm_jax import unet

    spec = config["ours"]
    kw = unet.preset(spec["preset"]) if "preset" in spec else dict(spec)
    kw["dtype"] = dtype
    if not dropout:
        kw["dropout"] = 0.0
    return kw


def torch_unet_kwargs(config: dict, dropout: bool) -> dict:
    return {**config["torch"], **({} if dropout else {"dropout": 0.0})}


# ----------------------------------------------------------------------- lfm-jax side


def our_variants(dtypes, devices: int) -> dict:
    """name -> (compute dtype, devices)."""
    short = {"float32": "fp32", "bfloat16": "bf16"}
    out = {f"ours_{short.get(d, d)}": (d, 1) for d in dtypes}
    if devices > 1:
        out.update({f"ours_{short.get(d, d)}_x{devices}": (d, devices) for d in dtypes})
    return out


def build_ours(dtype: str, devices: int, s: dict):
    """(trainer with its step compiled, setup seconds, info): ours.JaxTrainer on
    velocity_unet, the jitted step lowered and compiled explicitly (the compiled
    executable is what is timed; its cost analysis gives the FLOPs)."""
    import jax
    import numpy as np

    from experiments.benchmarks import ours
    from lfm_jax import distributed, flow_matching, interpolants, time_sampling, train, unet

    t0 = time.perf_counter()
    net = unet.velocity_unet(**our_unet_kwargs(s["config"], dtype, FLAGS.dropout))
    interp = interpolants.linear()
    loss = flow_matching.make_loss(net.apply, interp, time_sampling.get("uniform"),
                                   dropout=FLAGS.dropout)
    mesh = distributed.make_mesh(devices)
    batch = s["batch"] * devices
    distributed.check_batch_size(batch, mesh)
    opt = train.make_optimizer(lr=FLAGS.lr, warmup_steps=FLAGS.warmup,
                               total_steps=FLAGS.warmup + 1, grad_clip=FLAGS.grad_clip)
    pool = np.asarray(jax.random.normal(jax.random.PRNGKey(1),
                                        (s["pool"],) + net.example_shape), np.float32)
    trainer = ours.JaxTrainer(None, (), pool, batch, steps_per_call=s["fused"], mesh=mesh,
                              loss=loss, init=net.init, optimizer=opt,
                              ema_decay=FLAGS.ema_decay)
    lowered = trainer.step_fn.lower(trainer.state, trainer.data)
    compiled = lowered.compile()
    trainer.step_fn = compiled
    trainer.step(s["fused"])
    trainer.sync()
    setup_s = time.perf_counter() - t0
    info = {"params": int(net.num_params(trainer.state.params)),
            "xla_peak_bytes": _xla_peak_bytes(compiled),
            "xla_compiled": _flops(compiled.cost_analysis()),
            "xla_lowered": _flops(lowered.cost_analysis()), "global_batch": batch,
            "allocator_peak_bytes": ours.peak_memory_bytes()}  # cumulative: see main
    return trainer, setup_s, info


def _xla_peak_bytes(compiled):
    """XLA's static estimate of the program's peak device memory (its buffer
    assignment: arguments, outputs and temporaries, aliased buffers once), from
    `compiled.memory_analysis()`; None where the backend gives none."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001  (not every backend implements it)
        return None
    if m is None:
        return None
    peak = getattr(m, "peak_memory_in_bytes", None)
    if peak is None:
        peak = (m.argument_size_in_bytes + m.output_size_in_bytes
                + m.temp_size_in_bytes - m.alias_size_in_bytes)
    return int(peak)


def _flops(analysis):
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def child_main(name: str):
    """Subprocess: build, run a few calls, print {"peak_bytes": ...} (one JSON line)."""
    from experiments.benchmarks import ours
    from lfm_jax import compilation_cache

    if FLAGS.cache_dir:
        compilation_cache.enable(FLAGS.cache_dir)
    s = settings()
    dtype, devices = our_variants(_dtypes(), FLAGS.devices)[name]
    trainer, setup_s, info = build_ours(dtype, devices, s)
    trainer.step(2 * s["fused"])
    trainer.sync()
    print(json.dumps({"peak_bytes": ours.peak_memory_bytes(), "setup_s": setup_s, **info}))


def measure_our_memory(names, cache_dir: str) -> dict:
    """name -> the child's JSON ({"peak_bytes", "setup_s", ...}; {} on error), one fresh
    subprocess each, in turn. They compile into `cache_dir` (JAX's persistent cache),
    so this process then loads those executables instead of compiling them again."""
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    env.pop("XLA_PYTHON_CLIENT_MEM_FRACTION", None)
    out = {}
    for name in names:
        cmd = [sys.executable, "-m", "experiments.benchmarks.unet_throughput",
               *sys.argv[1:], f"--child={name}", f"--cache_dir={cache_dir}"]
        t0 = time.perf_counter()
        try:
            res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        except subprocess.TimeoutExpired:
            print(f"memory {name}: timeout", flush=True)
            out[name] = {}
            continue
        if res.returncode:
            tail = res.stderr.strip().splitlines()[-1:] or ["failed"]
            print(f"memory {name}: {tail[0]}", flush=True)
            out[name] = {}
            continue
        out[name] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"memory {name}: {out[name].get('peak_bytes')} bytes, compiled in "
              f"{out[name].get('setup_s', 0):.1f} s ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    return out


# ------------------------------------------------------------------------ torch side


def import_torch():
    """(torch, None) or (None, reason) when torch or torchcfm cannot be imported."""
    try:
        import torch
        import torchcfm.conditional_flow_matching  # noqa: F401
        import torchcfm.models.unet.unet  # noqa: F401
    except Exception as e:  # noqa: BLE001  (any import failure skips the torch rows)
        return None, f"{type(e).__name__}: {e}"
    return torch, None


class TorchCFMTrainer:
    """torchcfm's CIFAR-10 training step (train_cifar10.py) on a pool of random images.

    mode: "eager" (float32; TF32 as set globally), "autocast" (bf16 autocast around the
    forward), "compile" (torch.compile(model) under bf16 autocast).
    """

    def __init__(self, torch, kwargs: dict, pool, batch: int, *, mode: str, device: str,
                 compile_mode: str = "default", warmup_steps: int = 3, seed: int = 0):
        from torchcfm.conditional_flow_matching import ConditionalFlowMatcher
        from torchcfm.models.unet.unet import UNetModelWrapper

        t0 = time.perf_counter()
        self.torch, self.device = torch, torch.device(device)
        self.batch, self.pool = batch, pool
        torch.manual_seed(seed)
        self.model = UNetModelWrapper(**kwargs).to(self.device)
        self.model.train()
        self.params = [p for p in self.model.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.opt = torch.optim.Adam(self.params, lr=FLAGS.lr)
        warm = max(FLAGS.warmup, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda k: min(k, warm) / warm)
        self.fm = ConditionalFlowMatcher(sigma=0.0)
        self.net = (torch.compile(self.model, mode=compile_mode) if mode == "compile"
                    else self.model)
        self.autocast = mode in ("autocast", "compile")
        self.step(warmup_steps)
        self.sync()
        self.setup_s = time.perf_counter() - t0

    def step(self, n: int = 1):
        torch = self.torch
        for _ in range(n):
            self.opt.zero_grad(set_to_none=True)
            idx = torch.randint(0, self.pool.shape[0], (self.batch,), device=self.device)
            x1 = self.pool[idx]
            x0 = torch.randn_like(x1)
            t, xt, ut = self.fm.sample_location_and_conditional_flow(x0, x1)
            ctx = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.autocast
                   else contextlib.nullcontext())
            with ctx:
                vt = self.net(t, xt)
            loss = torch.mean((vt.float() - ut) ** 2)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, FLAGS.grad_clip)
            self.opt.step()
            self.sched.step()
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, self.params, 1.0 - FLAGS.ema_decay)

    def sync(self):
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()


def torch_step_flops(torch, trainer) -> float:
    """FLOPs of one eager step (forward + backward) by FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        trainer.step(1)
    trainer.sync()
    return float(counter.get_total_flops())


def build_torch(torch, mode, config, pool, batch, device):
    """(trainer, peak bytes or None): torch's counter reset before building."""
    kwargs = torch_unet_kwargs(config, FLAGS.dropout)
    if not device.startswith("cuda"):
        return TorchCFMTrainer(torch, kwargs, pool, batch, mode=mode, device=device,
                               compile_mode=FLAGS.compile_mode), None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    tr = TorchCFMTrainer(torch, kwargs, pool, batch, mode=mode, device=device,
                         compile_mode=FLAGS.compile_mode)
    torch.cuda.synchronize()
    return tr, torch.cuda.max_memory_allocated() - before


# --------------------------------------------------------------------------- timing


def time_trainer(trainer, unit: int, seconds: float) -> float:
    """Steps per second of trainer.step(unit) (`ours.time_trainer`, at least 2 calls)."""
    from experiments.benchmarks import ours

    return ours.time_trainer(trainer, unit, seconds, min_calls=2)


def _dtypes():
    return [d for d in FLAGS.dtypes.split(",") if d]


def markdown(result) -> str:
    mflops = result["model_flops_per_step"]
    lines = [f"U-Net flow-matching training step, batch {result['batch']} per device, "
             f"{result['device']}; model FLOPs/step = {mflops / 1e9:.2f} GFLOP "
             f"({result['model_flops_source']}).", "",
             "| implementation | precision | params | images/s | ms / step | TFLOP/s "
             "| MFU | peak memory (MiB) | setup (s) | scaling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in result["rows"].items():
        mem, mfu, sc = r.get("peak_memory_bytes"), r.get("mfu"), r.get("scaling")
        cells = [name, r["precision"], f"{r['params'] / 1e6:.2f}M",
                 f"{r['images_per_s']:.0f}", f"{1e3 / r['steps_per_s']:.1f}",
                 f"{r['model_flops_per_s'] / 1e12:.2f}",
                 f"{100 * mfu:.1f}%" if mfu is not None else "-",
                 (f"{mem / 2**20:.0f}" + ("*" if str(r.get("peak_memory_source")).startswith(
                     "XLA") else "")) if mem else "-", f"{r['setup_s']:.1f}",
                 f"{sc:.2f}x" if sc is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    f = result["flops_per_step"]
    lines += ["", "FLOPs per step: " + ", ".join(
        f"{k} {v / 1e9:.2f} G" for k, v in f.items() if v is not None) + "."]
    lines += result["notes"]
    return "\n".join(lines)


def main(argv):
    del argv
    if FLAGS.child:
        return child_main(FLAGS.child)
    s = settings()
    torch, why = (None, "--skip_torch") if FLAGS.skip_torch else import_torch()
    cuda = torch is not None and torch.cuda.is_available()
    notes = []
    if torch is None:
        notes.append(f"torchcfm rows skipped: {why}.")
    names = our_variants(_dtypes(), FLAGS.devices)
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", str(FLAGS.jax_mem_fraction))
    import jax

    platform = jax.devices()[0].platform
    # Ours' peak memory, one fresh process each (JAX keeps no statistics on a CPU).
    children, cache_dir = {}, None
    if FLAGS.memory and platform == "gpu":
        from lfm_jax import compilation_cache

        cache_dir = tempfile.mkdtemp(prefix="unet_throughput_cache_")
        children = measure_our_memory(names, cache_dir)
        compilation_cache.enable(cache_dir)
    on_gpu = platform == "gpu"
    device_name = jax.devices()[0].device_kind
    trainers, setup, info, memory, precision = {}, {}, {}, {}, {}
    samples = {}

    def first_timing(name):
        """Time a row once as soon as it is built and print its rate, so that a run cut
        short (a device call's time limit) still leaves numbers in its log; the other
        repeats are interleaved across rows below."""
        tr, unit, batch = trainers[name]
        samples[name] = [time_trainer(tr, unit, s["seconds"])]
        print(f"{name}: first timing {samples[name][0] * batch:.1f} images/s "
              f"({samples[name][0]:.3f} steps/s)", flush=True)

    memory_source = {}  # rows whose memory is not a child's measured peak: where it is from
    for name, (dtype, n_dev) in names.items():
        if n_dev > jax.local_device_count():
            notes.append(f"{name} skipped: {n_dev} devices asked, "
                         f"{jax.local_device_count()} present.")
            continue
        trainers_before = len(trainers)
        tr, setup[name], info[name] = build_ours(dtype, n_dev, s)
        trainers[name] = (tr, s["fused"], info[name]["global_batch"])
        child = children.get(name, {})
        memory[name] = child.get("peak_bytes")
        if memory[name] is None and on_gpu and not trainers_before and info[name].get(
                "allocator_peak_bytes"):  # the first row: the allocator's peak is its own
            memory[name] = info[name]["allocator_peak_bytes"]
            memory_source[name] = "JAX allocator peak (first row of the process)"
        if memory[name] is None and on_gpu and info[name].get("xla_peak_bytes"):
            memory[name] = info[name]["xla_peak_bytes"]
            memory_source[name] = "XLA memory_analysis"
        if child.get("setup_s") is not None:  # the cold compilation, in the child
            info[name]["setup_s_from_cache"] = setup[name]
            setup[name] = child["setup_s"]
        precision[name] = "bf16" if dtype == "bfloat16" else ("tf32" if on_gpu else "fp32")
        print(f"{name}: setup {setup[name]:.1f} s, {info[name]['params']} params",
              flush=True)
        first_timing(name)

    torch_info = {}
    if torch is not None:
        device = "cuda" if cuda else "cpu"
        if cuda:
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            torch.backends.cudnn.benchmark = FLAGS.cudnn_benchmark
        rows = [r for r in FLAGS.torch_rows.split(",") if r]
        if not cuda and set(rows) - {"eager"}:
            notes.append("torchcfm autocast / compile rows skipped: no CUDA (bf16 autocast "
                         "and torch.compile are GPU rows here).")
            rows = [r for r in rows if r == "eager"]
        c, h, w = s["config"]["torch"]["dim"]
        gen = torch.Generator().manual_seed(1)
        pool = torch.randn((s["pool"], c, h, w), generator=gen).to(device)
        for mode in rows:
            name = f"torchcfm_{mode}"
            try:
                tr, memory[name] = build_torch(torch, mode, s["config"], pool, s["batch"],
                                               device)
            except Exception as e:  # noqa: BLE001  (report it, time the rest)
                notes.append(f"{name} failed: {type(e).__name__}: {str(e)[:300]}")
                print(notes[-1], flush=True)
                continue
            trainers[name] = (tr, 1, s["batch"])
            setup[name] = tr.setup_s
            precision[name] = {"eager": "tf32" if cuda else "fp32"}.get(mode, "bf16")
            torch_info.setdefault("params", sum(p.numel() for p in tr.params))
            print(f"{name}: setup {setup[name]:.1f} s", flush=True)
            first_timing(name)
        if torch_info:
            # FLOPs of an eager step (a throwaway trainer when the eager row is off).
            tr = trainers.get("torchcfm_eager", (None,))[0] or TorchCFMTrainer(
                torch, torch_unet_kwargs(s["config"], FLAGS.dropout), pool, s["batch"],
                mode="eager", device=device, warmup_steps=1)
            torch_info["flops"] = torch_step_flops(torch, tr)
            del tr

    for _ in range(s["repeats"] - 1):
        for name, (tr, unit, _) in trainers.items():
            samples[name].append(time_trainer(tr, unit, s["seconds"]))

    first = next(iter(info.values()), {})
    flops = {"torch_flop_counter": torch_info.get("flops"),
             "xla_compiled": first.get("xla_compiled"),
             "xla_lowered": first.get("xla_lowered")}
    if flops["torch_flop_counter"]:
        model_flops, source = flops["torch_flop_counter"], "torch FlopCounterMode"
    else:
        model_flops, source = flops["xla_compiled"] or 0.0, "XLA compiled cost analysis"
    peak = {"tf32": FLAGS.peak_tf32, "bf16": FLAGS.peak_bf16}
    ours_params = first.get("params")
    rows = {}
    for name, (tr, unit, batch) in trainers.items():
        sps = statistics.median(samples[name])
        step_flops = model_flops * batch / s["batch"]  # of the global batch
        params = info[name]["params"] if name in info else torch_info["params"]
        r = {"precision": precision[name], "params": params, "global_batch": batch,
             "steps_per_s": sps, "images_per_s": sps * batch,
             "model_flops_per_s": step_flops * sps, "setup_s": setup[name],
             "peak_memory_bytes": memory.get(name),
             "peak_memory_source": memory_source.get(name, "measured" if memory.get(name)
                                                     else None),
             "samples_steps_per_s": samples[name]}
        n_dev = names[name][1] if name in names else 1
        r["mfu"] = (step_flops * sps / (n_dev * peak[precision[name]])
                    if on_gpu and precision[name] in peak else None)
        if name in info:
            r["xla_flops_per_step"] = info[name]["xla_compiled"]
            r["xla_peak_bytes"] = info[name]["xla_peak_bytes"]
            r["allocator_peak_bytes_so_far"] = info[name]["allocator_peak_bytes"]
            r["setup_s_from_cache"] = info[name].get("setup_s_from_cache")
        base = name.rsplit("_x", 1)[0]
        if n_dev > 1 and base in trainers:
            r["scaling"] = r["images_per_s"] / (statistics.median(samples[base])
                                                * trainers[base][2])
        rows[name] = r
    if ours_params and torch_info.get("params"):
        rel = ours_params / torch_info["params"] - 1.0
        notes.append(f"Parameters: ours {ours_params:,}, torchcfm {torch_info['params']:,} "
                     f"({100 * rel:+.2f} %)."
                     + (f" WARNING: they differ by more than {100 * RATIO_WARN:.0f} %; "
                        "nothing was adjusted." if abs(rel) > RATIO_WARN else ""))
    measured_first = sorted(k for k, v in memory_source.items() if v.startswith("JAX"))
    if measured_first:
        notes.append("Peak memory of " + ", ".join(measured_first) + ": the JAX "
                     "allocator's peak_bytes_in_use after compiling and running it, the "
                     "first row of the process (later rows would include it).")
    estimated = sorted(k for k, v in memory_source.items() if v.startswith("XLA"))
    if estimated:
        notes.append("* Peak memory of " + ", ".join(estimated) + ": XLA's "
                     "buffer assignment of the compiled step (compiled.memory_analysis(): "
                     "arguments + outputs + temporaries), an estimate, not a measured "
                     "allocator peak (--memory measures it in subprocesses).")
    if not on_gpu:
        notes.append("Not a GPU: no MFU and no peak memory; the numbers check that the "
                     "script runs, they are no measurement.")
    result = {"benchmark": "unet_throughput", "device": device_name, "platform": platform,
              "jax": jax.__version__, "torch": getattr(torch, "__version__", None),
              "tiny": FLAGS.tiny, "batch": s["batch"], "fused": s["fused"],
              "seconds": s["seconds"], "repeats": s["repeats"], "dropout": FLAGS.dropout,
              "devices": FLAGS.devices, "peaks": peak, "flops_per_step": flops,
              "model_flops_per_step": model_flops, "model_flops_source": source,
              "params": {"ours": ours_params, "torchcfm": torch_info.get("params")},
              "torch_compile_mode": FLAGS.compile_mode,
              "cudnn_benchmark": FLAGS.cudnn_benchmark, "rows": rows, "notes": notes,
              "loadavg": os.getloadavg()}
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "unet_throughput.json"), "w") as f:
        json.dump(result, f, indent=2)
    if cache_dir:
        shutil.rmtree(cache_dir, ignore_errors=True)
    table = markdown(result)
    with open(os.path.join(FLAGS.out, "unet_throughput.md"), "w") as f:
        f.write(table + "\n")
    print(table)


if __name__ == "__main__":
    app.run(main)
