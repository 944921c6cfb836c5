"""LFM vs one flow-matching model on images (issue 11), under the two protocols of the
vector study (`experiments.compare_lfm_fm`), each run a normal resumable job:

    python -m experiments.compare_lfm_fm_images --workdir W --variant mnist \
        --data_path ../shared/data/mnist --steps_per_block 3000 \
        --fm_equal_channels 64 --fm_equal_steps 9000 --guidance_ws 0,1,2,3

1. classifier: `configs/classifier_digits.py` (its held-out split is the generators'
   test split), trained once in W/classifier; it scores every model below
   (`fd_classifier`: Frechet distance in its penultimate features, NOT Inception FID;
   accuracy of class-conditional samples at each guidance weight w).
2. lfm: `configs/lfm_digits.py` (3 OU blocks + a free block, linear interpolant),
   --steps_per_block per block; its time = training plus the pushes of the training
   set that train the next blocks (the job's train_time_s).
3. fm_paper (paper protocol): `configs/fm_digits.py`, the SAME U-Net as one LFM block,
   trained for N x steps_per_block steps (as many steps as the LFM in all).
4. fm_equal (equal compute): FM with a wider U-Net (--fm_equal_channels base channels,
   chosen so that its parameters are about the LFM's total) trained for
   --fm_equal_steps steps; with --fm_equal_steps=-1 the steps are set for equal time:
   a short timing run of the same config (W/fm_equal_timing, --calibration_steps)
   gives its seconds per step and its fixed cost (compilation), and the steps are
   those whose training time matches LFM's (training plus pushes); the table reports
   both times, so the match can be checked.

Every run is evaluated by its job (test bits/dim, and with the classifier
fd_classifier / accuracy per w, samples_w*.npz). The table (compare_images.md / .json
in W) collects them. `--variant ""` runs the same on sklearn's 8x8 digits (CPU checks).
Finished runs are skipped on a rerun (their metrics.json exists); a failed run does not
stop the others, but the driver then exits with status 1 naming it. With --seeds s1,s2,...
each seed's study goes to W/seed_<s> (its own classifier: the data split follows the
seed) and W/compare_images.md has the mean and standard error over the seeds.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

from absl import app, flags

from experiments import timing

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Output directory (one sub-workdir per run).")
flags.DEFINE_string("variant", "mnist", "Config variant of the image configs ('' = digits).")
flags.DEFINE_string("data_path", "", "data.path (MNIST: folder of the IDX files).")
flags.DEFINE_list("runs", ["classifier", "lfm", "fm_paper", "fm_equal"], "Runs to do.")
flags.DEFINE_list("seeds", ["0"], "config.seed of every run (the classifier's too: the "
                  "data split depends on it); several seeds: one study each in "
                  "<workdir>/seed_<s>, and a table of means and standard errors.")
flags.DEFINE_integer("steps_per_block", 3000, "LFM steps per block (FM paper: x blocks).")
flags.DEFINE_integer("classifier_steps", 0, "Classifier steps (0: its config's).")
flags.DEFINE_integer("fm_equal_channels", 64, "fm_equal: U-Net base channels.")
flags.DEFINE_integer("fm_equal_steps", 0, "fm_equal: steps (0: as fm_paper; -1: equal "
                     "time, from a short timing run of fm_equal and LFM's time).")
flags.DEFINE_integer("calibration_steps", 500, "--fm_equal_steps=-1: steps of the timing run.")
flags.DEFINE_list("guidance_ws", ["0", "1", "2", "3"], "Guidance weights scored.")
flags.DEFINE_integer("fd_samples", 2000, "Generated images per w for FD / accuracy.")
flags.DEFINE_multi_string("set", [], "Extra override KEY=VALUE for every generator run.")
flags.DEFINE_multi_string("fm_equal_set", [], "fm_equal only: overrides KEY=VALUE that "
                          "replace --fm_equal_channels (e.g. model.hidden=(512,512,512) "
                          "for an MLP).")
flags.mark_flags_as_required(["workdir"])


def _config(name: str) -> str:
    return f"configs/{name}.py" + (f":{FLAGS.variant}" if FLAGS.variant else "")


def _overrides(pairs) -> list:
    return [f"--config.{k}={v}" for k, v in pairs]


def commands(workdir: str, seed: int = 0, fm_equal_steps: int = 0) -> dict:
    """{run name: argv} of every run of the study with config.seed = seed (fm_equal
    trained for fm_equal_steps, else --fm_equal_steps, else as fm_paper)."""
    data = [("data.path", FLAGS.data_path)] if FLAGS.data_path else []
    data += [("seed", seed)] if seed else []
    clf_dir = os.path.join(workdir, "classifier")
    ws = "(" + ",".join(str(float(w)) for w in FLAGS.guidance_ws) + ",)"
    score = [("eval.classifier_workdir", clf_dir), ("eval.guidance_ws", ws),
             ("eval.fd_samples", FLAGS.fd_samples)]
    extra = [tuple(s.split("=", 1)) for s in FLAGS.set]
    wide = ([tuple(s.split("=", 1)) for s in FLAGS.fm_equal_set]
            or [("model.unet_channels", FLAGS.fm_equal_channels)])
    n_blocks = 4  # configs/lfm_digits.py: 3 OU blocks + the free block
    fm_steps = n_blocks * FLAGS.steps_per_block
    train = [sys.executable, "-m", "experiments.train"]
    clf = data + ([("train.steps", FLAGS.classifier_steps)] if FLAGS.classifier_steps else [])
    return {
        "classifier": train + ["--config", _config("classifier_digits"),
                               "--workdir", clf_dir] + _overrides(clf),
        "lfm": train + ["--config", _config("lfm_digits"),
                        "--workdir", os.path.join(workdir, "lfm")]
        + _overrides(data + score + [("lfm.steps_per_block", FLAGS.steps_per_block)] + extra),
        "fm_paper": train + ["--config", _config("fm_digits"),
                             "--workdir", os.path.join(workdir, "fm_paper")]
        + _overrides(data + score + [("train.steps", fm_steps)] + extra),
        "fm_equal": train + ["--config", _config("fm_digits"),
                             "--workdir", os.path.join(workdir, "fm_equal")]
        + _overrides(data + score + extra + wide
                     + [("train.steps", fm_equal_steps or max(FLAGS.fm_equal_steps, 0)
                         or fm_steps)]),
    }


ROW_KEYS = ("num_params", "steps", "train_time_s", "test_bpd", "test_bpd_stderr")


def summary_row(name: str, metrics: dict) -> dict:
    """The table's entries of one run: sizes, times, bpd, and every fd / accuracy key."""
    row = {"run": name, **{k: metrics.get(k) for k in ROW_KEYS}}
    for k, v in sorted(metrics.items()):
        if k.startswith(("fd_classifier", "accuracy", "best_w", "sampling_time")):
            row[k] = v
    return row


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "-" if v is None else str(v)


