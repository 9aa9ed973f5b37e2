"""Fixed-shape batching: every call of a compiled function sees the same batch shape.

The one padding helper of the library: the core's runner, the study's
per-shard work and the face pipeline all pad the last batch with zero rows
and cut the results back, so nothing recompiles for a ragged batch
(``run_bucketed`` pads host rows to a power of two, so a batch of one costs one row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp


def chunks(n: int, batch_size: int) -> Iterator[slice]:
    """Consecutive slices of at most ``batch_size`` rows covering ``range(n)``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def pad_rows(x, size: int) -> jax.Array:
    """``x`` [n, ...] with zero rows appended up to ``size`` rows. -> [size, ...]."""
    x = jnp.asarray(x)
    n = x.shape[0]
    if n > size:
        raise ValueError(f"batch of {n} rows exceeds the batch size {size}")
    return x if n == size else jnp.pad(x, [(0, size - n)] + [(0, 0)] * (x.ndim - 1))


def batched(fn: Callable, x, batch_size: int):
    """``fn`` over [N, ...] in batches of exactly ``batch_size`` (the last zero-padded and cut).

    ``fn`` may return any pytree of [batch, ...] arrays; the result has the
    same structure with host (numpy) arrays of N rows. N must be at least 1.
    """
    n_total = x.shape[0]
    if n_total == 0:
        raise ValueError("batched needs at least one row")
    parts = []
    for s in chunks(n_total, batch_size):
        out = fn(pad_rows(x[s], batch_size))
        parts.append(jax.tree_util.tree_map(lambda a, k=s.stop - s.start: a[:k], out))
    return jax.device_get(jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs), *parts))


def bucket_size(n: int, batch_size: int) -> int:
    """The smallest power of two >= ``n``, at most ``batch_size``: the batch shape ``n`` rows are padded to."""
    return min(batch_size, 1 << max(n - 1, 0).bit_length())


def run_bucketed(fn: Callable, x, batch_size: int):
    """``fn`` over [N, ...] rows in chunks of ``batch_size``, the last padded with zero rows to
    :func:`bucket_size`: a few compiled shapes serve any N, and a batch of one costs one row.

    Returns ``fn``'s pytree of [N, ...] host (numpy) arrays (N = 0: None)."""
    parts = []
    for s in chunks(len(x), batch_size):
        n, size = s.stop - s.start, bucket_size(s.stop - s.start, batch_size)
        # A full bucket goes in as it is and comes back whole: no eager pad, slice or copy (per-photo calls).
        out = fn(x[s] if n == size else pad_rows(x[s], size))
        parts.append(out if n == size else jax.tree_util.tree_map(lambda a, n=n: a[:n], out))
    if len(parts) > 1:
        parts = [jax.tree_util.tree_map(lambda *a: jnp.concatenate(a), *parts)]
    return jax.device_get(parts[0]) if parts else None


def batch_mesh(devices=None) -> jax.sharding.Mesh:
    """A 1-D mesh named ``batch`` over the given (default: all local) devices."""
    devices = list(jax.local_devices() if devices is None else devices)
    return jax.sharding.Mesh(devices, ("batch",))


class Placement:
    """Fixed-shape batches sharded along ``batch`` over a mesh, params replicated.

    ``put`` pads a ragged batch with zero rows to ``batch_size`` and places it;
    arrays already padded and placed pass through without a copy, as do params
    already replicated (``jax.device_put`` onto the same sharding is a no-op), so
    several compiled functions of one model share one copy of its params.
    """

    def __init__(self, batch_size: int, mesh: jax.sharding.Mesh | None = None):
        self.mesh = mesh or batch_mesh()
        n_dev = self.mesh.devices.size
        if batch_size < 1 or batch_size % n_dev:
            raise ValueError(f"batch_size {batch_size} must be a positive multiple of the {n_dev} devices")
        self.batch_size = batch_size
        self.sharded = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec("batch"))
        self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())

    def put(self, x) -> jax.Array | None:
        """[n <= batch_size, ...] -> [batch_size, ...] zero-padded and sharded (None stays None)."""
        return None if x is None else jax.device_put(pad_rows(x, self.batch_size), self.sharded)

    def replicate(self, tree):
        return jax.device_put(tree, self.replicated)

    def valid(self, n: int) -> jax.Array:
        """[batch_size] True for the first ``n`` (real) rows."""
        return jax.device_put(jnp.arange(self.batch_size) < n, self.sharded)
