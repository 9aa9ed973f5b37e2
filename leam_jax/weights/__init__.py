"""Converted weights: the pinned manifest, registry packages, conversion, checkpoints, and loading.

``load(name)`` gives a recognizer with its converted weights, ``load_apply(name)``
any model's ``(apply, params)``; both verify the checkpoint against the pinned
digest and convert registry weights on first use; ``check_available(name)`` fails
early for a model with no weights here. Every weights error is a ``WeightsError``.
"""

from leam_jax.weights.convert import check_available
from leam_jax.weights.errors import WeightsError
from leam_jax.weights.loading import load, load_apply

__all__ = ["WeightsError", "check_available", "load", "load_apply"]
