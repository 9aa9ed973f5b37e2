"""Shared layers against XLA's own ops as oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax.models.layers import max_pool


def _reference_pool(x, k, s):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")


@pytest.mark.parametrize("shape,k,s", [((2, 9, 11, 5), 3, 2), ((2, 72, 72, 4), 3, 2), ((3, 8, 8, 3), 2, 2),
                                        ((2, 10, 7, 3), 3, 1), ((2, 13, 13, 2), 3, 3), ((1, 6, 6, 1), 1, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_value_and_gradient_equal_reduce_window(shape, k, s, ties):
    """Forward equals reduce_window max; the hand-written backward equals select-and-scatter's, also
    with tied maxima (ReLU zeros, integers), where the first maximum in window order takes the gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:
        x = np.maximum(np.round(x), 0)
    x = jnp.asarray(x)
    want, pull_want = jax.vjp(lambda v: _reference_pool(v, k, s), x)
    got, pull_got = jax.vjp(lambda v: max_pool(v, k, s), x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    # Overlapping windows add in another order: equal to float rounding.
    np.testing.assert_allclose(np.asarray(pull_got(g)[0]), np.asarray(pull_want(g)[0]), rtol=0, atol=1e-5)


def test_max_pool_composes_with_jit_vmap_and_grad():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 9, 9, 2)), jnp.float32)

    def loss(fn):
        return jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(jnp.sin(fn(v, 3, 2))))))(x)

    np.testing.assert_allclose(np.asarray(loss(max_pool)), np.asarray(loss(_reference_pool)), rtol=0, atol=1e-5)
