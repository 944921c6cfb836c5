"""Standard (Inception) FID through pytorch-fid (`lfm_jax.inception_fid`), CPU, no
network: a stand-in weights file with pytorch-fid's architecture and random weights,
written here; our features and FID against pytorch-fid's own network and distance;
loading from the local file with every connection refused; the FM digits job and
score_samples reporting fid_inception_w<w>. Needs torch, torchvision and pytorch-fid
(`pip install -e .[fid]`), so marked `fid` and left out of the default run (CI):
`pytest -m fid`. The parts that need no torch are in test_inception_fid.py.

The real 2048-d distance (scipy's sqrtm in pytorch-fid) takes 30 s or more on a
2-core CPU, so the fast tests check what our code passes to pytorch-fid's
`calculate_frechet_distance` and that its value comes back; the slow test calls it.
"""

import json
import os
import socket

import numpy as np
import pytest

from lfm_jax import images, inception_fid

# Without the fid extra (the default install, CI) this module is skipped as a whole.
torch = pytest.importorskip("torch", reason="needs the fid extra: pip install -e .[fid]")
pytest.importorskip("pytorch_fid", reason="needs the fid extra: pip install -e .[fid]")
from pytorch_fid import fid_score, inception  # noqa: E402

pytestmark = pytest.mark.fid


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A stand-in for pt_inception-2015-12-05-6726825d.pth: pytorch-fid's FID
    Inception-v3 (its own architecture) with the random initialisation kept (its URL
    loader and load_state_dict made no-ops while it is built), saved as a state dict
    under another name."""
    path = str(tmp_path_factory.mktemp("inception") / "random_inception.pth")
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(inception, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = inception.fid_inception_v3()
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def reference_net(weights):
    """pytorch-fid's InceptionV3 (pool3) loaded directly from the same state dict."""
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(inception, "load_state_dict_from_url",
                  lambda *a, **k: torch.load(weights))
        return inception.InceptionV3([3]).eval()


