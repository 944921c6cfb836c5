"""Train, evaluate and checkpoint one experiment.

    python -m experiments.train --config configs/lfm_checkerboard.py --workdir runs/cb \
        [--config.train.steps=100 ...]

`--config` takes a file or, from any directory once installed, a config name such as
`lfm_checkerboard` (`experiments.config_path.resolve`).

Re-running the same command on a workdir that holds a checkpoint resumes it; the
config is validated and recorded (config.json, runs.jsonl) before any work, and a
resume with settings that change training is refused with the changed keys. A run
whose loss becomes NaN / inf stops (exit status 1) naming the checkpoint it kept; the
same command with a lower --config.train.lr resumes from it. Exit status 2: the config
is invalid or changes a recorded run's training settings.

Several processes (hosts, or processes on one machine): pass --distributed, which
calls jax.distributed.initialize() (with --coordinator_address, --num_processes and
--process_id, or from the cluster's environment), and run the same command in every
process. Every process holds the (small) training set and draws the same batches on
device, each device computing its shard of the batch; all processes take part in the
orbax checkpoints and the sharded ODE solves, and only process 0 writes logs, metrics
and plots.
"""

import sys
import time

_START = time.perf_counter()  # start-up: everything before the job (imports, flags)

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from experiments import config_path  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Output directory (checkpoints, metrics, plots).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first "
                  "(settings from the flags below, else from the cluster environment: "
                  "SLURM, Open MPI, Kubernetes, Cloud TPU).")
flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of "
                    "process 0 (e.g. localhost:12355 for processes on one machine).")
flags.DEFINE_integer("num_processes", None, "With --distributed: number of processes.")
flags.DEFINE_integer("process_id", None, "With --distributed: this process's id.")
flags.DEFINE_bool("compilation_cache", True, "Keep JAX's persistent compilation cache "
                  "(lfm_jax.compilation_cache: $LFM_JAX_CACHE_DIR, else "
                  "~/.cache/lfm_jax/jax_cache), so a second run or a resume skips most "
                  "compilation.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)
    import jax

    if FLAGS.distributed:
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    from lfm_jax import compilation_cache, runs

    if FLAGS.compilation_cache:
        compilation_cache.enable()

    from lfm_jax import checkpoint, files, train
    from lfm_jax.runs import jobs, provenance, validation

    config = FLAGS.config
    print(f"devices: {jax.devices()}  method: {config.method}  start-up (imports, "
          f"flags, config): {time.perf_counter() - _START:.1f} s")
    try:
        results = runs.get(config.method)(config, FLAGS.workdir, argv=sys.argv)
    except (validation.InvalidConfigError, provenance.ConfigChangedError) as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except train.NonFiniteLossError as e:
        sys.stderr.write(f"error: training diverged: {e}\nTo restart: {jobs.RESTART_ADVICE}\n")
        sys.exit(1)
    except (files.DamagedFileError, checkpoint.CheckpointError) as e:  # messages name the file
        sys.stderr.write(f"error: {e}\n")
        sys.exit(1)
    for k, v in sorted(results.items()):
        if isinstance(v, (dict, list, tuple)) and len(str(v)) > 100:
            v = f"({type(v).__name__} of {len(v)}; see {FLAGS.workdir}/metrics.json)"
        print(f"{k:>24s}: {v}")
    if "energy_distance" in results:
        print("(energy_distance is an unbiased estimate and can be negative; "
              "energy_distance_biased is never negative)")


if __name__ == "__main__":
    try:
        argv = config_path.resolve_argv(sys.argv)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    app.run(main, argv=argv)
