"""Sweep a config over the product of override lists, one run (and workdir) per point.

    python -m experiments.sweep --config configs/fm_checkerboard.py --workdir runs/S \
        --sweep 'train.lr=1e-3,3e-4' --sweep 'model.hidden=(256,256),(512,512)' \
        [--seeds 3] [--set train.steps=2000 ...] [--print_commands] [--summary_only]

Expansion: each `--sweep key=v1,v2,...` is split on the commas outside brackets and
quotes (so `(256,256),(512,512)` is two tuples); the runs are the Cartesian product of
the lists, in flag order, times `seed=0..N-1` with `--seeds N`. `--set key=value`
overrides apply to every run and do not enter the names. Every key and value is checked
against the config with ml-collections' parser for the field's type before any run.

Names: `<workdir>/<key>=<value>__...__seed=<s>`, values written canonically from the
parsed value (1e-3 -> 0.001, (256, 256) -> 256-256, characters outside [A-Za-z0-9._+-]
-> _; a name over 200 characters is cut and suffixed with a hash).

Running: one after another, each as a fresh `python -m experiments.train` process
(output appended to `<run>/train.log`). A run whose workdir holds a readable
metrics.json is finished and skipped; any other is (re)started with the same command,
which resumes from its checkpoint. `--print_commands` prints one shell command per
unfinished run instead (for a cluster launcher); `--summary_only` only writes the
summary.

Summary: `<workdir>/summary.md` and `summary.csv`, one row per configuration (the
overrides other than `seed`), with the mean and standard error over seeds,
std(ddof=1) / sqrt(n), of every numeric field of the finished runs' metrics.json
(nested dicts flattened as `a.b`; booleans and lists skipped). `<workdir>/sweep.json`
records the runs and their commands.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import hashlib
import itertools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Iterable, Sequence

from absl import app, flags

from experiments import config_path

SEED_KEY = "seed"
MAX_NAME = 200

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "Config file or name (see experiments/config_path.py).")
flags.DEFINE_string("workdir", None, "Sweep directory: one sub-directory per run.")
flags.DEFINE_multi_string("sweep", [], "key=v1,v2,... (repeatable; the product is run).")
flags.DEFINE_multi_string("set", [], "key=value applied to every run (repeatable).")
flags.DEFINE_integer("seeds", 0, "Add seed=0..N-1 to the product (0: no seed axis).")
flags.DEFINE_bool("print_commands", False, "Print one command per unfinished run; run none.")
flags.DEFINE_bool("summary_only", False, "Only write the summary of finished runs.")
flags.DEFINE_list("metrics", [], "Metrics in the summary (default: every numeric field).")
flags.DEFINE_string("python", sys.executable, "Python interpreter of the run commands.")


# ------------------------------------------------------------------------ parsing


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside (), [], {} and quotes: '(1,2),(3,4)' -> ['(1,2)', '(3,4)'].

    Raises:
        ValueError: unbalanced brackets or an unterminated quote.
    """
    parts, stack, quote, start = [], [], None, 0
    closing = {")": "(", "]": "[", "}": "{"}
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            stack.append(ch)
        elif ch in closing:
            if not stack or stack.pop() != closing[ch]:
                raise ValueError(f"unbalanced {ch!r} at position {i} in {text!r}")
        elif ch == sep and not stack:
            parts.append(text[start:i])
            start = i + 1
    if quote or stack:
        raise ValueError(f"unterminated {'quote' if quote else 'bracket'} in {text!r}")
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_assignment(text: str, multi: bool = True) -> tuple[str, list[str]]:
    """'key=v1,v2' -> ('key', ['v1', 'v2']) (multi) or 'key=v' -> ('key', ['v']).

    Raises:
        ValueError: no '=', an empty key or value, or a repeated value.
    """
    key, eq, rest = text.partition("=")
    key = key.strip()
    if key.startswith("config."):
        key = key[len("config."):]
    if not eq or not key or not re.fullmatch(r"[A-Za-z_][\w.]*", key):
        raise ValueError(f"expected key=value, got {text!r}")
    try:
        values = split_top_level(rest) if multi else [rest.strip()]
    except ValueError as e:
        raise ValueError(f"{key}: {e}") from None
    if any(v == "" for v in values):
        raise ValueError(f"{key}: empty value in {text!r}")
    if len(set(values)) != len(values):
        raise ValueError(f"{key}: repeated value in {text!r}")
    return key, values


