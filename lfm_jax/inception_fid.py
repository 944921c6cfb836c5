"""Standard (Inception) FID with pytorch-fid, from Inception weights the user holds
locally. Never downloads anything.

Unlike `classifier.fd_classifier` (a small classifier trained in this repository),
this is the usual FID: the Fréchet distance between Gaussian fits of the 2048-d pool3
features of the FID Inception-v3 network, computed by pytorch-fid, the maintained
reference implementation (`pytorch_fid.inception.InceptionV3`,
`pytorch_fid.fid_score.calculate_frechet_distance`). The weights are pytorch-fid's
port of the TensorFlow FID network, the file `WEIGHTS_FILE`, passed as a path.

Loading without network: pytorch-fid builds the network with
`torch.hub.load_state_dict_from_url(FID_WEIGHTS_URL)`, which reads
`<hub dir>/checkpoints/<basename of the URL>` and downloads only when that file is
absent. `load_network` points the torch hub directory (restored afterwards) at a
temporary folder where that name links to the user's file, and checks the link
before building, so the file is always read; while it builds, torch.hub's downloader
raises instead of fetching.

Inputs: images (n, H, W, C), C = 1 (repeated to 3 channels) or 3, float in [-1, 1]
(the jobs' samples and test images) or uint8. Float images are quantised to 8 bits
(`images.quantize`, as the jobs save them in samples_*.npz) and every image enters
the network as k / 255 in [0, 1], which is what pytorch-fid feeds for PNG files, so
`fid` of a set equals pytorch-fid's command line on the same images saved as PNGs.
pytorch-fid resizes them to 299 x 299 (bilinear) and maps [0, 1] to [-1, 1].

FID from N samples is biased upward, the more so the smaller N (a few thousand or
fewer here): compare values at equal N only, never with published 50k-sample FIDs
(`note`).

torch, torchvision and pytorch-fid are optional (`pip install -e .[fid]`, `INSTALL`)
and imported inside the functions, so importing lfm_jax never needs torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import urllib.parse
from typing import Any

import numpy as np

from lfm_jax import images as images_lib
from lfm_jax import lfm

__all__ = ["METRIC", "WEIGHTS_FILE", "INSTALL", "Inception", "check_weights",
           "load_network", "as_network_input", "features", "statistics", "fid",
           "scorer", "note"]

METRIC = "fid_inception"
"""Name under which standard FID is reported (fid_inception_w<w>, fid_inception_K<K>)."""

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
"""pytorch-fid's FID Inception weights (the basename of pytorch_fid.inception's
FID_WEIGHTS_URL); any file name is accepted."""

INSTALL = ("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu "
           "(or a CUDA build of torch and torchvision), then pip install pytorch-fid "
           "(or pip install -e '.[fid]')")
"""How to install the optional dependencies, named in the ImportError."""

FEATURES = 2048  # pool3, the standard FID features


@dataclasses.dataclass(frozen=True)
class Inception:
    """pytorch-fid's InceptionV3 (pool3 block, eval mode) on `device`, built from the
    local `weights` file by `load_network`."""

    module: Any
    device: str
    weights: str


def _modules():
    """(torch, pytorch_fid.inception, pytorch_fid.fid_score), or ImportError saying
    how to install them."""
    try:
        import torch
        from pytorch_fid import fid_score, inception
    except ImportError as e:
        raise ImportError(f"standard (Inception) FID needs torch, torchvision and "
                          f"pytorch-fid ({e}): {INSTALL}") from e
    return torch, inception, fid_score


def check_weights(path) -> str:
    """The absolute path of a local Inception weights file, after checking that the
    file exists (FileNotFoundError naming the path) and that torch / pytorch-fid import
    (ImportError naming `INSTALL`). Reads nothing from the file."""
    full = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if not os.path.isfile(full):
        raise FileNotFoundError(
            f"Inception weights {full} not found: standard FID needs pytorch-fid's "
            f"{WEIGHTS_FILE} on this machine (it is never downloaded at run time)")
    _modules()
    return full


def _refuse_download(url, dst, *args, **kwargs):
    raise RuntimeError(f"inception_fid: refusing to download {url} (to {dst}); the "
                       f"Inception weights are read from a local file only")


@contextlib.contextmanager
def _local_hub(weights: str, url: str):
    """A torch hub directory (temporary; the previous one restored on exit) whose
    checkpoints/<basename of url> is the local `weights` file (a link, else a copy);
    meanwhile torch.hub's downloader raises (`_refuse_download`), so a change in
    pytorch-fid's loading can never fetch anything."""
    import torch

    previous, download = torch.hub.get_dir(), torch.hub.download_url_to_file
    with tempfile.TemporaryDirectory() as hub:
        folder = os.path.join(hub, "checkpoints")
        os.makedirs(folder)
        target = os.path.join(folder, os.path.basename(urllib.parse.urlparse(url).path))
        try:
            os.symlink(weights, target)
        except OSError:  # no symlinks (some Windows set-ups)
            shutil.copyfile(weights, target)
        if not os.path.isfile(target):
            raise FileNotFoundError(f"Inception weights {weights} not readable at {target}")
        torch.hub.set_dir(hub)
        torch.hub.download_url_to_file = _refuse_download
        try:
            yield
        finally:
            torch.hub.set_dir(previous)
            torch.hub.download_url_to_file = download


