"""The torch side of the benchmarks: one MLP shared by every peer, and each peer's loss.

Every peer trains the SAME network as lfm-jax: input [Fourier features of t (17 =
t, sin(w_k t), cos(w_k t), k = 0..7, w_k = 64^(k/7)), x], 4 hidden SiLU layers, linear
output; this is `lfm_jax.networks.velocity_mlp` written in torch, so parameter counts
are equal and trained torch weights port one-to-one into our flax params
(`torch_to_flax`), which lets one evaluator (our diffrax exact-divergence log_prob)
score every model.

Peers (each used as its README shows, with a plain torch training loop, Adam 1e-3):
- torchcfm: `ConditionalFlowMatcher(sigma=0)`.sample_location_and_conditional_flow.
- flow_matching (Meta): `AffineProbPath(CondOTScheduler())`.sample.
- rectified-flow-pytorch: `RectifiedFlow(model, time_cond_kwarg="times")`.forward
  (flow prediction, MSE, no data normalisation); `LsdFlow` and `MeanFlow` for few-step.

rectified-flow-pytorch's package `__init__` imports torchvision (and its image U-Net
code); PyPI's torchvision does not load beside the local torch 2.13.0 CPU wheel, so
`import_rectified_flow` puts a stub `torchvision` module in `sys.modules` when the real
one is missing. Only image I/O and the LPIPS loss touch it; nothing here does.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import math
import sys
import types

import numpy as np
import torch
from torch import nn


def fourier_frequencies(num_frequencies: int = 8, max_frequency: float = 64.0):
    """w_k = max_frequency^(k / (K-1)), k = 0..K-1, as lfm_jax.networks."""
    k = torch.arange(num_frequencies, dtype=torch.float32)
    return torch.exp(k / max(num_frequencies - 1, 1) * math.log(max_frequency))


def fourier_features(t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """t (b,) -> (b, 2K+1): [t, sin(w_k t), cos(w_k t)], as lfm_jax.networks."""
    t = t[:, None]
    wt = t * w
    return torch.cat([t, torch.sin(wt), torch.cos(wt)], dim=-1)


class MLP(nn.Module):
    """[features(t_1), ..., features(t_n), x] -> hidden SiLU layers -> dim.

    forward(x, *times): x (b, dim), each time a tensor of shape (b,) or a scalar.
    """

    def __init__(self, dim: int, hidden=(256,) * 4, num_times: int = 1,
                 num_frequencies: int = 8, max_frequency: float = 64.0):
        super().__init__()
        self.register_buffer("w", fourier_frequencies(num_frequencies, max_frequency),
                             persistent=False)
        width_in = num_times * (2 * num_frequencies + 1) + dim
        layers = []
        for width in hidden:
            layers += [nn.Linear(width_in, width), nn.SiLU()]
            width_in = width
        layers.append(nn.Linear(width_in, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x, *times):
        feats = []
        for t in times:
            if not torch.is_tensor(t):
                t = torch.tensor(t, dtype=x.dtype, device=x.device)
            if t.ndim == 0:
                t = t.expand(x.shape[0])
            feats.append(fourier_features(t.reshape(x.shape[0]).to(x.dtype), self.w))
        return self.net(torch.cat(feats + [x], dim=-1))


class TimeFirst(nn.Module):
    """torchcfm convention: model(t, x)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, t, x):
        return self.mlp(x, t)


class TimesKwarg(nn.Module):
    """rectified-flow-pytorch convention: model(x, times=t)."""

    def __init__(self, mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, x, times):
        return self.mlp(x, times)


def torch_to_flax(mlp: MLP) -> dict:
    """Flax params of lfm_jax.networks.MLP (Dense_0..Dense_L) from a torch `MLP`."""
    linears = [m for m in mlp.net if isinstance(m, nn.Linear)]
    return {"params": {f"Dense_{i}": {
        "kernel": np.array(l.weight.detach().cpu().numpy().T, np.float32),  # copies
        "bias": np.array(l.bias.detach().cpu().numpy(), np.float32)}
        for i, l in enumerate(linears)}}


