"""The pure model contract every face-recognition model follows.

``apply(params, images, perturbations=None) -> (embeddings [B, D],
activations {tap: [B, H, W, C]})``: a pure function of a params pytree, so
it runs under plain ``jax.jit`` / ``jax.vmap`` / ``jax.vjp``.
``perturbations`` has the structure of ``activations`` (any subset of taps)
and is added at each tap, so one ``jax.vjp`` with respect to zero
perturbations yields the gradient with respect to every layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from leam_jax.adapters import from_nnx
from leam_jax.models.params import params_from_flat

ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class FaceModel:
    """A model ready for the core: pure ``apply`` plus its params and facts.

    Attributes:
      name: registry name.
      apply: ``apply(params, images [B, S, S, 3] RGB 0..255, perturbations=None)``.
      params: the params pytree ``apply`` takes (an ``nnx.State``).
      taps: ordered tap names, input side first.
      input_size: S, the side of the square RGB input.
      embedding_dim: D.
    """

    name: str
    apply: ApplyFn
    params: Any
    taps: tuple[str, ...]
    input_size: int
    embedding_dim: int

    def embed(self, images: jax.Array) -> jax.Array:
        return self.apply(self.params, images)[0]


def from_flat(ctor: Callable[[], nnx.Module], flat: Mapping[str, np.ndarray], source: str) -> tuple[ApplyFn, nnx.State]:
    """Build ``(apply, params)`` with weights merged strictly into the target."""
    apply, _ = from_nnx(nnx.eval_shape(ctor))
    return apply, params_from_flat(ctor, flat, source)


def check_images(images: jax.Array, size: int, model: str) -> None:
    """A clear error unless ``images`` is [B, size, size, 3]."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
        raise ValueError(f"{model} expects images [B, {size}, {size}, 3], got {images.shape}")
