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

from leam_jax.weights import checkpoint

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


def pure(module: nnx.Module) -> tuple[ApplyFn, nnx.State]:
    """Split an NNX module once into ``(apply, params)``."""
    graphdef, params = nnx.split(module, nnx.Param)

    def apply(params, images, perturbations=None):
        return nnx.merge(graphdef, params)(images, perturbations)

    return apply, params


def abstract_flat(ctor: Callable[[], nnx.Module]) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat shapes/dtypes of a module's params, without allocating them."""
    abstract = nnx.eval_shape(ctor)
    return checkpoint.flatten(nnx.state(abstract, nnx.Param).to_pure_dict())


def params_from_flat(ctor: Callable[[], nnx.Module], flat: Mapping[str, np.ndarray], source: str) -> nnx.State:
    """The module's params with ``flat`` weights merged strictly (missing, extra or mis-shaped keys
    are errors naming the key), on an abstract module: its random initialisers never run (eagerly
    they cost seconds per model)."""
    merged = checkpoint.strict_merge(abstract_flat(ctor), flat, source)
    params = nnx.state(nnx.eval_shape(ctor), nnx.Param)
    pure_dict = params.to_pure_dict()
    nested = checkpoint.unflatten(merged)

    def fill(target, src):
        for k in list(target.keys()):
            sk = str(k)
            if isinstance(target[k], Mapping):
                fill(target[k], src[sk])
            else:
                target[k] = jax.numpy.asarray(src[sk])

    fill(pure_dict, nested)
    nnx.replace_by_pure_dict(params, pure_dict)
    return params


def from_flat(ctor: Callable[[], nnx.Module], flat: Mapping[str, np.ndarray], source: str) -> tuple[ApplyFn, nnx.State]:
    """Build ``(apply, params)`` with weights merged strictly into the target."""
    apply, _ = pure(nnx.eval_shape(ctor))
    return apply, params_from_flat(ctor, flat, source)


def restore_converted(name: str, *, convert: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """(flat params, checkpoint path) of a converted model: converted on first use, digest-checked."""
    from converters import ensure_converted, sources  # I/O edge: converters live outside the package

    path = ensure_converted(name, quiet=True) if convert else sources.checkpoint_dir() / name
    digest = sources.load_manifest().get(name, {}).get("converted_sha256")
    return checkpoint.restore(path, expected_digest=digest), str(path)


def load_converted(name: str, ctor: Callable[[], nnx.Module], *, convert: bool = True) -> tuple[ApplyFn, nnx.State]:
    """``(apply, params)`` of a converted model: converted on first use, digest-checked, strictly merged."""
    flat, path = restore_converted(name, convert=convert)
    return from_flat(ctor, flat, path)


class TapRecorder:
    """Inside a model's ``__call__``: adds each tap's perturbation and records its activation.

    ``x = tap("name", x)`` at every tap; ``tap.acts`` then holds the taps in
    forward order. Unknown perturbation names are an error, not ignored.
    """

    def __init__(self, model: str, taps: tuple[str, ...], perturbations: dict | None):
        unknown = set(perturbations or {}) - set(taps)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; {model} taps are {taps}")
        self.perturbations = perturbations or {}
        self.acts: dict[str, jax.Array] = {}

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        if name in self.perturbations:
            x = x + self.perturbations[name]
        self.acts[name] = x
        return x


def check_images(images: jax.Array, size: int, model: str) -> None:
    """A clear error unless ``images`` is [B, size, size, 3]."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (size, size, 3):
        raise ValueError(f"{model} expects images [B, {size}, {size}, 3], got {images.shape}")
