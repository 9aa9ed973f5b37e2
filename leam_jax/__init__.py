"""leam-jax: person-specific layer relevance maps (LEAM) for face-recognition networks.

The functional core (pure JAX) is re-exported here: targets, one-vjp
gradients for all taps, maps, the fixed-shape sharded runner and its
options. Adapters for NNX, Linen and Haiku models are in ``leam_jax.adapters``,
statistics in ``leam_jax.stats``, converted pretrained models in
``leam_jax.weights`` (``load(name)``), the face pipeline in ``leam_jax.face``
and the study tool in ``leam_jax.study`` (``python -m leam_jax.main``).
"""

from leam_jax.core import (
    DEFAULT_TARGET,
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHTING,
    GALLERY_TARGETS,
    TARGETS,
    WEIGHTINGS,
    LeamMaps,
    LeamRunner,
    LeamSetRunner,
    Placement,
    batch_mesh,
    compiler_options,
    contrast_score,
    dense_person_ids,
    identification_score,
    identity_score,
    jit,
    layer_map,
    leam_maps,
    loo_references,
    pair_score,
    person_gallery,
    population_score,
    self_score,
    tap_gradients,
    target_scores,
)

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TEMPERATURE",
    "DEFAULT_WEIGHTING",
    "GALLERY_TARGETS",
    "TARGETS",
    "WEIGHTINGS",
    "LeamMaps",
    "LeamRunner",
    "LeamSetRunner",
    "Placement",
    "batch_mesh",
    "compiler_options",
    "contrast_score",
    "dense_person_ids",
    "identification_score",
    "identity_score",
    "jit",
    "layer_map",
    "leam_maps",
    "loo_references",
    "pair_score",
    "person_gallery",
    "population_score",
    "self_score",
    "tap_gradients",
    "target_scores",
]
__version__ = "0.2.0"
