"""A random initializer that compiles nothing eagerly: weights drawn by numpy, seeded from the NNX key.

Registry architectures are built with random weights only to be overwritten
by converted ones or to test the plumbing (``models.random_init``). With
``jax.random`` every new parameter shape costs an XLA compile on first use
(about 0.4 s of CPU each; 13 s for InceptionResnetV1's ~40 shapes); drawing on
the host costs milliseconds. Under tracing (``nnx.jit``, ``nnx.eval_shape``)
the same numpy draw runs as a host callback, so the weights do not depend on
how the module was built.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _draw(key_data: np.ndarray, shape: tuple[int, ...], dtype) -> np.ndarray:
    seed = [int(v) for v in np.asarray(key_data).ravel()]
    fan_in = max(1, int(np.prod(shape[:-1])))
    return (np.random.default_rng(seed).standard_normal(shape) / np.sqrt(fan_in)).astype(dtype)


def normal_fan_in(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """N(0, 1 / fan_in) for a kernel ``[..., in, out]`` (conv HWIO, grouped convs, Linear [in, out])."""
    shape, dtype = tuple(int(d) for d in shape), jnp.dtype(dtype)
    data = jax.random.key_data(key)
    if isinstance(data, jax.core.Tracer):
        return jax.pure_callback(lambda d: _draw(d, shape, dtype), jax.ShapeDtypeStruct(shape, dtype), data,
                                 vmap_method="sequential")
    return jnp.asarray(_draw(data, shape, dtype))
