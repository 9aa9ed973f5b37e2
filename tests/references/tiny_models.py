"""Tiny CNNs in Flax NNX, Flax Linen and Haiku, each exposing the core's apply contract.

16x16 RGB in, 5-d embedding out, taps c1 (16x16x4), c2 (8x8x6), c3 (4x4x8),
and a 'dead' tap in NNX whose activation does not reach the embedding.
"""

import haiku as hk
import jax
import jax.numpy as jnp
from flax import linen as nn
from flax import nnx

from leam_jax.adapters import TapRecorder, from_haiku, from_linen, from_nnx

SIZE, DIM = 16, 5


class TinyNNX(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.c1 = nnx.Conv(3, 4, (3, 3), rngs=rngs)
        self.c2 = nnx.Conv(4, 6, (3, 3), strides=2, rngs=rngs)
        self.c3 = nnx.Conv(6, 8, (3, 3), strides=2, rngs=rngs)
        self.fc = nnx.Linear(8, DIM, rngs=rngs)

    def __call__(self, x, perturbations=None):
        tap = TapRecorder("TinyNNX", ("c1", "dead", "c2", "c3"), perturbations)
        x = x / 255.0
        h = tap("c1", jax.nn.relu(self.c1(x)))
        tap("dead", h[..., :2] * 0.0 + 1.0)  # constant: its gradient is exactly zero
        h = tap("c2", jax.nn.relu(self.c2(h)))
        h = tap("c3", jax.nn.relu(self.c3(h)))
        return self.fc(jnp.mean(h, axis=(1, 2))), tap.acts


def nnx_model(seed=0):
    return from_nnx(TinyNNX(nnx.Rngs(seed)))


class TinyLinen(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x / 255.0
        for name, feats, stride in (("c1", 4, 1), ("c2", 6, 2), ("c3", 8, 2)):
            x = jax.nn.relu(nn.Conv(feats, (3, 3), strides=stride, name=name + "_conv")(x))
            x = self.perturb(name, x)
            self.sow("intermediates", name, x)
        return nn.Dense(DIM)(jnp.mean(x, axis=(1, 2)))


def linen_model(seed=0):
    module = TinyLinen()
    params = module.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)))["params"]
    return from_linen(module), params


def _haiku_forward(images, perturbations=None):
    tap = TapRecorder("TinyHaiku", ("c1", "c2", "c3"), perturbations)
    x = images / 255.0
    for name, feats, stride in (("c1", 4, 1), ("c2", 6, 2), ("c3", 8, 2)):
        x = jax.nn.relu(hk.Conv2D(feats, 3, stride=stride, name=name + "_conv")(x))
        x = tap(name, x)
    return hk.Linear(DIM)(jnp.mean(x, axis=(1, 2))), tap.acts


_HAIKU = hk.transform(_haiku_forward)


def haiku_model(seed=0):
    params = _HAIKU.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3)))
    return from_haiku(_HAIKU), params


FRAMEWORKS = {"nnx": nnx_model, "linen": linen_model, "haiku": haiku_model}