def _literal(text: str) -> Any:
    """ml-collections' parse of a field of unknown type: a Python literal, else the string."""
    lowered = {"true": "True", "false": "False"}.get(text, text)
    try:
        return ast.literal_eval(lowered)
    except (SyntaxError, ValueError):
        return text


def parse_value(config, key: str, text: str) -> Any:
    """Parse `text` for `config.<key>` as `--config.<key>=text` would be parsed.

    ml-collections picks the parser by the field's current type (bool, int, float,
    tuple, str: absl's parsers and ml-collections' TupleParser); None-valued or other
    fields take a Python literal. With config None, every value is a literal.

    Raises:
        KeyError: the key is not in the config.
        ValueError: the value does not parse as the field's type (names key and value).
    """
    if config is None:
        return _literal(text)
    from ml_collections.config_flags import tuple_parser

    try:
        current = get_field(config, key)
    except (KeyError, AttributeError):
        raise KeyError(f"{key}: not a config field") from None
    parsers = {bool: flags.BooleanParser(), int: flags.IntegerParser(),
               float: flags.FloatParser(), tuple: tuple_parser.TupleParser(),
               str: flags.ArgumentParser()}
    parser = parsers.get(type(current))
    try:
        return parser.parse(text) if parser is not None else _literal(text)
    except (ValueError, TypeError, SyntaxError) as e:
        raise ValueError(f"{key}={text!r}: not a valid {type(current).__name__} ({e})") from None


def get_field(config, key: str) -> Any:
    """config.<key> for a dotted key; KeyError naming the missing part."""
    value = config
    for part in key.split("."):
        if not hasattr(value, "keys") or part not in value:
            raise KeyError(f"{key}: no field {part!r}")
        value = value[part]
    return value


def format_value(value: Any) -> str:
    """Filesystem-safe, readable text of a parsed value: 0.001, 256-256, true, name."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, list)):
        return "-".join(format_value(v) for v in value) if value else "empty"
    if isinstance(value, float):
        text = repr(value)
    elif value is None:
        text = "none"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text) or "_"


# ------------------------------------------------------------------------ runs


@dataclasses.dataclass(frozen=True)
class Run:
    """One point of a sweep.

    Attributes:
        name: the workdir's base name, from the overrides.
        overrides: ((key, text), ...) as given on the command line, seed last.
        values: the parsed values, in the same order.
    """

    name: str
    overrides: tuple[tuple[str, str], ...]
    values: tuple[Any, ...]

    @property
    def group(self) -> tuple[tuple[str, str], ...]:
        """The overrides other than the seed: runs with equal groups differ by seed."""
        return tuple(kv for kv in self.overrides if kv[0] != SEED_KEY)

    @property
    def group_values(self) -> tuple[tuple[str, Any], ...]:
        """(key, parsed value) of the overrides other than the seed."""
        return tuple((k, v) for (k, _), v in zip(self.overrides, self.values) if k != SEED_KEY)


def run_name(keys: Sequence[str], values: Sequence[Any]) -> str:
    """'k1=v1__k2=v2' with `format_value`; cut to MAX_NAME characters plus a hash."""
    name = "__".join(f"{k}={format_value(v)}" for k, v in zip(keys, values))
    if len(name) > MAX_NAME:
        digest = hashlib.sha1(name.encode()).hexdigest()[:10]
        name = f"{name[:MAX_NAME - 12]}__{digest}"
    return name


def expand(sweeps: Sequence[str], seeds: int = 0, fixed: Sequence[str] = (),
           config=None) -> list[Run]:
    """The runs of a sweep: the product of the `key=v1,v2` lists, times seed=0..seeds-1.

    Args:
        sweeps: '--sweep' texts, each 'key=v1,v2,...'.
        seeds: number of seeds (0: no seed axis unless a sweep names `seed`).
        fixed: '--set' texts 'key=value' (checked here; not part of the names).
        config: the ConfigDict the overrides apply to (keys and values are checked
            with `parse_value`), or None to skip the check.

    Raises:
        ValueError / KeyError: a malformed sweep, a key given twice, an unknown key,
            a value that does not parse, or two runs with the same name.
    """
    if seeds < 0:
        raise ValueError(f"seeds must be >= 0, got {seeds}")
    axes = [parse_assignment(s) for s in sweeps]
    if seeds:
        axes.append((SEED_KEY, [str(s) for s in range(seeds)]))
    fixed_kv = [parse_assignment(s, multi=False) for s in fixed]
    keys = [k for k, _ in axes]
    all_keys = keys + [k for k, _ in fixed_kv]
    repeated = sorted({k for k in all_keys if all_keys.count(k) > 1})
    if repeated:
        raise ValueError(f"keys given more than once (--sweep, --set, --seeds): {repeated}")
    for key, (value,) in fixed_kv:
        parse_value(config, key, value)
    # the seed axis goes last in names and overrides
    axes.sort(key=lambda kv: kv[0] == SEED_KEY)
    keys = [k for k, _ in axes]
    parsed = [[parse_value(config, k, v) for v in vs] for k, vs in axes]
    runs = []
    for idx in itertools.product(*[range(len(vs)) for _, vs in axes]):
        texts = tuple((k, axes[a][1][i]) for a, (k, i) in enumerate(zip(keys, idx)))
        values = tuple(parsed[a][i] for a, i in enumerate(idx))
        runs.append(Run(run_name(keys, values), texts, values))
    names = [r.name for r in runs]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ValueError(f"different values give the same run name: {clashes}")
    return runs


def command(run: Run, config: str, workdir: str, fixed: Sequence[str] = (),
            python: str = sys.executable) -> list[str]:
    """argv of one run: python -m experiments.train --config C --workdir W/name --config.k=v."""
    argv = [python, "-m", "experiments.train", "--config", config,
            "--workdir", os.path.join(workdir, run.name)]
    argv += [f"--config.{k}={v}" for k, (v,) in (parse_assignment(s, False) for s in fixed)]
    argv += [f"--config.{k}={v}" for k, v in run.overrides]
    return argv


def is_finished(run_dir: str) -> bool:
    """A run is finished when its metrics.json exists and parses as a JSON object."""
    return read_metrics(run_dir) is not None


def read_metrics(run_dir: str) -> dict | None:
    """The run's metrics.json as a dict, or None if missing or unreadable."""
    try:
        with open(os.path.join(run_dir, "metrics.json")) as f:
            obj = json.load(f)
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


