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
    """Place a pytree on every device of the mesh (the same value everywhere).

    Every process must pass the same values (as after seeding identically); this
    works across hosts, since each process only fills its own devices.
    """
    sharding = replicated(mesh)

    def put(x):
        if isinstance(x, jax.Array) and x.is_fully_addressable and x.sharding == sharding:
            return x
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree_util.tree_map(put, tree)


def shard_batch(local_batch, mesh, batch_axis: int = 0):
    """Global array from this process's part of a batch, sharded on `batch_axis`.

    Each process passes its own rows (n_local on `batch_axis`); the global batch has
    n_local * process_count rows there. Use batch_axis=1 for stacks of batches
    (steps_per_call, batch, ...) fed to a fused step.
    """
    spec = P(*([None] * batch_axis), DATA_AXIS)
    sharding = NamedSharding(mesh, spec)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
        local_batch)


def to_host(tree):
    """Numpy copy of a pytree of replicated (or single-device) arrays.

    Reads this process's first local shard, so it also works on several hosts,
    where a global array is not fully addressable from one process.
    """
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(x.addressable_data(0))
        return np.asarray(jax.device_get(x))

    return jax.tree_util.tree_map(get, tree)


def map_batch_sharded(fn, x, mesh, chunk_size: int | None = None):
    """Apply a batched `fn` ((n, ...) -> (n, ...) pytree) to `x` split over devices.

    Per-device work through `jax.shard_map`: each device runs `fn` on its own rows
    (for an adaptive ODE solve, each device takes its own number of steps instead
    of waiting on a global loop predicate). Rows are padded (by repeating the last
    row) to a multiple of the device count times `chunk_size` and the padding is
    dropped from the result. Within a device, rows go through `fn` in chunks of
    `chunk_size` with `lax.map`, which bounds memory. Returns host-side numpy.
    """
    n_dev = mesh.shape[DATA_AXIS]
    x = np.asarray(x)
    n = x.shape[0]
    per = -(-n // n_dev)
    chunk = per if chunk_size is None else max(1, min(int(chunk_size), per))
    per = -(-per // chunk) * chunk
    total = per * n_dev
    if total > n:
        x = np.concatenate([x, np.repeat(x[-1:], total - n, axis=0)])

    def local(xl):
        chunks = xl.reshape(per // chunk, chunk, *xl.shape[1:])
        out = jax.lax.map(fn, chunks)
        return jax.tree_util.tree_map(lambda o: o.reshape(per, *o.shape[2:]), out)

    spec = P(DATA_AXIS)
    # check_vma=False: diffrax while-loops carry values that do not track varying axes.
    mapped = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec,
                                   check_vma=False))
    sharding = NamedSharding(mesh, spec)
    x_global = jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
    out = mapped(x_global)
    return jax.tree_util.tree_map(lambda o: _gather(o)[:n], out)


def _gather(x):
    """Whole array on every host (all-gather across processes when needed)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