def _stub_torchvision():
    """A do-nothing `torchvision` so that rectified_flow_pytorch's __init__ imports."""
    tv = types.ModuleType("torchvision")
    tv.__path__ = []
    for sub in ("utils", "models", "transforms"):
        mod = types.ModuleType(f"torchvision.{sub}")
        sys.modules[f"torchvision.{sub}"] = mod
        setattr(tv, sub, mod)

    class VGG16_Weights:  # noqa: N801  (mirrors the torchvision name)
        DEFAULT = None

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stub: image utilities are not available here")

    tv.utils.save_image = unavailable
    tv.models.VGG16_Weights = VGG16_Weights
    tv.models.vgg16 = unavailable
    tv.transforms.Compose = unavailable
    sys.modules["torchvision"] = tv
    return tv


def import_rectified_flow():
    """The rectified_flow_pytorch module (with a torchvision stub if needed)."""
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001  (missing, or a build that fails to load)
        for name in [m for m in sys.modules if m.split(".")[0] == "torchvision"]:
            del sys.modules[name]
        _stub_torchvision()
    return importlib.import_module("rectified_flow_pytorch")


def versions() -> dict:
    out = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    for dist in ("torchcfm", "flow_matching", "rectified-flow-pytorch", "torchdiffeq"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------- flow-matching losses
# Each factory returns (module_to_optimise, loss(x1_batch) -> scalar). x0 ~ N(0, I) is
# drawn inside, t ~ U[0, 1], linear path x_t = (1 - t) x0 + t x1, target x1 - x0.


def torchcfm_loss(mlp: MLP):
    from torchcfm.conditional_flow_matching import ConditionalFlowMatcher

    fm = ConditionalFlowMatcher(sigma=0.0)
    model = TimeFirst(mlp)

    def loss(x1):
        x0 = torch.randn_like(x1)
        t, xt, ut = fm.sample_location_and_conditional_flow(x0, x1)
        return torch.mean((model(t, xt) - ut) ** 2)

    return model, loss


def flow_matching_loss(mlp: MLP):
    from flow_matching.path import AffineProbPath
    from flow_matching.path.scheduler import CondOTScheduler

    path = AffineProbPath(scheduler=CondOTScheduler())

    def loss(x1):
        x0 = torch.randn_like(x1)
        t = torch.rand(x1.shape[0], device=x1.device)
        ps = path.sample(t=t, x_0=x0, x_1=x1)
        return torch.mean((mlp(ps.x_t, ps.t) - ps.dx_t) ** 2)

    return mlp, loss


def rectified_flow_loss(mlp: MLP):
    rf_lib = import_rectified_flow()
    rf = rf_lib.RectifiedFlow(TimesKwarg(mlp), time_cond_kwarg="times", predict="flow",
                              loss_fn="mse", data_normalize_fn=None,
                              data_unnormalize_fn=None)
    return rf, lambda x1: rf(x1)


FM_PEERS = {
    "torchcfm": torchcfm_loss,
    "flow_matching": flow_matching_loss,
    "rectified_flow": rectified_flow_loss,
}


def available_peers(names=None) -> dict:
    """name -> loss factory for the peers that import here (others are reported)."""
    out, missing = {}, {}
    for name, factory in FM_PEERS.items():
        if names is not None and name not in names:
            continue
        try:
            factory(MLP(2, hidden=(8,)))
            out[name] = factory
        except Exception as e:  # noqa: BLE001
            missing[name] = f"{type(e).__name__}: {e}"
    return out, missing


class TorchTrainer:
    """Plain torch loop: Adam(lr), batches drawn by index from a tensor on device."""

    def __init__(self, factory, dim, hidden, data: np.ndarray, batch_size: int, *,
                 lr: float = 1e-3, seed: int = 0, device: str = "cpu"):
        torch.manual_seed(seed)
        self.device = device
        self.mlp = MLP(dim, hidden).to(device)
        self.module, self.loss = factory(self.mlp)
        self.module.to(device)
        self.opt = torch.optim.Adam(self.mlp.parameters(), lr=lr)
        self.data = torch.as_tensor(np.asarray(data), dtype=torch.float32, device=device)
        self.batch_size = batch_size
        self.gen = torch.Generator(device=device).manual_seed(seed + 12345)
        self.steps = 0

    def step(self, n: int = 1):
        for _ in range(n):
            idx = torch.randint(0, self.data.shape[0], (self.batch_size,),
                                device=self.device, generator=self.gen)
            loss = self.loss(self.data[idx])
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        self.steps += n
        return loss

    def sync(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
