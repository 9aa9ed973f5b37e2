"""Converted weights: the pinned manifest, registry packages, conversion, checkpoints, and loading.

``load(name)`` gives a recognizer with its converted weights, ``load_apply(name)``
any model's ``(apply, params)``; both verify the checkpoint against the pinned
digest and convert registry weights on first use.
"""

from leam_jax.weights.loading import load, load_apply

__all__ = ["load", "load_apply"]
