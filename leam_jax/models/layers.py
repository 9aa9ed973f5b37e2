"""Small layers several converted models share."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class Affine(nnx.Module):
    """Per-channel affine (a folded, eval-mode batch norm): y = gamma * x + beta."""

    def __init__(self, channels: int):
        self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...] + self.beta[...]


def prelu(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """Per-channel PReLU (alpha over the last axis): ``x`` where ``x >= 0``, else ``alpha * x``.

    Equal, value for value, to TF's ``Prelu`` and to ``max(0, x) + alpha * min(0, x)``.
    """
    return jnp.where(x >= 0, x, alpha * x)