def markdown(rows) -> str:
    """A Markdown table of rows (dicts): one column per key seen in any row, in order
    of first appearance; '-' where a row lacks the key."""
    keys = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def _calibrate(workdir: str, cmds: dict) -> int:
    """fm_equal's steps for equal time with LFM (--fm_equal_steps=-1): a short timing
    run of fm_equal (minimal evaluation) in W/fm_equal_timing, then `equal_time_steps`
    against LFM's train_time_s (training plus pushes)."""
    with open(os.path.join(workdir, "lfm", "metrics.json")) as f:
        target = json.load(f)["train_time_s"]
    tdir = os.path.join(workdir, "fm_equal_timing")
    if not os.path.exists(os.path.join(tdir, "metrics.json")):
        cmd = list(cmds["fm_equal"])
        cmd[cmd.index("--workdir") + 1] = tdir
        cmd += _overrides([("train.steps", FLAGS.calibration_steps),
                           ("eval.classifier_workdir", ""), ("eval.nll_examples", 8),
                           ("eval.n_samples", 10), ("eval.grid_per_class", 1)])
        print("$ " + " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(tdir, "metrics.json")) as f:
        calib = json.load(f)
    with open(os.path.join(tdir, "config.json")) as f:
        spc = json.load(f)["train"]["steps_per_call"]
    with open(os.path.join(tdir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    steps, per_step, fixed = timing.equal_time_steps(target, records, calib["train_time_s"], spc)
    print(f"fm_equal: {steps} steps for LFM's {target:.1f} s ({per_step * 1e3:.2f} ms a "
          f"step, {fixed:.1f} s fixed)", flush=True)
    return steps


def run_study(workdir: str, seed: int) -> list:
    """Run (or skip, when finished) every run of one seed; returns the table's rows."""
    os.makedirs(workdir, exist_ok=True)
    cmds = commands(workdir, seed)
    rows = []
    for name in cmds:
        if name not in FLAGS.runs:
            continue
        metrics_path = os.path.join(workdir, name, "metrics.json")
        if (name == "fm_equal" and FLAGS.fm_equal_steps < 0 and "lfm" in FLAGS.runs
                and not os.path.exists(metrics_path)):
            cmds = commands(workdir, seed, _calibrate(workdir, cmds))
        if not os.path.exists(metrics_path):
            print("$ " + " ".join(cmds[name]), flush=True)
            code = subprocess.run(cmds[name]).returncode
            if code or not os.path.exists(metrics_path):  # the next runs still run
                print(f"WARNING: run {name} failed (exit status {code})", flush=True)
                rows.append({"run": name, "failed": f"exit status {code}"})
                continue
        with open(metrics_path) as f:
            metrics = json.load(f)
        if name != "classifier":
            rows.append(summary_row(name, metrics))
    _write(workdir, rows, {"commands": {k: cmds[k] for k in FLAGS.runs}})
    return rows


def mean_rows(per_seed: list) -> list:
    """One row per run: the mean of every numeric entry over the seeds, its standard
    error (std / sqrt(seeds)) as '<key>_se', and the number of seeds."""
    out = []
    for name in [r["run"] for r in per_seed[0]]:
        rows = [r for rows in per_seed for r in rows if r["run"] == name and "failed" not in r]
        row = {"run": name, "seeds": len(rows)}
        for key in (rows[0] if rows else {}):
            vals = [r.get(key) for r in rows]
            if key == "run" or not all(isinstance(v, (int, float)) for v in vals):
                continue
            row[key] = sum(vals) / len(vals)
            if len(vals) > 1:
                row[key + "_se"] = statistics.stdev(vals) / math.sqrt(len(vals))
        out.append(row)
    return out


def _write(workdir: str, rows: list, extra: dict) -> None:
    table = markdown(rows)
    print(table)
    with open(os.path.join(workdir, "compare_images.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(workdir, "compare_images.json"), "w") as f:
        json.dump({"rows": rows, **extra}, f, indent=1)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    known = list(commands(FLAGS.workdir))
    unknown = [r for r in FLAGS.runs if r not in known]
    if unknown:
        raise app.UsageError(f"unknown runs {unknown}; known: {known}")
    seeds = [int(x) for x in FLAGS.seeds]
    if len(seeds) == 1:
        per_seed = [run_study(FLAGS.workdir, seeds[0])]
    else:
        per_seed = [run_study(os.path.join(FLAGS.workdir, f"seed_{s}"), s) for s in seeds]
        _write(FLAGS.workdir, mean_rows(per_seed), {"seeds": seeds, "per_seed": per_seed})
    failed = sorted({r["run"] for rows in per_seed for r in rows if "failed" in r})
    if failed:  # the other runs went on; a script chaining this one sees the failure
        sys.exit(f"failed runs: {', '.join(failed)} (their errors are above)")


if __name__ == "__main__":
    app.run(main)