# ------------------------------------------------------------------------ summary


def numeric_fields(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numeric scalars of a metrics dict, nested dicts flattened as 'a.b'."""
    out = {}
    for k, v in metrics.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(numeric_fields(v, name + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[name] = float(v)
    return out


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, std(ddof=1) / sqrt(n)); the standard error is NaN for n < 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def summarize(runs: Sequence[Run], workdir: str, metrics: Sequence[str] = ()) -> dict:
    """One row per configuration (`Run.group`) from the finished runs' metrics.json.

    Returns {"keys": override keys other than the seed, "metrics": metric names
    (those given, else every numeric field in any finished run, sorted), "rows": [
    {"values": parsed override values, "n": finished runs, "total": runs,
     "stats": {metric: (mean, stderr, count)}}]}. A metric missing from some runs is
    averaged over the runs that have it (count says how many).
    """
    groups: dict = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    found = {}
    for group, members in groups.items():
        found[group] = [m for m in (read_metrics(os.path.join(workdir, r.name)) for r in members)
                        if m is not None]
    fields = {g: [numeric_fields(m) for m in ms] for g, ms in found.items()}
    names = list(metrics) or sorted({k for fs in fields.values() for f in fs for k in f})
    rows = []
    for group, members in groups.items():
        stats = {}
        for name in names:
            vals = [f[name] for f in fields[group] if name in f]
            stats[name] = (*mean_stderr(vals), len(vals))
        rows.append({"values": [v for _, v in members[0].group_values],
                     "n": len(found[group]), "total": len(members),
                     "stats": stats})
    keys = [k for k, _ in runs[0].group] if runs else []
    return {"keys": keys, "metrics": names, "rows": rows}


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.4g}"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def write_summary(summary: dict, workdir: str) -> tuple[str, str]:
    """Write summary.md (mean ± stderr, 4 significant digits) and summary.csv (full
    precision, columns <metric>_mean, <metric>_stderr; empty where undefined)."""
    keys, names, rows = summary["keys"], summary["metrics"], summary["rows"]
    md_path = os.path.join(workdir, "summary.md")
    csv_path = os.path.join(workdir, "summary.csv")
    header = keys + ["n"] + names
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_show(v) for v in row["values"]] + [f"{row['n']}/{row['total']}"]
        for name in names:
            mean, se, _ = row["stats"][name]
            cells.append(_fmt(mean) + (f" ± {_fmt(se)}" if not math.isnan(se) else ""))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    with open(md_path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["n", "total"]
                   + [f"{m}_{s}" for m in names for s in ("mean", "stderr")])
        for row in rows:
            out = [_show(v) for v in row["values"]] + [row["n"], row["total"]]
            for name in names:
                mean, se, _ = row["stats"][name]
                out += ["" if math.isnan(mean) else repr(mean), "" if math.isnan(se) else repr(se)]
            w.writerow(out)
    return md_path, csv_path


# ------------------------------------------------------------------------ driver


def run_all(runs: Iterable[Run], argvs: dict[str, list[str]], workdir: str) -> list[str]:
    """Run the unfinished runs one after another; returns the names that failed."""
    failed = []
    todo = [r for r in runs if not is_finished(os.path.join(workdir, r.name))]
    for i, run in enumerate(todo):
        run_dir = os.path.join(workdir, run.name)
        os.makedirs(run_dir, exist_ok=True)
        state = "resuming" if os.listdir(run_dir) else "starting"
        print(f"[{i + 1}/{len(todo)}] {state} {run.name}", flush=True)
        t0 = time.perf_counter()
        with open(os.path.join(run_dir, "train.log"), "a") as log:
            log.write(f"$ {shlex.join(argvs[run.name])}\n")
            log.flush()
            rc = subprocess.run(argvs[run.name], stdout=log, stderr=subprocess.STDOUT).returncode
        seconds = time.perf_counter() - t0
        if rc == 0 and is_finished(run_dir):
            print(f"    done in {seconds:.0f} s", flush=True)
            continue
        failed.append(run.name)
        print(f"    FAILED (exit code {rc}) after {seconds:.0f} s; last lines of "
              f"{run_dir}/train.log:", flush=True)
        with open(os.path.join(run_dir, "train.log")) as log:
            print("".join("      " + line for line in log.readlines()[-15:]), flush=True)
    return failed


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not FLAGS.config or not FLAGS.workdir:
        raise app.UsageError("--config and --workdir are required")
    # ml-collections' own loader, as the run's --config flag uses (get_config(arg), locked)
    from ml_collections.config_flags.config_flags import ConfigFileFlagParser

    try:
        config_file = config_path.resolve(FLAGS.config)
        config = ConfigFileFlagParser("config").parse(config_file)
        runs = expand(FLAGS.sweep, FLAGS.seeds, FLAGS.set, config)
    except (FileNotFoundError, KeyError, ValueError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) else e}")
    workdir = FLAGS.workdir
    argvs = {r.name: command(r, config_file, workdir, FLAGS.set, FLAGS.python) for r in runs}
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "sweep.json"), "w") as f:
        json.dump({"config": config_file, "set": FLAGS.set, "sweep": FLAGS.sweep,
                   "seeds": FLAGS.seeds,
                   "runs": [{"name": r.name, "overrides": dict(r.overrides),
                             "command": shlex.join(argvs[r.name])} for r in runs]},
                  f, indent=2)
    finished = [r for r in runs if is_finished(os.path.join(workdir, r.name))]
    if FLAGS.print_commands:
        print(f"# {len(runs)} runs, {len(finished)} finished (skipped)", file=sys.stderr)
        for r in runs:
            if r not in finished:
                print(shlex.join(argvs[r.name]))
        return
    failed = []
    if not FLAGS.summary_only:
        print(f"{len(runs)} runs, {len(finished)} finished (skipped)", flush=True)
        failed = run_all(runs, argvs, workdir)
    md, csv_path = write_summary(summarize(runs, workdir, FLAGS.metrics), workdir)
    print(open(md).read())
    print(f"summary: {md}, {csv_path}")
    if failed:
        sys.exit(f"{len(failed)} runs failed: {', '.join(failed)}")


if __name__ == "__main__":
    app.run(main)
