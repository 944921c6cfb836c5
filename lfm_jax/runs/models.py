"""The network of config.model, chosen on the host: `network(config, example_shape,
num_times)` gives the velocity field (num_times=1) or the flow-map network v_{s,t}
(num_times=2) of config.model.kind:

- "mlp": `networks.velocity_mlp` / `two_time_mlp` (config.model.hidden, ...,
  compute_dtype), or `conditional.conditional_mlp` when config.model.num_classes > 0
  (hidden, activation, num_frequencies, max_frequency only: time_embedding,
  softplus_beta, weight_init and compute_dtype off the values it uses are a
  ValueError, `check_supported`, not silently ignored);
- "unet": `unet.velocity_unet` / `two_time_unet` of the preset config.model.unet_preset
  (digits8 / mnist / cifar10) with example_shape from the data, the overrides
  unet_channels (0: the preset's), unet_time_scale, num_classes (0: unconditional; k:
  labels 0..k-1 and the null class k) and compute_dtype ("float32" | "bfloat16";
  parameters stay float32).

Dropout: the U-Net's rate is the preset's (0.1 for mnist / cifar10, 0 for digits8) or
config.model.unet_dropout >= 0; `uses_dropout` tells the FM and LFM losses to pass a
dropout key per example in training (`flow_matching.make_loss(dropout=True)`);
evaluation, sampling and likelihoods call the network without one (deterministic).
The flow-map objectives train without dropout.
"""

from __future__ import annotations

from lfm_jax import conditional, networks, unet

KINDS = ("mlp", "unet")


def _num_classes(m):
    k = int(m.get("num_classes", 0))
    return k if k > 0 else None


def unet_kwargs(config, example_shape) -> dict:
    """Keyword arguments of `unet.velocity_unet` / `two_time_unet` for config.model."""
    m = config.model
    over = {"example_shape": tuple(example_shape), "num_classes": _num_classes(m),
            "dtype": m.get("compute_dtype", "float32"),
            "time_scale": float(m.get("unet_time_scale", 1000.0))}
    if int(m.get("unet_channels", 0)) > 0:
        over["channels"] = int(m.unet_channels)
    if float(m.get("unet_dropout", -1.0)) >= 0:
        over["dropout"] = float(m.unet_dropout)
    return unet.preset(m.get("unet_preset", "digits8"), **over)


def uses_dropout(config) -> bool:
    """Whether config.model's network has dropout in training (a U-Net with rate > 0)."""
    if config.model.get("kind", "mlp") != "unet":
        return False
    return unet_kwargs(config, ()).get("dropout", 0.0) > 0  # the rate the network gets


def mlp_settings(config) -> dict:
    """The plain MLP's settings beyond its shape, read from config.model with their
    defaults: time_embedding ("fourier"), softplus_beta (1.0), weight_init ("lecun")
    and compute_dtype ("float32"); keyword arguments of `networks.velocity_mlp` /
    `two_time_mlp` and `flow_map.make_flow_map` (which refuses values the
    class-conditional MLP cannot honour). The one reading of these four settings for
    velocity networks, flow-map students and distilled LFM students alike."""
    m = config.model
    return dict(time_embedding=m.get("time_embedding", "fourier"),
                softplus_beta=m.get("softplus_beta", 1.0),
                weight_init=m.get("weight_init", "lecun"),
                compute_dtype=m.get("compute_dtype", "float32"))


def check_supported(config) -> None:
    """Raise ValueError naming the config.model settings that the network of
    config.model would ignore: the class-conditional MLP (kind "mlp" with
    num_classes > 0, `conditional.conditional_mlp`) has no time_embedding,
    softplus_beta, weight_init or compute_dtype, so values other than the ones it
    uses (`conditional.MLP_FIXED_SETTINGS`; softplus_beta only with activation
    "softplus") are refused by `conditional.check_mlp_settings`, the check of
    `flow_map.make_flow_map(num_classes=...)`. Reads the config only (microseconds):
    `network` and `validation.validate_config` call it before any work (config: an
    ml_collections.ConfigDict or nested dicts)."""
    m = config["model"]
    k = _num_classes(m)
    if m.get("kind", "mlp") != "mlp" or k is None:
        return
    conditional.check_mlp_settings(
        {name: m.get(name, value) for name, value in conditional.MLP_FIXED_SETTINGS.items()},
        activation=m.get("activation", "silu"), prefix="config.model.",
        what=f"config.model.kind='mlp' with config.model.num_classes={k}")


def network(config, example_shape, num_times: int = 1):
    """The config.model network for examples of example_shape (see the module doc);
    ValueError for settings it would ignore (`check_supported`)."""
    m = config.model
    kind = m.get("kind", "mlp")
    if kind not in KINDS:
        raise ValueError(f"unknown config.model.kind {kind!r}; known: {list(KINDS)}")
    check_supported(config)
    if kind == "unet":
        make = unet.velocity_unet if num_times == 1 else unet.two_time_unet
        return make(**unet_kwargs(config, example_shape))
    k = _num_classes(m)
    if k is not None:
        return conditional.conditional_mlp(
            example_shape, num_classes=k, num_times=num_times, hidden=tuple(m.hidden),
            activation=m.activation, num_frequencies=m.num_frequencies,
            max_frequency=m.max_frequency)
    make = networks.velocity_mlp if num_times == 1 else networks.two_time_mlp
    return make(example_shape, hidden=tuple(m.hidden), activation=m.activation,
                num_frequencies=m.num_frequencies, max_frequency=m.max_frequency,
                **mlp_settings(config))
