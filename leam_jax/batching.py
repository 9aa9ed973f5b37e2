"""Fixed-shape batching: every call of a jitted function sees the same batch shape."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np


def batched(fn: Callable, x, batch_size: int):
    """``fn`` over [N, ...] in batches of exactly ``batch_size`` (the last zero-padded and cut).

    ``fn`` may return any pytree of [batch, ...] arrays; the result has the
    same structure with numpy arrays of N rows. N must be at least 1.
    """
    n_total = x.shape[0]
    if n_total == 0:
        raise ValueError("batched needs at least one row")
    parts = []
    for start in range(0, n_total, batch_size):
        chunk = x[start : start + batch_size]
        n = chunk.shape[0]
        if n < batch_size:
            chunk = jnp.concatenate([jnp.asarray(chunk), jnp.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        parts.append(jax.tree_util.tree_map(lambda a, n=n: np.asarray(a[:n]), fn(jnp.asarray(chunk))))
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs), *parts)
