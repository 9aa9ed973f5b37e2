"""@vladmandic/face-api's face-recognition net (dlib ResNet-29, uint8 weights) -> Flax params of DlibResNet.

face-api ships dlib's ``dlib_face_recognition_resnet_model_v1`` as a TF.js
*weights manifest* (``face_recognition_model-weights_manifest.json`` + one
``.bin``): no graph topology, only named weights, most stored as uint8 codes
(``value = code * scale + min``; the conv64 filters are float32 and equal
dlib's bit for bit). The network itself lives in face-api's JavaScript
(``src/faceRecognitionNet``): the same layers, in the same order, as dlib and
:class:`leam_jax.models.dlib_resnet.DlibResNet`:

* ``convDown``: conv 7x7/2 'valid' + bias, then ``x * scale/weights + scale/biases``, ReLU;
  ``maxPool(3, 2, 'valid')``;
* ``residual``: (conv 3x3 'same' + bias, scale, ReLU), (conv, bias, scale), add, ReLU;
* ``residualDown``: the first conv 3x3/2 'valid'; skip = ``avgPool(2, 2, 'valid')``; a main
  path one row/column short is zero-padded at the bottom/right and a skip with half the
  channels is zero-padded in channels (dlib's ``add_prev`` on tensors of different shape);
* mean over H, W; ``matMul(., fc)`` without bias.

Preprocessing (``FaceRecognitionNet.forwardInput``): the input, RGB as
decoded (``tf.node.decodeImage`` / canvas pixels), resized to 150x150 (no-op
for a 150x150 chip), minus the mean (122.782, 117.001, 104.298), divided by
**255**. dlib divides by 256, and so does DlibResNet; the first layer is a
convolution, so ``conv((x - m) / 255, W) = conv((x - m) / 256, W * 256/255)``:
the converter folds the factor into the stem kernel (rule
``fold_255_to_256``) and the module is reused unchanged.

The mapping table is explicit: face-api's block prefixes (``BLOCKS``, input
side first) against DlibResNet's blocks, each giving conv1/conv2
(filters, bias, scale weights, scale biases). The strict mapping step rejects
any manifest weight without a row, any row without a weight and any shape
mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flax import nnx

from converters import tfjs_graph
from converters.mapping import apply_mapping
from leam_jax.models import dlib_resnet as model
from leam_jax.models.params import abstract_shapes

MANIFEST_NAME = "face_recognition_model-weights_manifest.json"

# face-api's residual layers, input side first (extractParamsFromWeightMap.ts), and the
# DlibResNet block each one fills. "_down" layers are the downsampling blocks.
BLOCKS = (
    ("conv32_1", "s1_b0"), ("conv32_2", "s1_b1"), ("conv32_3", "s1_b2"),
    ("conv64_down", "s2_b0"), ("conv64_1", "s2_b1"), ("conv64_2", "s2_b2"), ("conv64_3", "s2_b3"),
    ("conv128_down", "s3_b0"), ("conv128_1", "s3_b1"), ("conv128_2", "s3_b2"),
    ("conv256_down", "s4_b0"), ("conv256_1", "s4_b1"), ("conv256_2", "s4_b2"),
    ("conv256_down_out", "s5_b0"),
)

def _check_blocks() -> None:
    names = model.block_names()
    if [ours for _, ours in BLOCKS] != names:
        raise AssertionError(f"BLOCKS {[o for _, o in BLOCKS]} do not list DlibResNet's blocks {names}")
    downs = [down and i == 0 for _, _, n, down in model.STAGES for i in range(n)]
    if [("_down" in theirs) for theirs, _ in BLOCKS] != downs:
        raise AssertionError("BLOCKS: face-api's downsampling layers do not line up with DlibResNet's")


def _conv_rows(prefix: str, conv: str, affine: str, kernel_rule: str = "identity") -> list[tuple[str, str, str]]:
    return [(f"{prefix}/conv/filters", f"{conv}/kernel", kernel_rule),
            (f"{prefix}/conv/bias", f"{conv}/bias", "identity"),
            (f"{prefix}/scale/weights", f"{affine}/gamma", "identity"),
            (f"{prefix}/scale/biases", f"{affine}/beta", "identity")]


def mapping_table() -> list[tuple[str, str, str]]:
    """Rows (face-api weight name, Flax key, transform), input side first.

    TF.js keeps conv filters HWIO and the fc matrix [in, out], as Flax does (rule ``identity``);
    the stem kernel takes the 256/255 fold (rule ``fold_255_to_256``, see the module docstring).
    """
    _check_blocks()
    rows = _conv_rows("conv32_down", "stem_conv", "stem_affine", "fold_255_to_256")
    for b, (theirs, _) in enumerate(BLOCKS):
        for j in (1, 2):
            rows += _conv_rows(f"{theirs}/conv{j}", f"blocks/{b}/conv{j}", f"blocks/{b}/affine{j}")
    rows.append(("fc", "fc/kernel", "identity"))
    return rows


def read_manifest_weights(files: dict[str, bytes], source: str) -> dict[str, np.ndarray]:
    """Dequantised float32 weights {face-api name: array} of the manifest + .bin among ``files``."""
    if MANIFEST_NAME not in files:
        raise ValueError(f"{source}: {MANIFEST_NAME} is not among {sorted(files)}")
    try:
        manifest = json.loads(files[MANIFEST_NAME])
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: {MANIFEST_NAME} is not valid JSON ({e})") from e
    if not isinstance(manifest, list) or not all(isinstance(g, dict) and "paths" in g and "weights" in g for g in manifest):
        raise ValueError(f"{source}: {MANIFEST_NAME} is not a TF.js weights manifest (a list of groups)")
    paths = [Path(p).name for g in manifest for p in g["paths"]]
    missing = [p for p in paths if p not in files]
    extra = sorted(set(files) - set(paths) - {MANIFEST_NAME})
    if missing or extra:
        raise ValueError(f"{source}: weight shards missing {missing}, unexpected files {extra}")
    return tfjs_graph.read_weights(manifest, [files[p] for p in paths], source)


def convert(files: dict[str, bytes], source: str, name: str = "dlib_resnet_faceapi") -> dict[str, np.ndarray]:
    """Weights manifest + .bin (base name -> bytes) -> flat Flax params {'a/b/c': array}."""
    if name not in SOURCES:
        raise KeyError(f"faceapi_dlib converts {sorted(SOURCES)}, not {name!r}")
    weights = read_manifest_weights(files, source)
    target = abstract_shapes(lambda: model.DlibResNet(rngs=nnx.Rngs(0)))
    return apply_mapping(weights, mapping_table(), set(weights), target, source)


# --- where the weights come from ---------------------------------------------

FACEAPI = {
    "kind": "npm",
    "package": "@vladmandic/face-api",
    "version": "1.7.15",
    "archive": "vladmandic-face-api-1.7.15.tgz",
    "license": ("MIT (package.json, LICENSE); weights: dlib_face_recognition_resnet_model_v1 by Davis King "
                "(TUTORIAL.md), CC0-1.0 as in dlib-models"),
}
SOURCE = dict(FACEAPI, members=[f"package/model/{MANIFEST_NAME}", "package/model/face_recognition_model.bin"])
SOURCES = {"dlib_resnet_faceapi": SOURCE}
