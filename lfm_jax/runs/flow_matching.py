"""Plain flow matching job (method "fm"): train (resumable), evaluate, write artefacts.

Writes to the workdir: config.json and runs.jsonl (`provenance`), ckpt/ (orbax),
metrics.jsonl (training curve), train_clock.json (training time over all starts),
metrics.json (final metrics; "warnings" lists e.g. a test NLL worse than the base
N(0, I)'s), samples.png, loss.png. Images (config.data.name digits / mnist / cifar10):
batches dequantised afresh every step (`image_data.sample_batch`), labels dropped with
probability fm.p_uncond for a class-conditional model, and samples_grid.png with
bits per dimension instead of samples.png (`image_eval`); with
config.eval.classifier_workdir and / or config.eval.inception_weights,
fd_classifier_w<w> (NOT Inception FID) / accuracy_w<w> / best_w and fid_inception_w<w>
(standard FID, pytorch-fid) of eval.fd_samples guided samples per weight in
eval.guidance_ws, saved as samples_w<w>.npz (`image_eval.sample_scores`). Training
batches are drawn on device from the replicated training set (config.data.placement =
"device"), or fed from host memory with each process feeding only its rows ("host":
`train.HostBatches`, for data sets larger than a device).

Evaluation solves with config.eval.ode and `on_failure="nan"`: test points (samples)
whose ODE solve fails are left out of the NLL (sample metrics) and counted as
`n_failed` (`n_samples_failed`) in metrics.json, with a printed warning
(`common.evaluation_summary`), instead of ending the run.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from lfm_jax import couplings, distributed, flow_matching, interpolants
from lfm_jax import logging as log_lib
from lfm_jax import ode, phases, plots, train
from lfm_jax.runs import common, data_feed, image_data, image_eval, jobs, models


@jobs.job
def run(config, workdir: str, clock=None) -> dict:
    """Train (resumably), evaluate and write the artefacts of a plain FM run; returns
    the final metrics (`jobs.job`: the config is validated and recorded first; clock:
    the `phases.PhaseClock` of the run's phases)."""
    with phases.phase(clock, "data"):
        dataset = common.load_data(config)
    mesh = common.make_mesh(config)
    t_cfg = config.train
    example_shape = dataset.train.shape[1:]
    net = common.velocity_network(config, example_shape)
    image_data.check_classes(config, dataset)
    is_image = isinstance(dataset, image_data.ImageData)
    opt = common.optimizer(config)
    loss_fn = flow_matching.make_loss(
        net.apply, interpolants.get(config.fm.interpolant),
        common.make_time_sampler(config.fm),
        flow_matching.gaussian_pairs(couplings.get(config.fm.coupling)),
        labels=image_data.loss_labels(config, net), dropout=models.uses_dropout(config))
    arrays = image_data.train_data(dataset) if is_image else np.asarray(dataset.train)
    if data_feed.host_fed(config):  # each process feeds its rows
        train_data = train.HostBatches(arrays, t_cfg.batch_size, t_cfg.steps_per_call,
                                       config.seed, mesh)
        sample_batch = None
        prepare = image_data.prepare_batch(config.data.random_flip) if is_image else None
    else:  # replicated on every device, batches drawn there
        train_data = distributed.replicate(arrays, mesh)
        sample_batch = (image_data.sample_batch(t_cfg.batch_size, config.data.random_flip)
                        if is_image else data_feed.fm_sample_batch(config, dataset))
        prepare = None
    step_fn = train.make_train_step(
        loss_fn, opt, sample_batch=sample_batch, prepare_batch=prepare,
        steps_per_call=t_cfg.steps_per_call, ema_decay=t_cfg.ema_decay, mesh=mesh)

    key = jax.random.PRNGKey(config.seed)
    init_key, state_key, eval_key = jax.random.split(key, 3)
    state = train.create_train_state(state_key, net.init(init_key), opt)
    state = distributed.replicate(state, mesh)
    keeper = data_feed.make_keep_best(
        config, loss_fn, image_data.val_batch(dataset) if is_image
        else np.asarray(dataset.val[:2_000]))
    with phases.phase(clock, "train"):
        state, train_time, log_path = common.resumable_fit(
            config, state, step_fn, train_data, workdir, "fm", keep_best=keeper)

    results = evaluate(config, net, state, dataset, eval_key, workdir, clock=clock)
    base = jobs.gaussian_nll(dataset.test[: config.eval.nll_examples])
    results["base_test_nll"] = base
    jobs.report_warnings(results, jobs.worse_than_base(results["test_nll"], base,
                                                       "the final model's test"))
    results.update(method="fm", steps=int(state.step), train_time_s=train_time,
                   num_params=net.num_params(state.params))
    with phases.phase(clock, "plots"):
        curve = log_lib.read_jsonl(log_path)
        plots.plot_loss(os.path.join(workdir, "loss.png"), [r["step"] for r in curve],
                        [r["loss"] for r in curve])
    jobs.write_metrics(workdir, results, clock)
    return results


def log_prob_rows(net, params, x, key, *, options: ode.Options, divergence: str = "exact",
                  chunk_size=None, mesh=None) -> np.ndarray:
    """log q(x) (nats) of the rows of x (n, ...) under the FM flow (data at t = 1, noise
    at t = 0), split over the mesh's devices (`distributed.sharded_map`).

    Hutchinson probes of row i come from fold_in(key, i), i its GLOBAL row index in x
    (`ode.log_prob`'s indices), so the result does not depend on chunk_size or on the
    number of devices."""
    def rows(p, k, xs, idx):
        return flow_matching.log_prob(net.apply, p, xs, options=options, method=divergence,
                                      key=k, indices=idx)

    return distributed.sharded_map(rows, params, x, mesh=mesh, chunk_size=chunk_size,
                                   key=key)


def evaluate(config, net, state, dataset, key, workdir, *, clock=None) -> dict:
    """Test NLL (nats, exact or Hutchinson divergence) on the config.eval.split split,
    sample quality, samples.png (phases "sampling", "NLL", "sample metrics and plots"
    on the optional `phases.PhaseClock`)."""
    e = config.eval
    params = state.ema_params if e.use_ema else state.params
    k_sample, k_metric, k_div = jax.random.split(key, 3)
    # on_failure="nan": a failed solve gives NaN for that example only (counted below)
    options = common.eval_ode_options(config)
    mesh = common.make_mesh(config)
    noise = jax.random.normal(k_sample, (e.n_samples, *dataset.train.shape[1:]))

    def sample_rows(p, key, z, idx):
        return flow_matching.sample(net.apply, p, z, options=options)

    def generate(z, labels, w):  # labels None: unguided; else guidance weight w
        if labels is None:
            return distributed.sharded_map(sample_rows, params, z, mesh=mesh,
                                           chunk_size=e.chunk_size)
        return image_eval.guided_solve(net, params, z, labels, w, 0.0, 1.0,
                                       options=options, mesh=mesh, chunk_size=e.chunk_size)

    is_image = isinstance(dataset, image_data.ImageData)
    labels = None
    if is_image:
        n, labels = image_eval.sample_labels(net, e.grid_per_class)
        noise = noise[:n] if n <= len(noise) else jax.random.normal(
            k_sample, (n, *dataset.train.shape[1:]))
    with phases.phase(clock, "sampling"):  # classifier-free guidance, eval.guidance_w
        samples = generate(noise, labels, e.guidance_w)
    split = e.get("split", "test")  # "val": the MAF validation split (the paper's)
    test = np.asarray(getattr(dataset, split)[: e.nll_examples])
    with phases.phase(clock, "NLL"):
        lp = log_prob_rows(net, params, test, k_div, options=options,
                           divergence=e.divergence, chunk_size=e.chunk_size, mesh=mesh)
    if is_image:  # NLL of the null-class (marginal) model of a conditional one
        with phases.phase(clock, "sample metrics and plots"):
            results = image_eval.summary(
                lp, samples, dataset, workdir, f"{config.method} samples, test "
                f"{{test_bpd:.3f}} bits/dim, w = {e.guidance_w:g}", labels=labels)
        image_eval.sample_scores(results, config, net, generate,
                                     jax.random.fold_in(key, 0xFD), dataset, workdir,
                                     clock=clock)
        return {**results, "eval_split": split}
    with phases.phase(clock, "sample metrics and plots"):
        results, good = common.evaluation_summary(k_metric, lp, samples, dataset, workdir,
                                                  f"{config.method} samples")
        results["eval_split"] = split
        if dataset.dim == 2 and len(good):
            times = np.linspace(0.0, 1.0, 33)
            paths = jax.jit(lambda p, z: ode.integrate(
                jax.tree_util.Partial(net.apply, p), z, 0.0, 1.0, save_times=times,
                options=options))(params, noise[:200])
            plots.plot_trajectories(os.path.join(workdir, "trajectories.png"),
                                    common.to_numpy(paths), noise_at="start",
                                    title="FM sampling paths, t = 0 (noise) to 1 (data)")
    return results
