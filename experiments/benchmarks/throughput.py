"""Training throughput (steps/s): lfm-jax vs torchcfm, flow_matching, rectified-flow-pytorch,
and the fastest torch step (CUDA graph, torch.compile), with FLOP utilisation and peak memory.

    python -m experiments.benchmarks.throughput [--seconds=2] [--repeats=3] \
        [--sizes=2:256,43:512] [--batches=256,4096] [--fused=50] [--out=DIR] \
        [--fast=graph,compile] [--compile_modes=reduce-overhead] [--bf16] [--memory] \
        [--append]

Same model (4 hidden SiLU layers of `width`, 17 Fourier time features, see peers.py),
same data (2-D checkerboard; 43-D standard Gaussian), same optimiser (Adam 1e-3), same
batch, same process. Every trainer draws its batches on its device from a 50k-row
training set. lfm-jax: "per-step" = one jitted step per Python call (async dispatch),
"fused" = K steps per call (lax.scan); our step also updates an EMA of the weights,
the peers' plain loops do not. "ours_fused_bf16" (--bf16) is the fused step with
`networks.velocity_mlp(..., compute_dtype="bfloat16")`.

The peers' plain loops run torch's defaults (full float32 matmuls). The fastest torch
step (`torch_fast.py`, CUDA only): "torch_graph" = the whole step in one CUDA graph
with fused capturable Adam; "torch_compile" = torch.compile of loss and optimiser step,
the fastest of --compile_modes (the row names the mode); both with TF32 matmuls
(--torch_precision) as JAX uses by default on a GPU; "torch_graph_bf16" (--bf16) under
bf16 autocast. On a CPU these rows are skipped (CUDA graphs need CUDA; torch.compile
runs there only with --cpu_compile).

Torch runs on CUDA if available, else on the CPU, timed both with its default thread
count and with 1 thread (--torch_threads): on a shared, loaded 2-core machine torch's
OpenMP threads can slow down many-fold, so each peer is credited with its faster
setting. Implementations are timed in turn, `repeats` times, and the median is
reported, so a background load hits every side alike.

Per row and implementation the JSON also has: microseconds per step; FLOP/s =
6 x (matmul weights) x batch / step time (forward 2, backward 4 FLOPs per weight and
example) and its fraction of the device's dense TF32 and bf16 peaks
(`torch_fast.PEAK_FLOPS`, by device name); peak device memory (--memory): torch's
`max_memory_allocated` over the trainer's construction and warm-up (capture /
compilation included) minus what was allocated before it, with the peak counter reset
first; ours from `memory_stats()["peak_bytes_in_use"]` of the same trainer run in its
own process (`jax_memory.py`; JAX's counter cannot be reset). Setup seconds = capture
or compilation time (torch) or first call (ours). Writes throughput.json and
throughput.md in --out, the JSON after every row.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import statistics
import time

import jax
import torch
from absl import app, flags

from experiments.benchmarks import jax_memory, ours, peers, torch_fast

flags.DEFINE_float("seconds", 2.0, "Timing duration per measurement.")
flags.DEFINE_integer("repeats", 3, "Measurements per implementation (median reported).")
flags.DEFINE_string("sizes", "2:256,43:512", "dim:width list (depth 4).")
flags.DEFINE_string("batches", "256,4096", "Batch sizes.")
flags.DEFINE_integer("fused", 50, "Steps fused per call for lfm-jax (lax.scan).")
flags.DEFINE_string("peers", "torchcfm,flow_matching,rectified_flow", "Peers to run.")
flags.DEFINE_string("torch_threads", "default,1",
                    "torch CPU thread counts to time ('default' = torch's own choice); each "
                    "peer's table entry is its best over these.")
flags.DEFINE_string("fast", "graph,compile",
                    "Fastest-torch rows: 'graph' (CUDA graph), 'compile' (torch.compile).")
flags.DEFINE_string("compile_modes", "reduce-overhead",
                    "torch.compile modes timed for the torch_compile row (best reported); "
                    "also e.g. max-autotune-no-cudagraphs (minutes of autotuning per size).")
flags.DEFINE_enum("torch_precision", "tf32", list(torch_fast.PRECISIONS),
                  "Matmul precision of the fastest-torch rows.")
flags.DEFINE_bool("bf16", False, "Add ours_fused_bf16 and torch_graph_bf16 rows.")
flags.DEFINE_bool("memory", True, "Measure peak device memory per row (GPU).")
flags.DEFINE_bool("cpu_compile", False, "Time torch.compile on the CPU too.")
flags.DEFINE_bool("append", False, "Keep the rows of an existing throughput.json in --out "
                  "(same device) and add these after them.")
flags.DEFINE_string("out", "benchmark_results", "Output directory.")
FLAGS = flags.FLAGS

make_data = ours.make_data  # kept for callers of the old name


time_trainer = ours.time_trainer


def our_variants(fused: int, bf16: bool) -> dict:
    """name -> (steps_per_call, compute_dtype)."""
    out = {"ours_fused": (fused, "float32"), "ours_per_step": (1, "float32")}
    if bf16:
        out["ours_fused_bf16"] = (fused, "bfloat16")
    return out


def fast_variants(fast, compile_modes, precision, bf16, device, cpu_compile) -> dict:
    """name -> factory(dim, hidden, data, batch) of the fastest-torch trainers."""
    out = {}
    cuda = device.startswith("cuda")
    if "graph" in fast and cuda:
        out["torch_graph"] = lambda *a: torch_fast.GraphTrainer(*a, device=device,
                                                                precision=precision)
        if bf16:
            out["torch_graph_bf16"] = lambda *a: torch_fast.GraphTrainer(
                *a, device=device, precision="bf16")
    if "compile" in fast and (cuda or cpu_compile):
        for mode in compile_modes:
            out[f"torch_compile[{mode}]"] = (
                lambda *a, mode=mode: torch_fast.CompiledTrainer(
                    *a, device=device, precision=precision if cuda else "fp32", mode=mode))
    return out


def torch_peak_memory(build, device):
    """(trainer, peak bytes of build() or None): torch's counter, reset before build."""
    if not device.startswith("cuda"):
        return build(), None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    trainer = build()
    torch.cuda.synchronize()
    return trainer, torch.cuda.max_memory_allocated() - before