def _direct(net, k):
    """pytorch-fid's pool3 features of uint8 images k (n, H, W, C), fed as pytorch-fid
    feeds PNG files: k / 255, (n, 3, H, W), a gray channel repeated."""
    x = torch.from_numpy(k.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return net(x)[0].squeeze(3).squeeze(2).numpy().astype(np.float64)


def _images(seed, n, channels, size=8):
    """uint8 images k and their bin centres in [-1, 1] (as the jobs hold test images)."""
    k = np.random.default_rng(seed).integers(0, 256, (n, size, size, channels), np.uint8)
    return k, np.asarray(images.to_centered(k))


@pytest.fixture(scope="module")
def sets(reference_net):
    """[(k, x, pytorch-fid's features)]: two grayscale images and two RGB ones (each
    image costs about a second of CPU at 299 x 299)."""
    return [(k, x, _direct(reference_net, k))
            for k, x in (_images(0, 2, 1), _images(1, 2, 3))]


@pytest.fixture(scope="module")
def net(weights):
    """Our network (`inception_fid.load_network`) from the stand-in file, on the CPU."""
    return inception_fid.load_network(weights, "cpu")


def test_features_are_pytorch_fids(weights, net, sets):
    """(n, 2048) pool3 features equal pytorch-fid's own network on k / 255, for
    grayscale (n, H, W, 1) images (repeated to 3 channels) and RGB ones; uint8 and
    float [-1, 1] copies of the same images are fed the same."""
    assert net.weights == weights and net.device == "cpu"
    for (k, x, direct), batch in zip(sets, (1, 50)):
        f = inception_fid.features(x, net, batch_size=batch)
        assert f.shape == (2, 2048) and f.dtype == np.float64
        np.testing.assert_allclose(f, direct, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(inception_fid.as_network_input(k),
                                      inception_fid.as_network_input(x))


def test_fid_is_pytorch_fids_distance(net, sets, monkeypatch):
    """fid (through scorer) hands pytorch-fid's calculate_frechet_distance the mean and
    covariance of pytorch-fid's own features of both sets (samples first) and returns
    its value."""
    (_, xa, fa), (_, xb, fb) = sets
    calls = []
    monkeypatch.setattr(fid_score, "calculate_frechet_distance",
                        lambda *a: calls.append(a) or np.float64(1.25))
    assert inception_fid.fid(xa, xb, net) == 1.25
    (mu1, s1, mu2, s2), = calls
    assert s1.shape == s2.shape == (2048, 2048)
    np.testing.assert_allclose(mu1, fa.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s1, np.cov(fa, rowvar=False), rtol=1e-4, atol=1e-8)
    np.testing.assert_allclose(mu2, fb.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(s2, np.cov(fb, rowvar=False), rtol=1e-4, atol=1e-8)


@pytest.mark.slow
def test_fid_values(weights, sets):
    """With pytorch-fid's real distance (three 2048-d sqrtm, a minute or more on a
    2-core CPU): FID(x, x) ~ 0, FID(x, y) > 0 and equal to calculate_frechet_distance
    of pytorch-fid's own features."""
    (_, xa, fa), (_, xb, fb) = sets
    fid_of = inception_fid.scorer(xa, weights)
    d = fid_of(xb)
    expected = fid_score.calculate_frechet_distance(
        fb.mean(0), np.cov(fb, rowvar=False), fa.mean(0), np.cov(fa, rowvar=False))
    assert d > 0 and d == pytest.approx(expected, rel=1e-4)
    assert abs(fid_of(xa)) < 1e-3 * d


def test_loads_the_local_file_without_network(weights, tmp_path, monkeypatch):
    """With every socket connection refused the network builds from the local file
    (its parameters are the file's), and a torch hub dir set elsewhere is restored and
    left without a checkpoint; while building, torch.hub refuses any download."""
    def refuse(*a, **k):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    with pytest.raises(OSError, match="network access"):
        socket.create_connection(("127.0.0.1", 9), timeout=1)
    elsewhere = str(tmp_path / "hub")
    previous = torch.hub.get_dir()
    torch.hub.set_dir(elsewhere)
    try:
        net = inception_fid.load_network(weights, "cpu")
        assert torch.hub.get_dir() == elsewhere
    finally:
        torch.hub.set_dir(previous)
    assert not os.path.exists(os.path.join(elsewhere, "checkpoints"))
    state = torch.load(weights)
    conv = net.module.blocks[0][0].conv.weight
    torch.testing.assert_close(conv, state["Conv2d_1a_3x3.conv.weight"])
    with inception_fid._local_hub(weights, inception.FID_WEIGHTS_URL):  # any other file
        with pytest.raises(RuntimeError, match="refusing to download"):
            torch.hub.load_state_dict_from_url("https://example.invalid/other.pth")
    assert torch.hub.download_url_to_file is not inception_fid._refuse_download


from tests.test_inception_fid import _tiny_fm  # noqa: E402


def _cheap_distance(mu1, s1, mu2, s2):
    """A stand-in for the 2048-d Frechet distance (tens of seconds of CPU)."""
    return float(np.sum((mu1 - mu2) ** 2))


@pytest.fixture(scope="module")
def fm_run(weights, tmp_path_factory):
    """(workdir, returned results, metrics.json) of the conditional FM digits job with
    eval.inception_weights and no classifier (the distance: `_cheap_distance`)."""
    from lfm_jax import runs

    workdir = tmp_path_factory.mktemp("fm")
    config = _tiny_fm()
    config.eval.inception_weights = weights
    mp = pytest.MonkeyPatch()
    with mp.context() as m:
        m.setattr(fid_score, "calculate_frechet_distance", _cheap_distance)
        r = runs.get("fm")(config, str(workdir), argv=[])
    return workdir, r, json.loads((workdir / "metrics.json").read_text())


def test_fm_job_reports_fid_inception(weights, fm_run):
    """fid_inception_w<w> per guidance weight, best_w_inception, the note in
    metrics.json; no classifier keys."""
    _, r, m = fm_run
    for w in ("0", "2"):
        assert np.isfinite(m[f"fid_inception_w{w}"]) and m[f"fid_inception_w{w}"] > 0
        assert m[f"fd_n_dropped_w{w}"] == 0
    assert m["best_w_inception"] in (0.0, 2.0) and m["fid_inception_best"] == min(
        m["fid_inception_w0"], m["fid_inception_w2"])
    assert "fd_classifier_w0" not in m and "best_w" not in m
    note = m["notes"]["fid_inception"]
    assert "standard FID" in note and "pytorch-fid" in note and "biased upward" in note
    assert "2 samples against 2" in note
    assert r["inception_weights"] == weights


def test_score_samples_reproduces_the_job(weights, fm_run, monkeypatch):
    """experiments/score_samples.py, Inception only, reference split from the job's
    workdir: the saved uint8 samples get the job's FID; fid_scores.json has the note."""
    from experiments import score_samples

    workdir, _, m = fm_run
    monkeypatch.setattr(fid_score, "calculate_frechet_distance", _cheap_distance)
    out = score_samples.main(["--inception_weights", weights, "--reference_workdir",
                              str(workdir), "--samples", str(workdir / "samples_w2.npz")])
    s, = out["scores"].values()
    assert s["fid_inception"] == pytest.approx(m["fid_inception_w2"], rel=1e-6)
    assert s["n_scored"] == 2 and "fd_classifier" not in s
    saved = json.loads((workdir / "fid_scores.json").read_text())
    assert "standard FID" in saved["notes"]["fid_inception"] and "note" not in saved
    with pytest.raises(SystemExit):  # Inception without a reference split
        score_samples.parse_args(["--inception_weights", weights, "--samples", "a.npz"])
