"""human-models ``facemesh.json`` + ``facemesh.bin`` (TF.js graph) -> Flax params of FaceMesh.

Two tables drive the conversion:

* ``LAYERS``: every parameterised layer of the Flax model (input side first)
  with the TF/Keras layer numbers its constants carry in the graph
  (``depthwise_conv2d_N``, ``conv2d_M``, ``p_re_lu_K``).
* ``mapping_table()``: those rows expanded to (graph constant name, Flax key,
  transform), the transforms in ``converters.mapping.TRANSFORMS``.

Before it copies a single weight the converter walks the graph along
``LAYERS`` and checks every node it passes: op, strides, padding, fused ops,
the wiring from one layer to the next, the max-pool + channel-pad skips of the
stride-2 blocks, the three output reshapes and the sigmoid. Every node and
constant of the graph must be used exactly once, so a different graph is an
error naming the node, never a silently different model.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from converters import tfjs_graph
from converters.human_models import human_model_source
from converters.mapping import apply_mapping
from converters.tfjs_walker import GraphWalker
from leam_jax.models import facemesh as model
from leam_jax.models.params import abstract_shapes

P = "StatefulPartitionedCall/model_1/"

# --- the layer table ------------------------------------------------------------

# (Flax module path, kind, TF layer numbers). Kinds:
#   conv_prelu: conv + bias + PReLU fused in one _FusedConv2D   {conv, prelu}
#   block:      depthwise_conv2d_{dw} -> conv2d_{conv} (+bias) -> AddV2(skip) -> p_re_lu_{prelu}
#   out:        conv2d_{conv} 3x3/3 VALID + bias -> [Sigmoid] -> Reshape [-1, C]
LAYERS: tuple[tuple[str, str, dict[str, int]], ...] = (
    ("stem", "conv_prelu", {"conv": 1, "prelu": 1}),
    ("trunk/0", "block", {"dw": 1, "conv": 2, "prelu": 2}),
    ("trunk/1", "block", {"dw": 2, "conv": 3, "prelu": 3}),
    ("trunk/2", "block", {"dw": 3, "conv": 4, "prelu": 4}),
    ("trunk/3", "block", {"dw": 4, "conv": 5, "prelu": 5}),
    ("trunk/4", "block", {"dw": 5, "conv": 6, "prelu": 6}),
    ("trunk/5", "block", {"dw": 6, "conv": 7, "prelu": 7}),
    ("trunk/6", "block", {"dw": 7, "conv": 8, "prelu": 8}),
    ("trunk/7", "block", {"dw": 8, "conv": 9, "prelu": 9}),
    ("trunk/8", "block", {"dw": 9, "conv": 10, "prelu": 10}),
    ("trunk/9", "block", {"dw": 10, "conv": 11, "prelu": 11}),
    ("trunk/10", "block", {"dw": 11, "conv": 12, "prelu": 12}),
    ("trunk/11", "block", {"dw": 12, "conv": 13, "prelu": 13}),
    ("trunk/12", "block", {"dw": 13, "conv": 14, "prelu": 14}),
    ("trunk/13", "block", {"dw": 14, "conv": 15, "prelu": 15}),
    # mesh head (output_mesh)
    ("mesh_head/blocks/0", "block", {"dw": 15, "conv": 16, "prelu": 16}),
    ("mesh_head/blocks/1", "block", {"dw": 16, "conv": 17, "prelu": 17}),
    ("mesh_head/blocks/2", "block", {"dw": 17, "conv": 18, "prelu": 18}),
    ("mesh_head/proj", "conv_prelu", {"conv": 19, "prelu": 19}),
    ("mesh_head/tail", "block", {"dw": 18, "conv": 20, "prelu": 20}),
    ("mesh_head/out", "out", {"conv": 21}),
    # contours head (output_contours)
    ("contours_head/blocks/0", "block", {"dw": 19, "conv": 22, "prelu": 21}),
    ("contours_head/blocks/1", "block", {"dw": 20, "conv": 23, "prelu": 22}),
    ("contours_head/blocks/2", "block", {"dw": 21, "conv": 24, "prelu": 23}),
    ("contours_head/proj", "conv_prelu", {"conv": 25, "prelu": 24}),
    ("contours_head/tail", "block", {"dw": 22, "conv": 26, "prelu": 25}),
    ("contours_head/out", "out", {"conv": 27}),
    # face-flag head (output_faceflag)
    ("faceflag_head/blocks/0", "block", {"dw": 23, "conv": 28, "prelu": 26}),
    ("faceflag_head/proj", "conv_prelu", {"conv": 29, "prelu": 27}),
    ("faceflag_head/tail", "block", {"dw": 24, "conv": 30, "prelu": 28}),
    ("faceflag_head/out", "out", {"conv": 31}),
)


def _layer_input(path: str) -> str | None:
    """The layer whose output feeds ``path`` (None: the input placeholder)."""
    order = [p for p, _, _ in LAYERS]
    i = order.index(path)
    if path.endswith("/blocks/0"):
        return "trunk/13"  # every head reads the 6x6 trunk output
    return order[i - 1] if i else None


# --- graph constant -> Flax parameter -----------------------------------------


def _names(kind: str, n: dict[str, int]) -> dict[str, str]:
    """Graph constant names of one layer, by Flax leaf."""
    if kind == "conv_prelu":
        return {"conv/kernel": f"{P}conv2d_{n['conv']}/Conv2D_weights",
                "conv/bias": f"{P}conv2d_{n['conv']}/Conv2D_bn_offset",
                "alpha": f"{P}p_re_lu_{n['prelu']}/Neg"}
    if kind == "block":
        return {"dw/kernel": f"{P}depthwise_conv2d_{n['dw']}/depthwise/ReadVariableOp",
                "pw/kernel": f"{P}conv2d_{n['conv']}/Conv2D_weights",
                "pw/bias": f"{P}conv2d_{n['conv']}/Conv2D_bn_offset",
                "alpha": f"{P}p_re_lu_{n['prelu']}/Neg"}
    if kind == "out":
        return {"kernel": f"{P}conv2d_{n['conv']}/Conv2D/ReadVariableOp",
                "bias": f"{P}conv2d_{n['conv']}/BiasAdd/ReadVariableOp"}
    raise ValueError(f"unknown layer kind {kind!r}")


# Flax leaf -> transform rule. The PReLU constant is named p_re_lu_K/Neg (Keras folds -alpha), but the
# TF.js converter's PReLU fusion negated it back: it holds +alpha, used as x < 0 ? alpha * x : x.
_RULE = {"conv/kernel": "identity", "conv/bias": "identity", "alpha": "prelu_11c_to_c",
         "dw/kernel": "depthwise_hwc1_to_hw1c", "pw/kernel": "identity", "pw/bias": "identity",
         "kernel": "identity", "bias": "identity"}


def mapping_table() -> list[tuple[str, str, str]]:
    """Rows (graph constant, Flax key, transform), input side first."""
    return [(const, f"{path}/{leaf}", _RULE[leaf])
            for path, kind, numbers in LAYERS for leaf, const in _names(kind, numbers).items()]


# --- checking the graph against the table -----------------------------------------


def _input_of(w: GraphWalker, path: str) -> str:
    prev = _layer_input(path)
    return w.g.inputs[0] if prev is None else w.outputs[prev]


def check_graph(graph: tfjs_graph.TfjsGraph, source: str) -> None:
    """Raise ValueError naming the node wherever the graph differs from the Flax model."""
    w = GraphWalker(graph, source)
    if graph.inputs != ["input_1"]:
        w.fail(f"inputs {graph.inputs}, expected ['input_1']")
    dims = [int(d["size"]) for d in graph.nodes["input_1"].attr["shape"]["shape"]["dim"]]
    if dims != [-1, model.INPUT_SIZE, model.INPUT_SIZE, 3]:
        w.fail(f"input_1 has shape {dims}, the model takes [-1, {model.INPUT_SIZE}, {model.INPUT_SIZE}, 3]")
    w.node("input_1", "Placeholder")
    trunk = dict(enumerate(model.TRUNK))
    for path, kind, numbers in LAYERS:
        names = _names(kind, numbers)
        src = _input_of(w, path)
        if kind == "conv_prelu":
            conv = w.reader(names["conv/kernel"], "_FusedConv2D")
            stride = 2 if path == "stem" else 1
            w.expect(conv, stride=stride, padding="SAME" if path == "stem" else "VALID", fused=["BiasAdd", "Prelu"])
            w.same_input(conv, src)
            for k, leaf in ((2, "conv/bias"), (3, "alpha")):
                w.same_input(conv, names[leaf], k)
                w.node(names[leaf], "Const")
            w.outputs[path] = conv.name
        elif kind == "block":
            if path.startswith("trunk/"):
                cin, cout, stride = trunk[int(path.split("/")[1])]
            else:
                cin = cout = model.TRUNK_WIDTH if "/blocks/" in path else model.HEAD_WIDTH
                stride = 2 if path.endswith("/blocks/0") else 1
            dw = w.reader(names["dw/kernel"], "DepthwiseConv2dNative")
            w.expect(dw, stride=stride, padding="SAME")
            w.same_input(dw, src)
            pw = w.reader(names["pw/kernel"], "_FusedConv2D")
            w.expect(pw, stride=1, padding="VALID", fused=["BiasAdd"])
            w.same_input(pw, dw.name)
            w.same_input(pw, names["pw/bias"], 2)
            w.node(names["pw/bias"], "Const")
            add = w.consumer(pw.name, "AddV2")
            skip = [i.split(":")[0] for i in add.inputs if i.split(":")[0] != pw.name]
            if len(skip) != 1:
                w.fail(f"node {add.name!r}: inputs {add.inputs}")
            if stride == 1:
                if skip[0] != src:
                    w.fail(f"node {add.name!r}: skip {skip[0]!r}, the layer table says {src!r}")
            else:
                pool_name = skip[0]
                if cout != cin:
                    pad = w.node(skip[0], "Pad")
                    w.int_const(pad.inputs[1], [[0, 0], [0, 0], [0, 0], [0, cout - cin]])
                    pool_name = pad.inputs[0]
                pool = w.node(pool_name, "MaxPool")
                w.expect(pool, stride=2, padding="VALID")
                if pool.attr_list("ksize") != [1, 2, 2, 1]:
                    w.fail(f"node {pool.name!r}: ksize {pool.attr_list('ksize')}, the model pools 2x2")
                w.same_input(pool, src)
            act = w.consumer(add.name, "Prelu")
            w.same_input(act, names["alpha"], 1)
            w.node(names["alpha"], "Const")
            w.outputs[path] = act.name
        else:  # out
            head = path.split("_head/")[0]
            conv = w.reader(names["kernel"], "_FusedConv2D")
            w.expect(conv, stride=3, padding="VALID", fused=["BiasAdd"])
            w.same_input(conv, src)
            w.same_input(conv, names["bias"], 2)
            w.node(names["bias"], "Const")
            last = conv.name
            if head == "faceflag":
                last = w.consumer(last, "Sigmoid").name
            reshape = w.consumer(last, "Reshape")
            w.int_const(reshape.inputs[1], [-1, model.HEADS[head][1]])
            ident = w.consumer(reshape.name, "Identity")
            sig = graph.signature.get("outputs", {}).get(model.SIGNATURE_OUTPUTS[head], {}).get("name", "")
            if sig.split(":")[0] != ident.name:
                w.fail(f"signature output {model.SIGNATURE_OUTPUTS[head]!r} is {sig!r}, the layer table reaches {ident.name!r}")
    w.check_all_covered()


def convert(files: dict[str, bytes], source: str, name: str = "facemesh") -> dict[str, np.ndarray]:
    """facemesh.json + facemesh.bin (base name -> bytes) -> flat Flax params {'a/b/c': array}."""
    if name != "facemesh":
        raise KeyError(f"tfjs_facemesh converts 'facemesh', not {name!r}")
    tfjs_graph.check_shards(files, source)
    graph = tfjs_graph.graph_from_files(files, source)
    check_graph(graph, source)
    target = abstract_shapes(lambda: model.FaceMesh(rngs=nnx.Rngs(0)))
    consts = {n for n, node in graph.nodes.items() if node.op == "Const" and graph.weights[n].dtype == np.float32}
    return apply_mapping(graph.weights, mapping_table(), consts, target, source)


# --- where the weights come from ---------------------------------------------

SOURCES = {"facemesh": human_model_source("facemesh")}
