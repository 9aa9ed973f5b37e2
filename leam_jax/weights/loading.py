"""Models with their converted weights: restored, digest-checked, strictly merged.

``load(name)`` gives a recognizer's :class:`~leam_jax.models.FaceModel`;
``load_apply(name)`` gives ``(apply, params)`` of any model, including the
detector (``blazeface``), the face mesh (``facemesh``) and the parser
(``bisenet``). Registry weights are converted on first use.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flax import nnx

from leam_jax.models import REGISTRY, FaceModel, bisenet, blazeface, facemesh
from leam_jax.models.contract import ApplyFn, from_flat
from leam_jax.weights import checkpoint, manifest, paths
from leam_jax.weights.convert import ensure_converted

# The models that are not recognizers: name -> module constructor.
_OTHER_MODELS: dict[str, Callable[[], nnx.Module]] = {
    "blazeface": lambda: blazeface.BlazeFace(rngs=nnx.Rngs(0)),
    "blazeface_back": lambda: blazeface.BlazeFace(rngs=nnx.Rngs(0)),
    "facemesh": lambda: facemesh.FaceMesh(rngs=nnx.Rngs(0)),
}


def architecture(name: str) -> str:
    """The model a checkpoint name holds: itself, or for a user file saved under its own name, its architecture."""
    if name in REGISTRY or name in _OTHER_MODELS or name == "bisenet":
        return name
    arch = manifest.read_local().get(name, {}).get("architecture")
    if arch is None:
        known = sorted([*REGISTRY, *_OTHER_MODELS, "bisenet"])
        raise KeyError(f"unknown model {name!r}; known: {known}, or a name given with python -m converters ARCH "
                       "--source FILE --name NAME")
    return arch


def restore_flat(name: str, *, convert: bool = True) -> tuple[dict[str, np.ndarray], str]:
    """(flat params, checkpoint path) of a converted model, verified against its recorded digest.

    A missing registry checkpoint is converted first (``convert``); a user's is an error saying how to convert it.
    """
    path = paths.checkpoint_dir() / name
    if convert and not path.exists():
        ensure_converted(name, quiet=True)
    return checkpoint.restore(path, expected_digest=manifest.expected_digest(name)), str(path)


def load_apply(name: str, *, convert: bool = True) -> tuple[ApplyFn, nnx.State]:
    """``(apply, params)`` of any model with converted weights.

    ``blazeface``: ``apply(params, images [B, 256, 256, 3] in [-1, 1]) -> (regressors, logits)``;
    ``facemesh``: ``apply(params, images [B, 192, 192, 3] in [0, 1]) -> (mesh [B, 468, 3], faceflag [B])``;
    ``bisenet``: ``apply(params, images [B, H, W, 3] RGB 0..255) -> logits [B, H, W, 19]``;
    recognizers: the :class:`~leam_jax.models.FaceModel` contract.
    """
    arch = architecture(name)
    flat, path = restore_flat(name, convert=convert)
    if arch == "bisenet":
        return bisenet.apply, bisenet.params_from_flat(flat, path)
    ctor = _OTHER_MODELS.get(arch) or (lambda: REGISTRY[arch].ctor(nnx.Rngs(0)))
    return from_flat(ctor, flat, path)


def load(name: str, *, convert: bool = True) -> FaceModel:
    """A recognizer with its converted weights (registry weights converted on first use)."""
    arch = architecture(name)
    if arch not in REGISTRY:
        raise KeyError(f"{name!r} is not a recognizer; load_apply({name!r}) gives its (apply, params)")
    spec = REGISTRY[arch]
    apply, params = load_apply(name, convert=convert)
    return FaceModel(name, apply, params, spec.taps, spec.input_size, spec.embedding_dim)
