"""The evaluation classifier's job and the classifier scores of the image jobs (issue 11):
sklearn's 8x8 digits, tiny step counts, CPU."""

import json
import os

import jax
import numpy as np
import pytest

from lfm_jax import classifier, images, runs
from lfm_jax.runs import classifier_eval, image_data, validation


def _tiny_classifier(steps=60):
    from configs import classifier_digits

    config = classifier_digits.get_config()
    config.classifier.channels, config.classifier.features = (8,), 32
    t = config.train
    t.steps, t.batch_size, t.steps_per_call, t.num_devices = steps, 64, 20, 1
    t.lr, t.warmup_steps, t.ema_decay, t.checkpoint_every = 3e-3, 0, 0.9, 20
    config.log.tensorboard = False
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(config, workdir, results) of one short classifier run shared by the tests."""
    workdir = str(tmp_path_factory.mktemp("clf"))
    config = _tiny_classifier()
    return config, workdir, runs.get("classifier")(config, workdir, argv=[])


def test_classifier_job_trains_and_resumes(trained):
    """Held-out accuracy well above chance (0.1) after 60 steps; metrics.json carries the
    disclaimer; a rerun of the same command restores the finished run and does not
    retrain (no new training records, same params, same accuracy)."""
    config, workdir, r = trained
    assert r["steps"] == 60 and r["test_accuracy"] > 0.4 and r["val_accuracy"] > 0.4
    m = json.loads(open(os.path.join(workdir, "metrics.json")).read())
    assert m["disclaimer"] == classifier.DISCLAIMER and "NOT Inception FID" in m["disclaimer"]
    assert m["notes"]["fd_classifier"] == classifier.DISCLAIMER
    assert np.isfinite(m["fd_classifier_val_vs_test"])
    log = os.path.join(workdir, "metrics.jsonl")
    before = open(log).read()
    _, params = classifier_eval.load(workdir, (8, 8, 1))
    r2 = runs.get("classifier")(config, workdir, argv=[])
    assert open(log).read() == before  # no training call ran
    assert r2["steps"] == 60 and r2["test_accuracy"] == r["test_accuracy"]
    _, params2 = classifier_eval.load(workdir)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params2)):
        np.testing.assert_array_equal(a, b)


def test_load_errors_name_the_missing_file(tmp_path, trained):
    with pytest.raises(FileNotFoundError, match="classifier.json") as e:
        classifier_eval.load(str(tmp_path))
    assert "configs/classifier_digits.py" in str(e.value)
    with pytest.raises(ValueError, match="shape"):
        classifier_eval.load(trained[1], (28, 28, 1))


def test_score_of_held_out_set(trained):
    """The held-out set against itself: FD = 0 (up to round-off) and accuracy = the
    classifier's test accuracy; a perturbed copy has a larger FD; uint8 and float
    copies of the same images score the same."""
    config, workdir, r = trained
    model, params = classifier_eval.load(workdir)
    ds = image_data.load(config)
    s = classifier_eval.score(model, params, ds.test, ds.test, ds.test_labels)
    assert s["fd_classifier"] == pytest.approx(0.0, abs=1e-6)
    assert s["accuracy"] == pytest.approx(r["test_accuracy"])
    assert s["notes"]["fd_classifier"] == classifier.DISCLAIMER
    rng = np.random.default_rng(0)
    noisy = np.clip(ds.test + 0.5 * rng.normal(size=ds.test.shape), -1, 0.999)
    assert classifier_eval.score(model, params, noisy, ds.test)["fd_classifier"] > 1e-2
    k = classifier_eval.as_scored(ds.test)  # bin centres
    x = np.array(ds.test)
    x[0, 0, 0, 0] = np.nan  # a failed row: dropped and counted
    s2 = classifier_eval.score(model, params, x, ds.test, ds.test_labels)
    assert s2["n_dropped"] == 1 and s2["n_scored"] == len(x) - 1
    assert np.allclose(classifier_eval.as_scored(np.asarray(images.quantize(k))), k)


def test_fm_job_writes_classifier_scores(trained, tmp_path):
    """A conditional FM digits job with eval.classifier_workdir: fd_classifier_w<w> and
    accuracy_w<w> for each guidance weight, best_w, the samples .npz; the saved
    samples score the same again with experiments/score_samples.py."""
    from tests.test_image_jobs import _tiny

    config = _tiny("fm")
    config.eval.classifier_workdir = trained[1]
    config.eval.fd_samples, config.eval.guidance_ws = 20, (0.0, 2.0)
    r = runs.get("fm")(config, str(tmp_path), argv=[])
    for w in ("0", "2"):
        assert np.isfinite(r[f"fd_classifier_w{w}"]) and 0 <= r[f"accuracy_w{w}"] <= 1
        z = np.load(tmp_path / f"samples_w{w}.npz")
        assert z["images"].dtype == np.uint8 and z["images"].shape == (20, 8, 8, 1)
        np.testing.assert_array_equal(z["labels"], np.arange(20) % 10)
    assert r["best_w"] in (0.0, 2.0) and r["fd_classifier_best"] == min(
        r["fd_classifier_w0"], r["fd_classifier_w2"])
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert "fd_classifier_w2" in m and m["notes"]["fd_classifier"] == classifier.DISCLAIMER
    from experiments import score_samples

    files = [str(tmp_path / f"samples_w{w}.npz") for w in ("0", "2")]
    out = score_samples.main(["--classifier_workdir", trained[1], "--samples", *files])
    assert json.loads((tmp_path / "classifier_scores.json").read_text())["note"] == (
        classifier.DISCLAIMER)
    for w, f in zip(("0", "2"), files):
        s = out["scores"][f]
        assert s["fd_classifier"] == pytest.approx(r[f"fd_classifier_w{w}"], rel=1e-6)
        assert s["accuracy"] == pytest.approx(r[f"accuracy_w{w}"])


def test_missing_or_mismatched_classifier_is_refused_before_training(tmp_path, trained):
    from tests.test_image_jobs import _tiny

    config = _tiny("lfm")
    config.eval.classifier_workdir = str(tmp_path / "nowhere")
    with pytest.raises(validation.InvalidConfigError, match="classifier.json"):
        runs.get("lfm")(config, str(tmp_path / "run"), argv=[])
    assert not os.path.exists(tmp_path / "run" / "config.json")  # nothing started
    config.eval.classifier_workdir = trained[1]
    config.seed = 1
    with pytest.raises(validation.InvalidConfigError, match="seed"):
        validation.validate_config(config)


@pytest.mark.slow
@pytest.mark.parametrize("method,variant", [("lfm", ""), ("fm", "uncond")])
def test_other_image_jobs_write_classifier_scores(trained, tmp_path, method, variant):
    """The LFM job (every block guided) per guidance weight, and an unconditional
    model's one unguided set (fd_classifier, samples_uncond.npz, no accuracy)."""
    from tests.test_image_jobs import _tiny

    config = _tiny(method, variant)
    config.eval.classifier_workdir = trained[1]
    config.eval.fd_samples, config.eval.guidance_ws = 20, (1.0, 3.0)
    r = runs.get(method)(config, str(tmp_path), argv=[])
    if variant == "uncond":
        assert np.isfinite(r["fd_classifier"]) and "best_w" not in r
        assert "labels" not in np.load(tmp_path / "samples_uncond.npz").files
    else:
        assert r["best_w"] in (1.0, 3.0) and 0 <= r["accuracy_w3"] <= 1
        assert os.path.exists(tmp_path / "samples_w1.npz")


def test_best_weights_skip_non_finite_distances():
    """image_eval.best_weights: per score the w of the lowest finite distance (a NaN
    never wins), the Inception keys suffixed, scores without weights left out."""
    from lfm_jax.runs import image_eval

    got = image_eval.best_weights({"fd_classifier": {0.0: 9.0, 1.0: float("nan"),
                                                     2.0: 4.0, 3.0: 5.0},
                                   "fid_inception": {}})
    assert got == {"best_w": 2.0, "fd_classifier_best": 4.0}
    got = image_eval.best_weights({"fid_inception": {1.0: float("inf"), 2.0: 7.5}})
    assert got == {"best_w_inception": 2.0, "fid_inception_best": 7.5}
