"""leam-jax: person-specific layer relevance maps (LEAM) for face-recognition networks.

The functional core (pure JAX) is re-exported here; models live in
``leam_jax.models`` (``load(name)``), statistics in ``leam_jax.stats``.
"""

from leam_jax.core import (
    LeamMaps,
    LeamRunner,
    contrast_score,
    identity_score,
    layer_map,
    leam_maps,
    loo_references,
    pair_score,
    self_score,
    tap_gradients,
)

__all__ = [
    "LeamMaps",
    "LeamRunner",
    "contrast_score",
    "identity_score",
    "layer_map",
    "leam_maps",
    "loo_references",
    "pair_score",
    "self_score",
    "tap_gradients",
]
__version__ = "0.1.0"