def bench_config(dim, width, batch, *, fused, seconds, repeats, peer_factories, fast,
                 device, mesh, thread_counts, bf16, jax_peaks, peaks):
    data = ours.make_data(dim)
    hidden = (width,) * 4
    trainers, setup_s, memory, errors = {}, {}, {}, {}

    def warm_up(tr, unit):
        for _ in range(3):
            tr.step(unit)
        tr.sync()

    for name, (k, dtype) in our_variants(fused, bf16).items():
        t0 = time.perf_counter()
        tr = ours.JaxTrainer(dim, hidden, data, batch, steps_per_call=k, mesh=mesh,
                             compute_dtype=dtype)
        tr.step(k)
        tr.sync()
        setup_s[name] = time.perf_counter() - t0
        warm_up(tr, k)
        trainers[name] = (tr, k)
        memory[name] = jax_peaks.get((dim, width, batch, name))

    threads = {}
    default_threads = torch.get_num_threads()
    for name, factory in peer_factories.items():
        for n in thread_counts:
            key = f"{name}@{n}threads"
            torch.set_num_threads(n)
            try:
                def build(factory=factory):
                    tr = peers.TorchTrainer(factory, dim, hidden, data, batch, device=device)
                    warm_up(tr, 1)
                    return tr
                tr, memory[key] = torch_peak_memory(build, device)
            finally:
                torch.set_num_threads(default_threads)
            trainers[key] = (tr, 1)
            threads[key] = n
    for name, factory in fast.items():
        try:
            tr, memory[name] = torch_peak_memory(
                lambda: factory(dim, hidden, data, batch), device)
            warm_up(tr, 1)
        except Exception as e:  # noqa: BLE001  (report, time the rest)
            errors[name] = f"{type(e).__name__}: {e}"[:500]
            print(f"{name} failed at d={dim} batch={batch}: {errors[name]}", flush=True)
            continue
        setup_s[name] = tr.setup_s
        trainers[name] = (tr, 1)

    def run(name, fn):
        torch.set_num_threads(threads.get(name, default_threads))
        try:
            return fn()
        finally:
            torch.set_num_threads(default_threads)

    samples = {name: [] for name in trainers}
    for _ in range(repeats):
        for name, (tr, unit) in trainers.items():
            samples[name].append(run(name, lambda: time_trainer(tr, unit, seconds)))
    mlp = peers.MLP(dim, hidden)
    n_params = sum(p.numel() for p in mlp.parameters())
    n_matmul = torch_fast.matmul_params(mlp)
    by_variant = {k: statistics.median(v) for k, v in samples.items()}
    rates = {k: v for k, v in by_variant.items() if k.startswith("ours")}
    best_threads = {}
    for name in peer_factories:
        variants = {k: v for k, v in by_variant.items() if k.startswith(name + "@")}
        best = max(variants, key=variants.get)
        rates[name] = variants[best]
        best_threads[name] = threads[best]
        memory[name] = memory.get(best)
    for name in ("torch_graph", "torch_graph_bf16"):
        if name in by_variant:
            rates[name] = by_variant[name]
    compiled = {k: v for k, v in by_variant.items() if k.startswith("torch_compile[")}
    compile_mode = None
    if compiled:
        best = max(compiled, key=compiled.get)
        rates["torch_compile"] = compiled[best]
        compile_mode = best[len("torch_compile["):-1]
        memory["torch_compile"] = memory.get(best)
        setup_s["torch_compile"] = setup_s.get(best)
    flops_per_step = 6 * n_matmul * batch
    detail = {}
    for name, r in rates.items():
        d = {"steps_per_s": r, "us_per_step": 1e6 / r,
             "flops_per_s": flops_per_step * r, "peak_memory_bytes": memory.get(name),
             "setup_s": setup_s.get(name)}
        if peaks:
            d["util_tf32_peak"] = flops_per_step * r / peaks["tf32"]
            d["util_bf16_peak"] = flops_per_step * r / peaks["bf16"]
        detail[name] = d
    row = {"dim": dim, "width": width, "depth": 4, "batch": batch, "params": n_params,
           "matmul_params": n_matmul, "flops_per_step": flops_per_step,
           "steps_per_s": rates, "detail": detail, "peer_best_threads": best_threads,
           "torch_compile_mode": compile_mode, "compile_by_mode": compiled,
           "fast_errors": errors, "steps_per_s_by_variant": by_variant,
           "all_steps_per_s": samples, "peak_memory_by_variant": memory,
           "loadavg_after": os.getloadavg()}
    peer_rates = {k: rates[k] for k in peer_factories}
    if peer_rates:
        best = max(peer_rates, key=peer_rates.get)
        row["fastest_peer"] = best
        row["fused_vs_fastest_peer"] = rates["ours_fused"] / peer_rates[best]
        row["per_step_vs_fastest_peer"] = rates["ours_per_step"] / peer_rates[best]
    best_ours = max((k for k in rates if k.startswith("ours")), key=rates.get)
    row["best_ours"] = best_ours
    for name in ("torch_graph", "torch_compile"):
        if name in rates:
            row[f"fused_vs_{name}"] = rates["ours_fused"] / rates[name]
    trainers.clear()  # free the device before the next row
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def columns(result) -> list:
    names = ["ours_fused", "ours_per_step"]
    if any("ours_fused_bf16" in r["steps_per_s"] for r in result["rows"]):
        names.append("ours_fused_bf16")
    names += list(result["peers"])
    for name in ("torch_graph", "torch_compile", "torch_graph_bf16"):
        if any(name in r["steps_per_s"] for r in result["rows"]):
            names.append(name)
    return names


