"""Device mesh and sharding helpers for data parallelism.

One mesh axis, "data", spans every device of every process. Parameters and
optimizer state are replicated (PartitionSpec()); batches are sharded along their
leading axis (PartitionSpec("data")). The same code runs on 1 CPU, N simulated CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N), one or several GPUs,
and several hosts after `jax.distributed.initialize()`: jit inserts the
cross-device gradient reduction, no pmap and no replicate/unreplicate.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D mesh over the first `num_devices` devices (default: all), axis "data"."""
    devices = jax.devices()
    n = len(devices) if num_devices is None else int(num_devices)
    if not 1 <= n <= len(devices):
        raise ValueError(f"asked for {n} devices, {len(devices)} available")
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                         devices=devices[:n])


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(batch_size: int, mesh) -> None:
    """The global batch must split evenly over the mesh's data axis."""
    n = mesh.shape[DATA_AXIS]
    if batch_size % n:
        raise ValueError(f"batch size {batch_size} is not divisible by the {n} devices "
                         f"of the data axis; use a multiple of {n}")


def replicate(tree, mesh):
    """Place a pytree of host arrays on every device of the mesh (same value)."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.device_put(x, sharding), tree)


def shard_batch(local_batch, mesh):
    """Global array from this process's part of a batch, sharded on the leading axis.

    Each process passes its own rows (n_local, ...); the global batch has
    n_local * process_count rows. On one process this is a plain sharded put.
    """
    sharding = batch_sharded(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
        local_batch)
