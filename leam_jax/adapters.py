"""Bring models from any JAX library to the core's ``apply_fn`` contract.

``apply_fn(params, images, perturbations=None) -> (embeddings [B, D], {tap: activation})``

* Flax NNX: mark each tap with a :class:`TapRecorder` in ``__call__(x, perturbations)``
  and return ``(embeddings, tap.acts)``; :func:`from_nnx` splits the module once
  into ``(apply_fn, params)``.
* Flax Linen: the module marks each tap with ``x = self.perturb(name, x)`` and
  ``self.sow("intermediates", name, x)`` (Linen's own mechanism for gradients at
  intermediates), at its top level; :func:`from_linen`.
* Haiku (or plain JAX): the transformed function takes ``(images, perturbations)``,
  uses a :class:`TapRecorder` and returns ``(embeddings, tap.acts)``; :func:`from_haiku`.

Pure JAX: a framework is imported only by its own adapter, when called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp


class TapRecorder:
    """Inside a forward pass: adds each tap's perturbation and records its activation.

    ``x = tap("name", x)`` at every tap; ``tap.acts`` then holds the taps in
    forward order. A perturbation for a name that is not a tap is an error, not
    silently ignored.
    """

    def __init__(self, model: str, taps: Sequence[str], perturbations: dict | None):
        unknown = set(perturbations or {}) - set(taps)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; {model} taps are {tuple(taps)}")
        self.perturbations = perturbations or {}
        self.acts: dict[str, jax.Array] = {}

    def __call__(self, name: str, x: jax.Array) -> jax.Array:
        if name in self.perturbations:
            x = x + self.perturbations[name]
        self.acts[name] = x
        return x


def from_nnx(module: Any) -> tuple[Callable, Any]:
    """``(apply_fn, params)`` of a Flax NNX module whose ``__call__(images, perturbations)`` returns
    ``(embeddings, activations)``: split once, merged inside ``apply_fn`` (a pure function of the
    params, so it runs under plain ``jax.jit`` / ``jax.vmap`` / ``jax.vjp``). Keep the returned
    ``apply_fn`` and pass it every time: it is a static argument of the compiled core, and a
    fresh function (say a new lambda per call) compiles anew."""
    from flax import nnx

    graphdef, params = nnx.split(module, nnx.Param)

    def apply(params, images, perturbations=None):
        return nnx.merge(graphdef, params)(images, perturbations)

    return apply, params


def from_linen(module: Any, *, method: str | None = None) -> Callable:
    """``apply_fn`` for a Linen module that uses ``perturb`` + ``sow('intermediates')``.

    ``params`` is the module's ``'params'`` collection. Linen requires every
    perturbation variable once the collection is present, so taps the caller
    leaves out are filled with zeros.
    """

    def run(params, images, perturbations):
        variables = {"params": params}
        if perturbations is not None:
            variables["perturbations"] = perturbations
        kwargs = {"method": method} if method else {}
        emb, state = module.apply(variables, images, mutable=["intermediates"], **kwargs)
        acts = {name: vals[0] for name, vals in state["intermediates"].items()}
        return emb, acts

    def apply(params, images, perturbations=None):
        if perturbations is not None:
            _, shapes = jax.eval_shape(lambda p, x: run(p, x, None), params, images)
            perturbations = {t: perturbations.get(t, jnp.zeros(s.shape, s.dtype)) for t, s in shapes.items()}
        return run(params, images, perturbations)

    return apply


def from_haiku(transformed: Any) -> Callable:
    """``apply_fn`` for ``hk.transform(f)`` with ``f(images, perturbations) -> (emb, acts)``."""

    def apply(params, images, perturbations=None):
        return transformed.apply(params, None, images, perturbations)

    return apply
