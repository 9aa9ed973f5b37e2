"""Bring models from other JAX libraries to the core's ``apply_fn`` contract.

``apply_fn(params, images, perturbations=None) -> (embeddings, {tap: activation})``

* Flax Linen: the module marks each tap with ``x = self.perturb(name, x)`` and
  ``self.sow("intermediates", name, x)`` (Linen's own mechanism for
  gradients at intermediates), at its top level.
* Haiku: the transformed function takes ``(images, perturbations)`` and
  returns ``(embeddings, activations)``; :func:`haiku_tap` helps write it.
* Flax NNX: see ``leam_jax.models.contract.pure``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp


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


def haiku_tap(name: str, x: jax.Array, perturbations: dict | None, acts: dict) -> jax.Array:
    """Inside a Haiku (or any plain JAX) forward: add the tap's perturbation and record it."""
    if perturbations is not None and name in perturbations:
        x = x + perturbations[name]
    acts[name] = x
    return x
