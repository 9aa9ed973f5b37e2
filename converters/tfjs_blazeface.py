"""human-models ``blazeface.json`` (+ ``blazeface.bin``) -> Flax params of BlazeFace.

Two tables drive the conversion:

* ``expected_graph()``: every non-constant node of the TF.js graph (name,
  op, inputs, the attributes that matter: strides, padding, fused ops), built
  from the architecture in ``leam_jax.models.blazeface``; the converter checks
  the file's graph against it node by node, so a changed stride, padding or
  skip connection is an error naming the node.
* ``mapping_table()``: each TF.js weight constant -> the node that consumes it
  -> the Flax parameter it fills, with its transform rule in
  ``converters.mapping.TRANSFORMS`` (TF conv kernels are already HWIO: ``identity``).

``blazeface.json`` and ``blazeface-back.json`` in human-models 3.0.4 hold
the same graph and byte-identical weights (MediaPipe's 256x256 back-camera
model); both names convert with the same tables.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from converters import tfjs_graph
from converters.human_models import human_model_source
from converters.mapping import TRANSFORMS
from leam_jax.models import blazeface as model
from leam_jax.models.params import abstract_flat, strict_merge

PREFIX = "StatefulPartitionedCall/functional_1/"

# Output nodes of the graph (batch fixed to 1 by their Reshape) and the 4-D
# head convolutions before those reshapes (any batch), in anchor order:
# the 16x16 map, then the 8x8 map.
OUTPUTS = {"regressors": ("Identity_2", "Identity_3"), "logits": ("Identity", "Identity_1")}
HEAD_NODES = {
    "regressors": (PREFIX + "conv2d_35/BiasAdd", PREFIX + "conv2d_36/BiasAdd"),
    "logits": (PREFIX + "conv2d_33/BiasAdd", PREFIX + "conv2d_34/BiasAdd"),
}


def _sfx(k: int) -> str:
    return "" if k == 0 else f"_{k}"


def _const(k: int | None) -> str:
    return "unknown" if k is None else f"unknown_{k}"


def mapping_table() -> list[tuple[str, str, str, str]]:
    """Rows (TF.js const, consuming node, Flax key, transform), input side first."""
    rows = [
        (_const(None), "conv2d/Relu", "stem/kernel", "identity"),
        (_const(0), "conv2d/Relu", "stem/bias", "identity"),
    ]
    for i in range(len(model.BLOCKS)):
        dw, pw = f"depthwise_conv2d{_sfx(i)}/depthwise", f"conv2d_{i + 1}/BiasAdd"
        rows += [
            (_const(1 + 4 * i), dw, f"blocks/{i}/dw/kernel", "depthwise_hwc1_to_hw1c"),
            (_const(3 + 4 * i), pw, f"blocks/{i}/pw/kernel", "identity"),
            (_const(4 + 4 * i), pw, f"blocks/{i}/pw/bias", "identity"),
        ]
    rows += [
        (_const(125), "depthwise_conv2d_31/depthwise", "down8_dw/kernel", "depthwise_hwc1_to_hw1c"),
        (_const(127), "re_lu_31/Relu", "down8_pw/kernel", "identity"),
        (_const(128), "re_lu_31/Relu", "down8_pw/bias", "identity"),
        (_const(129), "conv2d_36/BiasAdd", "reg8/kernel", "identity"),
        (_const(130), "conv2d_36/BiasAdd", "reg8/bias", "identity"),
        (_const(131), "conv2d_35/BiasAdd", "reg16/kernel", "identity"),
        (_const(132), "conv2d_35/BiasAdd", "reg16/bias", "identity"),
        (_const(133), "conv2d_34/BiasAdd", "cls8/kernel", "identity"),
        (_const(134), "conv2d_34/BiasAdd", "cls8/bias", "identity"),
        (_const(135), "conv2d_33/BiasAdd", "cls16/kernel", "identity"),
        (_const(136), "conv2d_33/BiasAdd", "cls16/bias", "identity"),
    ]
    return rows


def expected_graph() -> tuple[dict[str, tuple[str, tuple[str, ...], dict]], dict[str, list[int]]]:
    """The graph the tables describe.

    Returns:
      nodes: {node name: (op, data inputs incl. consts, attrs to check)} for
        every non-Const node; AddV2 inputs compare as a set.
      structural_consts: {const name: values} for the int consts (reshape
        shapes, channel paddings).
    """
    consts = {const: node for const, node, _, _ in mapping_table()}
    params_of: dict[str, list[str]] = {}
    for const, node in consts.items():
        params_of.setdefault(node, []).append(const)
    nodes: dict[str, tuple[str, tuple[str, ...], dict]] = {}
    structural: dict[str, list[int]] = {}

    def conv(name: str, x: str, stride: int, padding: str, relu: bool) -> str:
        fused = ["BiasAdd", "Relu"] if relu else ["BiasAdd"]
        nodes[PREFIX + name] = ("_FusedConv2D", (x, *params_of[name]),
                                {"strides": [1, stride, stride, 1], "padding": padding, "fused_ops": fused})
        return PREFIX + name

    def depthwise(name: str, x: str, stride: int) -> str:
        nodes[PREFIX + name] = ("DepthwiseConv2dNative", (x, *params_of[name]),
                                {"strides": [1, stride, stride, 1], "padding": "SAME"})
        return PREFIX + name

    def simple(name: str, op: str, *inputs: str, attrs: dict | None = None) -> str:
        nodes[PREFIX + name] = (op, inputs, attrs or {})
        return PREFIX + name

    x = conv("conv2d/Relu", "input", 2, "SAME", relu=True)
    pools = pads = 0
    for i, (cin, cout, stride) in enumerate(model.BLOCKS):
        y = conv(f"conv2d_{i + 1}/BiasAdd", depthwise(f"depthwise_conv2d{_sfx(i)}/depthwise", x, stride), 1, "VALID", relu=False)
        skip = x
        if stride == 2:
            skip = simple(f"max_pooling2d{_sfx(pools)}/MaxPool", "MaxPool", x,
                          attrs={"strides": [1, 2, 2, 1], "ksize": [1, 2, 2, 1], "padding": "SAME"})
            pools += 1
        if cout > cin:
            paddings = f"{PREFIX}tf_op_layer_Pad{_sfx(pads)}/Pad{_sfx(pads)}/paddings"
            structural[paddings] = [0, 0, 0, 0, 0, 0, 0, cout - cin]
            skip = simple(f"tf_op_layer_Pad{_sfx(pads)}/Pad{_sfx(pads)}", "Pad", skip, paddings)
            pads += 1
        x = simple(f"re_lu{_sfx(i)}/Relu", "Relu", simple(f"add{_sfx(i)}/add", "AddV2", y, skip))
    feats = {16: x}
    feats[32] = conv("re_lu_31/Relu", depthwise("depthwise_conv2d_31/depthwise", x, 2), 1, "VALID", relu=True)
    heads = {("logits", 16): "conv2d_33/BiasAdd", ("logits", 32): "conv2d_34/BiasAdd",
             ("regressors", 16): "conv2d_35/BiasAdd", ("regressors", 32): "conv2d_36/BiasAdd"}
    for (_, stride), node in heads.items():
        conv(node, feats[stride], 1, "SAME", relu=False)
    for kind, layer_names in (("classificators", "logits"), ("regressors", "regressors")):
        width = 1 if layer_names == "logits" else model.NUM_COORDS
        for k, (stride, per_cell) in enumerate(model.HEADS):
            reshape = f"tf_op_layer_{kind}_{k + 1}/{kind}_{k + 1}"
            structural[f"{PREFIX}{reshape}/shape"] = [1, (model.INPUT_SIZE // stride) ** 2 * per_cell, width]
            simple(reshape, "Reshape", PREFIX + heads[(layer_names, stride)], f"{PREFIX}{reshape}/shape")
            nodes[OUTPUTS[layer_names][k]] = ("Identity", (PREFIX + reshape,), {})
    return nodes, structural


def _attr(node: tfjs_graph.Node, key: str):
    if key in ("strides", "ksize"):
        return node.attr_list(key)
    if key == "fused_ops":
        return node.attr_strs(key)
    return node.attr_str(key)


def check_graph(graph: tfjs_graph.TfjsGraph, source: str) -> None:
    """The file's graph must be exactly ``expected_graph()`` (names the first differing node)."""
    nodes, structural = expected_graph()
    if graph.inputs != ["input"]:
        raise ValueError(f"{source}: graph inputs {graph.inputs}, expected ['input']")
    found = {n.name: n for n in graph.nodes.values() if n.op not in ("Const", "Placeholder")}
    for name in sorted(set(nodes) | set(found)):
        if name not in found:
            raise ValueError(f"{source}: node {name!r} is missing from the graph")
        if name not in nodes:
            raise ValueError(f"{source}: unexpected node {name!r} ({found[name].op})")
        op, inputs, attrs = nodes[name]
        got = found[name]
        if got.op != op:
            raise ValueError(f"{source}: node {name!r} is {got.op}, expected {op}")
        same = sorted(got.inputs) == sorted(inputs) if op == "AddV2" else tuple(got.inputs) == inputs
        if not same:
            raise ValueError(f"{source}: node {name!r} reads {got.inputs}, expected {list(inputs)}")
        for key, want in attrs.items():
            if _attr(got, key) != want:
                raise ValueError(f"{source}: node {name!r} has {key}={_attr(got, key)!r}, expected {want!r}")
        if op in ("_FusedConv2D", "DepthwiseConv2dNative"):
            dil = got.attr_list("dilations")
            if (dil and dil != [1, 1, 1, 1]) or got.attr_str("data_format") not in ("", "NHWC"):
                raise ValueError(f"{source}: node {name!r} has dilations {dil} / data_format {got.attr_str('data_format')}")
    for const, values in structural.items():
        got_v = graph.weights.get(const)
        if got_v is None or got_v.ravel().tolist() != values:
            raise ValueError(f"{source}: constant {const!r} is {None if got_v is None else got_v.ravel().tolist()}, expected {values}")
    used = {c for c, *_ in mapping_table()} | set(structural)
    extra = sorted(set(graph.weights) - used)
    if extra:
        raise ValueError(f"{source}: weights {extra} are not in the mapping table")


def convert(files: dict[str, bytes], source: str, name: str = "blazeface") -> dict[str, np.ndarray]:
    """Parse model.json + shards (base name -> bytes) into flat Flax params {'a/b/c': array}."""
    shards = sorted(k for k in files if not k.endswith(".json"))
    try:
        graph = tfjs_graph.graph_from_files(files, source)
    except tfjs_graph.TfjsFormatError as e:
        raise tfjs_graph.TfjsFormatError(f"{e} [weight shards: {', '.join(shards) or 'none'}]") from e
    check_graph(graph, source)
    flat: dict[str, np.ndarray] = {}
    for const, _node, key, rule in mapping_table():
        if key in flat:
            raise ValueError(f"{source}: mapping table fills {key!r} twice")
        flat[key] = TRANSFORMS[rule](graph.weights[const]).astype(np.float32)
    target = abstract_flat(lambda: model.BlazeFace(rngs=nnx.Rngs(0)))
    return strict_merge(target, flat, f"{source} ({name})")


# --- where the weights come from ---------------------------------------------

SOURCES = {
    "blazeface": human_model_source("blazeface"),
    "blazeface_back": human_model_source("blazeface-back"),
}
