"""Device mesh and sharding helpers for data parallelism.

One mesh axis, "data", spans every device of every process. Parameters and
optimizer state are replicated (PartitionSpec()); batches are sharded along their
leading axis (PartitionSpec("data")). The same code runs on 1 CPU, N simulated CPU
devices (XLA_FLAGS=--xla_force_host_platform_device_count=N), one or several GPUs,
and several hosts after `jax.distributed.initialize()`: jit inserts the
cross-device gradient reduction, no pmap and no replicate/unreplicate.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
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
    """Sharding that places a full copy on every device of the mesh: P()."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh) -> NamedSharding:
    """Sharding that splits the leading (batch) axis over the "data" axis: P("data")."""
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


@functools.lru_cache(maxsize=128)
def _sharded_callable(fn: Callable, mesh):
    """jit(shard_map): each device runs fn(params, key, x_rows, index_rows) on its own
    rows. Cached on (fn, mesh), so jit compiles it once per chunk shape and every later
    call (new params, new data, another data set of any size) reuses the executable."""
    spec = P(DATA_AXIS)
    # check_vma=False: diffrax while-loops carry values that do not track varying axes.
    return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(), spec, spec),
                                 out_specs=spec, check_vma=False))


def pad_rows(tree, multiple: int):
    """Pad the leading axis of every leaf to a multiple of `multiple` by repeating the
    last row: the one padding rule of every chunked map here. Works on numpy arrays
    (kept on the host) and on jax arrays or tracers. Returns (padded tree, n)."""
    n = jax.tree_util.tree_leaves(tree)[0].shape[0]
    pad = -n % int(multiple)

    def grow(a):
        if not pad:
            return a
        xp = np if isinstance(a, np.ndarray) else jnp
        return xp.concatenate([a, xp.repeat(a[-1:], pad, axis=0)], axis=0)

    return jax.tree_util.tree_map(grow, tree), n


def map_in_chunks(fn: Callable, xs, chunk_size: Optional[int] = None):
    """fn over the rows of xs, `chunk_size` rows at a time, inside one trace.

    xs is a pytree of arrays with a common leading axis n; fn maps a chunk (leading
    axis c) to a pytree with leading axis c. The rows are padded (`pad_rows`) to
    ceil(n / c) chunks, run one after another by `jax.lax.map` (memory of one chunk),
    and the padding is cut off: the result has leading axis n. chunk_size None (or
    >= n) calls fn once on all rows. Callers that need each row's global index (e.g.
    to key its randomness) pass `jnp.arange(n)` inside xs.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if chunk_size is None or int(chunk_size) >= n:
        return fn(xs)
    chunk = max(1, int(chunk_size))
    padded, _ = pad_rows(xs, chunk)
    chunks = jax.tree_util.tree_map(lambda a: a.reshape((-1, chunk) + a.shape[1:]), padded)
    out = jax.lax.map(fn, chunks)
    return jax.tree_util.tree_map(lambda a: a.reshape((-1,) + a.shape[2:])[:n], out)


def sharded_map(fn: Callable, params, x, *, mesh=None, chunk_size: Optional[int] = None,
                key=None):
    """fn(params, key, x_rows, global_index_rows) over the rows of x, split over devices.

    Per-device work through `jax.shard_map`: each device runs its own adaptive ODE
    loops instead of waiting on a global loop predicate. Rows are padded (`pad_rows`)
    and the padding is dropped. The rows go through in calls of (devices x chunk) rows
    (each device `chunk` rows), dispatched asynchronously from a host loop, so memory
    is bounded by one call and the compiled function depends only on the chunk shape,
    not on len(x). `params` and `key` are explicit replicated arguments and the jitted
    function is cached on (fn, mesh), so a stable fn compiles once. fn receives every
    row's GLOBAL index (int32; padding rows repeat the last index), so per-example
    randomness (Hutchinson probes) does not depend on the chunking or on the device
    count.

    Args:
      fn: batched function (params, key, x (c, ...), idx (c,)) -> pytree, leading axis c.
        Must be a stable object (e.g. from an lru_cache) for the compilation cache.
      params: pytree (replicated on every device).
      x: (n, ...) host array (the same on every process).
      chunk_size: rows per device per call (default: all rows in one call).
      key: PRNG key passed to fn (default PRNGKey(0)).
    Returns:
      pytree of numpy arrays with leading axis n.
    """
    mesh = make_mesh() if mesh is None else mesh
    n_dev = mesh.shape[DATA_AXIS]
    x = np.asarray(x)
    per = -(-x.shape[0] // n_dev)
    chunk = per if chunk_size is None else max(1, min(int(chunk_size), per))
    rows = chunk * n_dev
    (x, idx), n = pad_rows((x, np.arange(x.shape[0], dtype=np.int32)), rows)
    sharding = batch_sharded(mesh)
    key = jax.random.PRNGKey(0) if key is None else key
    rep = replicate({"params": params, "key": key}, mesh)
    mapped = _sharded_callable(fn, mesh)
    to_host = functools.partial(jax.tree_util.tree_map, _gather)
    outs, pending = [], None
    for start in range(0, len(x), rows):
        xs, ids = x[start:start + rows], idx[start:start + rows]
        xs = jax.make_array_from_callback(xs.shape, sharding, lambda i, a=xs: a[i])
        ids = jax.make_array_from_callback(ids.shape, sharding, lambda i, a=ids: a[i])
        out = mapped(rep["params"], rep["key"], xs, ids)
        if pending is not None:  # copy the previous call's result while this one runs
            outs.append(to_host(pending))
        pending = out
    outs.append(to_host(pending))
    return jax.tree_util.tree_map(lambda *o: np.concatenate(o, axis=0)[:n], *outs)


def _gather(x):
    """Whole array on every host (all-gather across processes when needed)."""
    if x.is_fully_addressable:
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
