"""Model registry: ``load(name)`` gives a :class:`FaceModel` with converted weights.

Weights are converted on first use (``converters``) and restored strictly
from the Orbax checkpoint, verified against ``checkpoints/manifest.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from flax import nnx

from leam_jax.models import dlib_resnet
from leam_jax.models.contract import FaceModel, abstract_flat, load_converted, pure


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    ctor: Callable[[nnx.Rngs], nnx.Module]  # builds the module with random weights
    taps: tuple[str, ...]
    input_size: int
    embedding_dim: int
    source: str
    license: str
    # Distance threshold the original authors use for same/different.
    verify_threshold: float | None = None


REGISTRY: dict[str, ModelSpec] = {
    "dlib_resnet": ModelSpec(
        name="dlib_resnet",
        ctor=lambda rngs: dlib_resnet.DlibResNet(rngs=rngs),
        taps=dlib_resnet.TAPS,
        input_size=dlib_resnet.INPUT_SIZE,
        embedding_dim=dlib_resnet.EMBEDDING_DIM,
        source="PyPI face-recognition-models 0.3.0 (dlib_face_recognition_resnet_model_v1.dat)",
        license="CC0-1.0",
        verify_threshold=0.6,
    ),
}


def load(name: str, *, convert: bool = True) -> FaceModel:
    """Load a registry model with its converted weights (converting if needed)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; known: {sorted(REGISTRY)}")
    spec = REGISTRY[name]
    apply, params = load_converted(name, lambda: spec.ctor(nnx.Rngs(0)), convert=convert)
    return FaceModel(name, apply, params, spec.taps, spec.input_size, spec.embedding_dim)


def random_init(name: str, seed: int = 0) -> FaceModel:
    """A registry architecture with random weights (tests, no downloads)."""
    spec = REGISTRY[name]
    apply, params = pure(spec.ctor(nnx.Rngs(seed)))
    return FaceModel(name, apply, params, spec.taps, spec.input_size, spec.embedding_dim)


__all__ = ["REGISTRY", "FaceModel", "ModelSpec", "abstract_flat", "load", "random_init"]
