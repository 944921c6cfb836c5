"""U-Net velocity fields and two-time flow-map networks for images (Flax Linen).

The architecture is guided-diffusion's `UNetModel` (Dhariwal & Nichol), as used by
torchcfm's CIFAR-10 example (`UNetModelWrapper`), channels-last:

- time embedding: sinusoidal features of `time_scale * t` of dimension `channels`
  ([cos(w_k t'), sin(w_k t')], w_k = 10000^(-k / (channels/2))), then
  Dense(4 channels) - SiLU - Dense(4 channels). A two-time network embeds s and t
  separately and CONCATENATES the two sinusoidal vectors before the MLP, so the
  embedding distinguishes (s, t) from (t, s);
- conditioning: a class label adds a learned embedding (num_classes + 1 rows, the
  last the null class of classifier-free guidance) to the time embedding; a context
  vector adds Dense(4 channels)(context);
- encoder: a 3x3 conv to channels * channel_mult[0], then per level
  `num_res_blocks` residual blocks (+ self-attention where the feature map's side is
  in `attention_resolutions`) and a stride-2 3x3 conv downsample (not after the last
  level); middle: res block, attention, res block; decoder: per level in reverse,
  num_res_blocks + 1 residual blocks on [h, skip] (+ attention), a nearest-neighbour
  x2 upsample and a 3x3 conv (not after level 0); out: GroupNorm, SiLU, 3x3 conv;
- residual block: GroupNorm - SiLU - conv3x3 - (+ Dense(SiLU(emb))) - GroupNorm -
  SiLU - dropout - conv3x3, plus a 1x1 conv on the skip path when channels change;
- attention: GroupNorm, a qkv projection, max(1, C // num_head_channels) heads,
  softmax in float32, an output projection, residual.
With `zero_init=True` (default, as guided-diffusion) the last conv of every residual
branch, the attention output projection and the output conv start at zero, so the
initial network is exactly 0; tests use zero_init=False to see every input.

Interface (a `conditional.ConditionalNetwork`, one example):
  velocity_unet(...).apply(params, t, x, y=None, *, dropout_key=None)
  two_time_unet(...).apply(params, s, t, x, y=None, *, dropout_key=None)
x: one image (H, W, C) channels-last; output: same shape. y: an int label (None =
null label) or a context vector (see `lfm_jax.conditional`). `dropout_key=None` is
the deterministic network (evaluation, sampling); a key turns dropout on (training).
Under `jax.vmap` pass one key per example (e.g. `jax.random.split(key, n)`), else
every example draws the same mask.

Batching: the module internally works on a batch of ONE image (1, H, W, C); under
`jax.vmap` XLA's batching rules fold the mapped axis into the convolution's batch
axis, so a vmapped call compiles to the same batched convolutions, group norms and
attention as a batched module (no per-example loop).

`init(key)` is jitted: one compiled program instead of a few hundred eagerly
dispatched initialiser ops (on a CPU its compilation, mostly the threefry bits of
every initialiser, still takes seconds).

Mixed precision: `dtype` is the compute dtype (float32 or bfloat16); parameters are
float32 (`param_dtype`). GroupNorm statistics and the attention softmax are computed
in float32. The output is cast to promote_types(x.dtype, float32): float32 for a
bfloat16 or float32 input, float64 for a float64 input.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lfm_jax import networks
from lfm_jax.conditional import ConditionalNetwork, check_kind, check_condition

__all__ = [
    "DTYPES",
    "PRESETS",
    "preset",
    "timestep_embedding",
    "UNet",
    "velocity_unet",
    "two_time_unet",
    "two_time_params_from_velocity",
]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
"""Compute dtypes by config name; parameters stay float32."""


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """[cos(w_k t), sin(w_k t)], w_k = max_period^(-k / (dim // 2)), k < dim // 2;
    a zero is appended when dim is odd. t scalar -> (dim,) float32."""
    half = dim // 2
    w = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    arg = jnp.asarray(t, jnp.float32) * w
    emb = jnp.concatenate([jnp.cos(arg), jnp.sin(arg)])
    if dim % 2:
        emb = jnp.concatenate([emb, jnp.zeros((1,), jnp.float32)])
    return emb


def _out_init(zero_init: bool):
    return nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()


class ResBlock(nn.Module):
    """Residual block with a time/condition embedding added between the two convs."""

    out_channels: int
    dropout: float
    num_groups: int
    zero_init: bool
    dtype: Any

    @nn.compact
    def __call__(self, x, emb, deterministic: bool):
        norm = lambda: nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5,
                                    dtype=self.dtype)
        h = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype)(nn.silu(norm()(x)))
        h = h + nn.Dense(self.out_channels, dtype=self.dtype)(nn.silu(emb))[:, None, None, :]
        h = nn.Dropout(self.dropout)(nn.silu(norm()(h)), deterministic=deterministic)
        h = nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype,
                    kernel_init=_out_init(self.zero_init))(h)
        if x.shape[-1] != self.out_channels:
            x = nn.Conv(self.out_channels, (1, 1), dtype=self.dtype)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H W positions, residual."""

    num_head_channels: int
    num_groups: int
    zero_init: bool
    dtype: Any

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        heads = max(1, c // self.num_head_channels)
        d = c // heads
        h = nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype)(x)
        qkv = nn.Dense(3 * c, dtype=self.dtype)(h.reshape(b, hgt * wid, c))
        q, k, v = (a.reshape(b, hgt * wid, heads, d) for a in jnp.split(qkv, 3, axis=-1))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k,
                            preferred_element_type=jnp.float32) / math.sqrt(d)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, hgt * wid, c)
        out = nn.Dense(c, dtype=self.dtype, kernel_init=_out_init(self.zero_init))(out)
        return x + out.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """guided-diffusion U-Net on a batch (B, H, W, C) -> (B, H, W, C) (compute dtype).

    `times` is a list of (B,) arrays (one for a velocity, two for a flow map); `cond`
    is None, int labels (B,) or contexts (B, context_dim).
    """

    out_channels: int
    channels: int
    channel_mult: Sequence[int]
    num_res_blocks: int
    attention_resolutions: Sequence[int]
    dropout: float
    num_head_channels: int
    num_groups: int
    num_classes: Optional[int]
    context_dim: Optional[int]
    time_scale: float
    zero_init: bool
    dtype: Any

    @nn.compact
    def __call__(self, times, x, cond, deterministic: bool = True):
        emb_dim = 4 * self.channels
        sin = jnp.concatenate(
            [jax.vmap(lambda s: timestep_embedding(self.time_scale * s, self.channels))(t)
             for t in times], axis=-1)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(sin)
        emb = nn.Dense(emb_dim, dtype=self.dtype)(nn.silu(emb))
        if self.num_classes is not None:
            emb = emb + nn.Embed(self.num_classes + 1, emb_dim, dtype=self.dtype)(cond)
        elif self.context_dim is not None:
            emb = emb + nn.Dense(emb_dim, dtype=self.dtype)(cond.astype(self.dtype))

        res = lambda ch: ResBlock(ch, self.dropout, self.num_groups, self.zero_init, self.dtype)
        attn = lambda: AttentionBlock(self.num_head_channels, self.num_groups, self.zero_init,
                                      self.dtype)
        h = nn.Conv(self.channels * self.channel_mult[0], (3, 3), padding=1,
                    dtype=self.dtype)(x.astype(self.dtype))
        skips = [h]
        for level, mult in enumerate(self.channel_mult):
            for _ in range(self.num_res_blocks):
                h = res(self.channels * mult)(h, emb, deterministic)
                if h.shape[1] in self.attention_resolutions:
                    h = attn()(h)
                skips.append(h)
            if level != len(self.channel_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=2, padding=1, dtype=self.dtype)(h)
                skips.append(h)

        h = res(h.shape[-1])(h, emb, deterministic)
        h = attn()(h)
        h = res(h.shape[-1])(h, emb, deterministic)

        for level, mult in reversed(list(enumerate(self.channel_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = res(self.channels * mult)(h, emb, deterministic)
                if h.shape[1] in self.attention_resolutions:
                    h = attn()(h)
            if level:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(h.shape[-1], (3, 3), padding=1, dtype=self.dtype)(h)

        h = nn.silu(nn.GroupNorm(num_groups=self.num_groups, epsilon=1e-5, dtype=self.dtype)(h))
        return nn.Conv(self.out_channels, (3, 3), padding=1, dtype=self.dtype,
                       kernel_init=_out_init(self.zero_init))(h)


# ------------------------------------------------------------------------ presets

PRESETS = {
    # torchcfm examples/images/cifar10/train_cifar10.py: UNetModelWrapper(dim=(3, 32, 32),
    # num_res_blocks=2, num_channels=128, channel_mult=[1, 2, 2, 2], num_heads=4,
    # num_head_channels=64, attention_resolutions="16", dropout=0.1): 35.7M parameters.
    "cifar10": dict(example_shape=(32, 32, 3), channels=128, channel_mult=(1, 2, 2, 2),
                    num_res_blocks=2, attention_resolutions=(16,), dropout=0.1,
                    num_head_channels=64, num_groups=32),
    # torchcfm's MNIST notebooks use num_channels=32, num_res_blocks=1, channel_mult
    # (1, 2, 2); attention here at 14x14 (torchcfm's "16" maps to full 28x28 there).
    "mnist": dict(example_shape=(28, 28, 1), channels=32, channel_mult=(1, 2, 2),
                  num_res_blocks=1, attention_resolutions=(14,), dropout=0.1,
                  num_head_channels=32, num_groups=32),
    # sklearn's 8x8 digits on a CPU.
    "digits8": dict(example_shape=(8, 8, 1), channels=16, channel_mult=(1, 2),
                    num_res_blocks=1, attention_resolutions=(4,), dropout=0.0,
                    num_head_channels=16, num_groups=8),
}
"""Named U-Net sizes: keyword arguments of `velocity_unet` / `two_time_unet`."""


def preset(name: str, **overrides) -> dict:
    """Keyword arguments of the preset `name` with `overrides` applied, e.g.
    `velocity_unet(**preset("cifar10", num_classes=10, dtype="bfloat16"))`."""
    if name not in PRESETS:
        raise ValueError(f"unknown U-Net preset {name!r}; known: {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}


# -------------------------------------------------------------------- constructors


def _make(num_times, example_shape, *, channels, channel_mult, num_res_blocks,
          attention_resolutions, dropout=0.0, num_head_channels=64, num_groups=32,
          num_classes=None, context_dim=None, time_scale=1000.0, zero_init=True,
          dtype="float32") -> ConditionalNetwork:
    example_shape = tuple(int(d) for d in example_shape)
    if len(example_shape) != 3:
        raise ValueError(f"example_shape must be (H, W, C), got {example_shape}")
    hgt, wid, c_in = example_shape
    channel_mult = tuple(int(m) for m in channel_mult)
    attention_resolutions = tuple(int(r) for r in attention_resolutions)
    if not channel_mult:
        raise ValueError("channel_mult must have at least one level")
    factor = 2 ** (len(channel_mult) - 1)
    if hgt % factor or wid % factor:
        raise ValueError(f"image side {hgt}x{wid} is not divisible by 2^(levels - 1) = "
                         f"{factor} for channel_mult {channel_mult}")
    sides = [hgt // 2 ** k for k in range(len(channel_mult))]
    for r in attention_resolutions:
        if r not in sides:
            raise ValueError(f"attention resolution {r} is not a level side; sides: {sides}")
    for ch in {channels * m for m in channel_mult}:
        if ch % num_groups:
            raise ValueError(f"{ch} channels are not divisible by num_groups={num_groups}")
        heads = max(1, ch // num_head_channels)
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} attention heads")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; known: {sorted(DTYPES)}")
    check_kind(num_classes, context_dim)
    module = UNet(out_channels=c_in, channels=int(channels), channel_mult=channel_mult,
                  num_res_blocks=int(num_res_blocks),
                  attention_resolutions=attention_resolutions, dropout=float(dropout),
                  num_head_channels=int(num_head_channels), num_groups=int(num_groups),
                  num_classes=None if num_classes is None else int(num_classes),
                  context_dim=None if context_dim is None else int(context_dim),
                  time_scale=float(time_scale), zero_init=bool(zero_init),
                  dtype=DTYPES[dtype])

    def apply(params, *args, y=None, dropout_key=None):
        if len(args) == num_times + 2 and y is None:
            *args, y = args
        if len(args) != num_times + 1:
            raise TypeError(f"expected {num_times} time argument(s), x and optionally y; "
                            f"got {len(args)} positional arguments")
        *times, x = args
        if x.shape != example_shape:
            raise ValueError(f"network expects one image of shape {example_shape}, got "
                             f"{x.shape}; batch with jax.vmap")
        cond = check_condition(y, num_classes, context_dim)
        cond = None if cond is None else cond[None]
        times = [jnp.reshape(t, (1,)) for t in times]
        rngs = None if dropout_key is None else {"dropout": dropout_key}
        out = module.apply(params, times, x[None], cond, deterministic=dropout_key is None,
                           rngs=rngs)
        return out[0].astype(jnp.promote_types(x.dtype, jnp.float32))

    @jax.jit
    def init(key):
        times = [jnp.zeros((1,))] * num_times
        if num_classes is not None:
            cond = jnp.zeros((1,), jnp.int32)
        elif context_dim is not None:
            cond = jnp.zeros((1, int(context_dim)))
        else:
            cond = None
        return module.init(key, times, jnp.zeros((1,) + example_shape), cond)

    return ConditionalNetwork(init=init, apply=apply, example_shape=example_shape,
                              num_params=networks.count_params, num_classes=num_classes,
                              context_dim=context_dim)


def velocity_unet(example_shape, *, channels: int, channel_mult: Sequence[int],
                  num_res_blocks: int, attention_resolutions: Sequence[int],
                  dropout: float = 0.0, num_head_channels: int = 64, num_groups: int = 32,
                  num_classes: Optional[int] = None, context_dim: Optional[int] = None,
                  time_scale: float = 1000.0, zero_init: bool = True,
                  dtype: str = "float32") -> ConditionalNetwork:
    """U-Net velocity field: apply(params, t, x, y=None, *, dropout_key=None) -> (H, W, C).

    Args:
      example_shape: (H, W, C); H and W divisible by 2^(len(channel_mult) - 1).
      channels: base width; level k has channels * channel_mult[k] channels.
      num_res_blocks: residual blocks per level (the decoder has one more).
      attention_resolutions: feature-map sides (e.g. (16,) for 16x16) with attention.
      dropout: rate inside the residual blocks (active only with a dropout_key).
      num_head_channels: channels per attention head (heads = max(1, C // this)).
      num_groups: GroupNorm groups (must divide every level's channels).
      num_classes / context_dim: class labels (null label = num_classes) or a context.
      time_scale: the sinusoidal embedding sees time_scale * t (1000 maps t in [0, 1]
        to DDPM's step range; torchcfm uses 1). Time derivatives (jax.jvp in t, as in
        flow-map losses) grow with it: a smaller scale keeps them moderate.
      zero_init: zero-initialise the last layer of each residual branch and the output.
      dtype: compute dtype name, "float32" or "bfloat16" (parameters stay float32).
    """
    return _make(1, example_shape, channels=channels, channel_mult=channel_mult,
                 num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                 dropout=dropout, num_head_channels=num_head_channels, num_groups=num_groups,
                 num_classes=num_classes, context_dim=context_dim, time_scale=time_scale,
                 zero_init=zero_init, dtype=dtype)


def two_time_unet(example_shape, *, channels: int, channel_mult: Sequence[int],
                  num_res_blocks: int, attention_resolutions: Sequence[int],
                  dropout: float = 0.0, num_head_channels: int = 64, num_groups: int = 32,
                  num_classes: Optional[int] = None, context_dim: Optional[int] = None,
                  time_scale: float = 1000.0, zero_init: bool = True,
                  dtype: str = "float32") -> ConditionalNetwork:
    """Two-time U-Net v_{s,t}: apply(params, s, t, x, y=None, *, dropout_key=None).

    The raw network of a flow map X_{s,t}(x) = x + (t - s) v_{s,t}(x)
    (`lfm_jax.flow_map.FlowMap(network=two_time_unet(...))`). Same arguments as
    `velocity_unet`; the sinusoidal embeddings of s and t are concatenated.
    """
    return _make(2, example_shape, channels=channels, channel_mult=channel_mult,
                 num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions,
                 dropout=dropout, num_head_channels=num_head_channels, num_groups=num_groups,
                 num_classes=num_classes, context_dim=context_dim, time_scale=time_scale,
                 zero_init=zero_init, dtype=dtype)


def _reversal_matrix(channels: int, time_scale: float, max_period: float = 10_000.0):
    """(channels, channels) float64 R with timestep_embedding(scale (1 - s)) =
    timestep_embedding(scale s) @ R for every s: per frequency w, cos(w (1 - s)) =
    cos w cos(w s) + sin w sin(w s) and sin(w (1 - s)) = sin w cos(w s) - cos w sin(w s),
    a fixed linear map of the embedding (an odd dim's appended zero stays zero)."""
    half = channels // 2
    w = time_scale * np.exp(-math.log(max_period) * np.arange(half) / half)
    c, s = np.cos(w), np.sin(w)
    r = np.zeros((channels, channels))
    k = np.arange(half)
    r[k, k], r[half + k, k] = c, s                    # -> cos(w (1 - s))
    r[k, half + k], r[half + k, half + k] = s, -c     # -> sin(w (1 - s))
    return r


def two_time_params_from_velocity(velocity_params, *, channels: int, time_scale: float,
                                  reverse: bool = False, fold_label: Optional[int] = None):
    """Params of `two_time_unet` whose network is a velocity's, exactly:
    net(s, t, x[, y]) = v(s, x[, y]), or with reverse -v(1 - s, x[, y]), so that the
    flow map X_{s,t}(x) = x + (t - s) net(s, t, x) starts as one Euler step of v (of
    the time-reversed field -v(1 - t, x) with reverse, the form LFM blocks are
    distilled in: `distill.time_reversed`). A warm start for distilling v.

    velocity_params: params of `velocity_unet` with the same preset, channels and
      time_scale as the two-time network's (the same module tree but the first time
      Dense, which gets zero rows for t; for reverse its rows for s take the fixed
      rotation that maps the embedding of s to that of 1 - s, and the output conv is
      negated).
    fold_label: for an UNCONDITIONAL two-time network from a class-conditional
      velocity: label fold_label's embedding row (e.g. the null label, for its null
      field) is added to the time MLP's output bias, where the network adds it, and
      the label embedding is dropped. None: keep the tree's label embedding (a
      class-conditional two-time network of the same num_classes) or none.
    Context-conditional velocities (an extra conditioning Dense) are not supported.
    """
    net_in = velocity_params["params"]
    dense = sorted(k for k in net_in if k.startswith("Dense_"))
    if dense != ["Dense_0", "Dense_1"]:
        raise ValueError(f"expected a velocity U-Net's time MLP Dense_0, Dense_1 at the top "
                         f"(class-conditional or unconditional), got {dense}; context-"
                         f"conditional U-Nets are not supported")
    if net_in["Dense_0"]["kernel"].shape[0] != channels:
        raise ValueError(f"the velocity's time embedding has "
                         f"{net_in['Dense_0']['kernel'].shape[0]} features, not "
                         f"channels={channels}: another preset or width")
    if fold_label is not None:
        if "Embed_0" not in net_in:
            raise ValueError("fold_label needs a class-conditional velocity (no label "
                             "embedding in these params)")
        rows = net_in["Embed_0"]["embedding"].shape[0]
        if not 0 <= int(fold_label) < rows:
            raise ValueError(f"fold_label {fold_label} is not a label of the embedding's "
                             f"{rows} rows")
    p = jax.tree.map(lambda a: a, flax.core.unfreeze(velocity_params))  # new containers
    net = p["params"]
    dtype = net["Dense_0"]["kernel"].dtype
    kernel = np.asarray(net["Dense_0"]["kernel"], np.float64)
    if reverse:
        kernel = _reversal_matrix(channels, time_scale) @ kernel
    net["Dense_0"]["kernel"] = jnp.asarray(
        np.concatenate([kernel, np.zeros_like(kernel)], axis=0), dtype)
    if fold_label is not None:
        table = net.pop("Embed_0")["embedding"]
        net["Dense_1"]["bias"] = net["Dense_1"]["bias"] + table[int(fold_label)]
    if reverse:
        last = max((k for k in net if k.startswith("Conv_")),
                   key=lambda k: int(k.split("_")[1]))
        net[last] = jax.tree.map(jnp.negative, net[last])
    return p