def load_network(weights, device=None) -> Inception:
    """pytorch-fid's FID InceptionV3 returning the 2048-d pool3 features, with input
    resizing and normalisation on (pytorch-fid's defaults), weights read from the
    local file `weights` only (`check_weights`; module docstring). device: a torch
    device name; None: "cuda" when torch sees a GPU, else "cpu"."""
    path = check_weights(weights)
    torch, inception, _ = _modules()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    with _local_hub(path, inception.FID_WEIGHTS_URL):
        block = inception.InceptionV3.BLOCK_INDEX_BY_DIM[FEATURES]
        module = inception.InceptionV3([block])
    return Inception(module.to(device).eval(), str(device), path)


def as_network_input(images) -> np.ndarray:
    """float32 (n, 3, H, W) in [0, 1] from images (n, H, W, C): uint8 k, or float in
    [-1, 1] quantised to k first (`images.quantize`: clipped to [-1, 1]); k / 255,
    one channel repeated to three.

    Raises ValueError for a rank other than 4, C not 1 or 3, no rows, or a NaN / inf
    (drop failed samples first)."""
    x = np.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"images must be (n, H, W, C) with C = 1 or 3, got shape {x.shape}")
    if len(x) == 0:
        raise ValueError("images: no rows")
    if x.dtype != np.uint8:
        bad = lfm.failed_rows(x)
        if bad.any():
            raise ValueError(f"images: {int(bad.sum())} of {len(x)} rows hold NaN / inf "
                             f"(e.g. row {int(np.argmax(bad))}); drop them first")
        x = np.asarray(images_lib.quantize(x))
    x = x.astype(np.float32) / 255.0
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def features(images, weights, *, batch_size: int = 50, device=None) -> np.ndarray:
    """float64 (n, 2048): the pool3 features of images (n, H, W, C) (`as_network_input`)
    in batches of batch_size. weights: the local weights file, or an `Inception` from
    `load_network` (built once, reused)."""
    net = weights if isinstance(weights, Inception) else load_network(weights, device)
    torch, _, _ = _modules()
    x = as_network_input(images)
    out = np.empty((len(x), FEATURES), np.float64)
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            batch = torch.from_numpy(x[i:i + batch_size]).to(net.device)
            pred = net.module(batch)[0]  # (b, 2048, 1, 1) after the average pool
            out[i:i + len(batch)] = pred.squeeze(3).squeeze(2).cpu().numpy()
    return out


def statistics(feats) -> tuple:
    """(mu (d,), sigma (d, d)): mean and covariance (rows = samples) of features (n, d),
    as pytorch-fid computes them."""
    f = np.asarray(feats, np.float64)
    if len(f) < 2:
        raise ValueError(f"FID needs at least 2 images, got {len(f)}")
    return np.mean(f, axis=0), np.cov(f, rowvar=False)


def _distance(a: tuple, b: tuple) -> float:
    _, _, fid_score = _modules()
    return float(fid_score.calculate_frechet_distance(*a, *b))


def scorer(reference, weights, *, batch_size: int = 50, device=None):
    """fid_of(samples) -> float: `fid` of samples against `reference`, with the network
    built and the reference statistics computed once (here), for scoring several
    sample sets against the same images."""
    net = weights if isinstance(weights, Inception) else load_network(weights, device)
    ref = statistics(features(reference, net, batch_size=batch_size))

    def fid_of(samples) -> float:
        return _distance(statistics(features(samples, net, batch_size=batch_size)), ref)

    return fid_of


def fid(samples, reference, weights, *, batch_size: int = 50, device=None) -> float:
    """Standard FID between two image sets (n, H, W, C) (`features`, `statistics`,
    pytorch-fid's `calculate_frechet_distance` of the samples' then the reference's
    mean and covariance): |mu_1 - mu_2|^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2})."""
    return scorer(reference, weights, batch_size=batch_size, device=device)(samples)


def note(n_samples, n_reference: int) -> str:
    """The caveat stored with a reported FID (metrics.json "notes"); n_samples: the
    number of samples scored, or None (then "n_scored" of the results)."""
    n = "n_scored" if n_samples is None else n_samples
    return (f"{METRIC}: standard FID (pytorch-fid, Inception-v3 pool3 features, local "
            f"weights) of {n} samples against {n_reference} held-out reference "
            f"images, both 8-bit. FID from few samples is biased upward: comparable only "
            f"at the same sample counts, not with published 50k-sample FID values")