def markdown(result) -> str:
    names = columns(result)
    has_graph = any("fused_vs_torch_graph" in r for r in result["rows"])
    head = ("| dim | width | batch | " + " | ".join(names)
            + " | fused / fastest peer | per-step / fastest peer |"
            + (" fused / torch_graph |" if has_graph else ""))
    lines = [head, "|" + "---|" * (len(names) + 5 + has_graph)]
    for r in result["rows"]:
        cells = [f"{r['steps_per_s'][n]:.0f}" if n in r["steps_per_s"] else "-"
                 for n in names]
        ratio = (f"{r['fused_vs_fastest_peer']:.2f}x ({r['fastest_peer']})"
                 if "fastest_peer" in r else "-")
        ratio2 = f"{r['per_step_vs_fastest_peer']:.2f}x" if "fastest_peer" in r else "-"
        line = (f"| {r['dim']} | {r['width']} | {r['batch']} | " + " | ".join(cells)
                + f" | {ratio} | {ratio2} |")
        if has_graph:
            g = r.get("fused_vs_torch_graph")
            line += f" {g:.2f}x |" if g else " - |"
        lines.append(line)
    return "\n".join(lines)


def detail_markdown(result) -> str:
    """Long table: us/step, TFLOP/s, share of the dense peaks, peak memory, setup time."""
    lines = ["| dim | width | batch | implementation | us / step | TFLOP/s | % TF32 peak "
             "| % bf16 peak | peak memory (MiB) | setup (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        for name in columns(result):
            d = r["detail"].get(name)
            if d is None:
                continue
            label = name
            if name == "torch_compile" and r.get("torch_compile_mode"):
                label = f"torch_compile ({r['torch_compile_mode']})"
            mem, setup = d.get("peak_memory_bytes"), d.get("setup_s")
            cells = [f"{d['us_per_step']:.1f}", f"{d['flops_per_s'] / 1e12:.2f}",
                     f"{100 * d['util_tf32_peak']:.1f}" if "util_tf32_peak" in d else "-",
                     f"{100 * d['util_bf16_peak']:.1f}" if "util_bf16_peak" in d else "-",
                     f"{mem / 2**20:.1f}" if mem is not None else "-",
                     f"{setup:.1f}" if setup is not None else "-"]
            lines.append(f"| {r['dim']} | {r['width']} | {r['batch']} | {label} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def measure_jax_memory(configs, fused, bf16, device, workers=4) -> dict:
    """(dim, width, batch, name) -> peak bytes, each trainer in its own process (GPU
    only: JAX keeps no memory statistics on the CPU)."""
    if device == "cpu":
        return {}
    jobs = {(dim, width, batch, name): (dim, width, batch, k, dtype)
            for dim, width, batch in configs
            for name, (k, dtype) in our_variants(fused, bf16).items()}
    out = {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {key: pool.submit(jax_memory.measure, *args) for key, args in jobs.items()}
        for key, fut in futures.items():
            res = fut.result()
            out[key] = res.get("peak_bytes")
            if "error" in res:
                print(f"memory {key}: {res['error']}", flush=True)
    return out


def main(argv):
    del argv
    from lfm_jax import distributed

    load_start = os.getloadavg()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = [(int(s.split(":")[0]), int(s.split(":")[1]), int(b))
               for s in FLAGS.sizes.split(",") for b in FLAGS.batches.split(",")]
    # First, before this process's JAX claims the GPU (it preallocates most of it).
    jax_peaks = (measure_jax_memory(configs, FLAGS.fused, FLAGS.bf16, device)
                 if FLAGS.memory else {})
    wanted = [p for p in FLAGS.peers.split(",") if p]
    factories, missing = peers.available_peers(wanted)
    mesh = distributed.make_mesh()
    default_threads = torch.get_num_threads()
    thread_counts = sorted({default_threads if t == "default" else int(t)
                            for t in FLAGS.torch_threads.split(",") if t}, reverse=True)
    if device != "cpu":
        thread_counts = [default_threads]
    fast_names = [f for f in FLAGS.fast.split(",") if f]
    modes = [m for m in FLAGS.compile_modes.split(",") if m]
    fast = fast_variants(fast_names, modes, FLAGS.torch_precision, FLAGS.bf16, device,
                         FLAGS.cpu_compile)
    notes = []
    if device == "cpu" and fast_names:
        notes.append("torch_graph skipped: CUDA graphs need CUDA."
                     + ("" if FLAGS.cpu_compile else
                        " torch_compile skipped on the CPU (--cpu_compile to run it)."))
    device_name = (torch.cuda.get_device_name(0) if device == "cuda"
                   else jax.devices()[0].device_kind)
    peaks = torch_fast.peak_flops(device_name) if device == "cuda" else None
    result = {"benchmark": "throughput", "torch_device": device,
              "torch_device_name": device_name, **ours.device_info(), **peers.versions(),
              "peak_flops": peaks, "fused": FLAGS.fused, "seconds": FLAGS.seconds,
              "repeats": FLAGS.repeats, "torch_thread_counts": thread_counts,
              "torch_fast_precision": FLAGS.torch_precision, "compile_modes": modes,
              "loadavg_start": load_start, "peers": list(factories),
              "peers_missing": missing, "notes": notes, "rows": []}
    os.makedirs(FLAGS.out, exist_ok=True)
    previous = os.path.join(FLAGS.out, "throughput.json")
    if FLAGS.append and os.path.exists(previous):
        with open(previous) as f:
            old = json.load(f)
        if old.get("torch_device_name") != device_name:
            raise ValueError(f"--append: {previous} was measured on "
                             f"{old.get('torch_device_name')!r}, this is {device_name!r}")
        result["rows"] = old["rows"]
        result["peers"] = old["peers"] + [p for p in result["peers"] if p not in old["peers"]]
        result["compile_modes_by_run"] = old.get("compile_modes_by_run",
                                                 [old["compile_modes"]]) + [modes]

    def write():
        with open(os.path.join(FLAGS.out, "throughput.json"), "w") as f:
            json.dump(result, f, indent=2)

    for dim, width, batch in configs:
        row = bench_config(dim, width, batch, fused=FLAGS.fused, seconds=FLAGS.seconds,
                           repeats=FLAGS.repeats, peer_factories=factories, fast=fast,
                           device=device, mesh=mesh, thread_counts=thread_counts,
                           bf16=FLAGS.bf16, jax_peaks=jax_peaks, peaks=peaks)
        result["rows"].append(row)
        write()
        print(json.dumps({k: row[k] for k in ("dim", "width", "batch", "steps_per_s")}),
              flush=True)
    table = markdown(result) + "\n\n" + detail_markdown(result)
    with open(os.path.join(FLAGS.out, "throughput.md"), "w") as f:
        f.write(table + "\n")
    print(table)
    for note in notes:
        print(note)


if __name__ == "__main__":
    app.run(main)
