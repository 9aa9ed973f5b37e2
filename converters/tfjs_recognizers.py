"""human-models face recognizers (TF.js graphs) -> Flax params of FaceRes / MobileFace.

Converts ``faceres`` and ``faceres-deep`` (HSE MobileNet v1 recognizer, one
architecture: :class:`leam_jax.models.faceres.FaceRes`) and ``mobileface``
(:class:`leam_jax.models.mobileface.MobileFace`). ``mobilefacenet`` is listed
in ``SOURCES`` so its archive member is known, but ``convert`` refuses it: see
``EXCLUDED`` for why.

As in ``tfjs_facemesh``, two tables drive each conversion: a mapping table
(graph constant, Flax key, transform) with the transforms in
``converters.mapping.TRANSFORMS``, and a graph check (``converters.tfjs_walker``)
that walks the graph along the Flax model before a weight is copied,
checking op, strides, padding, wiring and every structural constant
(ReLU6 bounds, pads, the input normalisation, the flatten shape). Every node of
the graph must be covered exactly once, by the model or by the explicitly
listed, not converted, age/gender heads of faceres.
"""

from __future__ import annotations

import numpy as np
from flax import nnx

from converters import tfjs_graph
from converters.human_models import human_model_source
from converters.mapping import apply_mapping
from converters.tfjs_walker import GraphWalker
from leam_jax.models import faceres, mobileface
from leam_jax.models.params import abstract_shapes

# --- FaceRes ------------------------------------------------------------------------------


def faceres_table() -> list[tuple[str, str, str]]:
    """Rows (graph constant, Flax key, transform), input side first."""
    rows = [("conv1/convolution/merged_input", "stem/kernel", "identity"),
            ("conv1_bn/batchnorm_1/sub", "stem/bias", "identity")]
    for i in range(1, len(faceres.BLOCKS) + 1):
        b = f"blocks/{i - 1}"
        rows += [(f"conv_dw_{i}/depthwise_kernel", f"{b}/dw/kernel", "depthwise_hwc1_to_hw1c"),
                 (f"conv_dw_{i}_bn/batchnorm_1/mul", f"{b}/dw_scale", "identity"),
                 (f"conv_dw_{i}_bn/batchnorm_1/sub", f"{b}/dw_bias", "identity"),
                 (f"conv_pw_{i}/convolution/merged_input", f"{b}/pw/kernel", "identity"),
                 (f"conv_pw_{i}_bn/batchnorm_1/sub", f"{b}/pw/bias", "identity")]
    return rows


# The age / gender heads that read the pooled embedding: checked, not converted.
FACERES_HEADS = (
    ("feats/Relu", "_FusedMatMul", ["global_pooling/Mean", "feats/kernel", "feats/bias"]),
    ("gender_pred/BiasAdd", "_FusedMatMul", ["feats/Relu", "gender_pred/kernel", "gender_pred/bias"]),
    ("age_pred/BiasAdd", "_FusedMatMul", ["feats/Relu", "age_pred/kernel", "age_pred/bias"]),
    ("gender_pred/Sigmoid", "Sigmoid", ["gender_pred/BiasAdd"]),
    ("age_pred/Softmax", "Softmax", ["age_pred/BiasAdd"]),
)
FACERES_EMBEDDING = "global_pooling/Mean"


def _relu6(w: GraphWalker, prefix: str, src: str) -> str:
    """``{prefix}_relu/Relu -> clip_by_value/Minimum(6) -> clip_by_value(0)``; returns the output node."""
    relu = w.node(f"{prefix}_relu/Relu", "Relu")
    w.same_input(relu, src)
    mn = w.node(f"{prefix}_relu/clip_by_value/Minimum", "Minimum")
    w.same_input(mn, relu.name)
    w.same_input(mn, f"{prefix}_relu/Cast", 1)
    w.int_const(f"{prefix}_relu/Cast", 6.0)
    mx = w.node(f"{prefix}_relu/clip_by_value", "Maximum")
    w.same_input(mx, mn.name)
    w.same_input(mx, f"{prefix}_relu/Const_1", 1)
    w.int_const(f"{prefix}_relu/Const_1", 0.0)
    return mx.name


def check_faceres(graph: tfjs_graph.TfjsGraph, source: str) -> None:
    """Raise ValueError naming the node wherever the graph differs from FaceRes."""
    w = GraphWalker(graph, source)
    _check_input(w, "input_1", faceres.INPUT_SIZE)
    conv = w.node("conv1_bn/batchnorm_1/mul_1", "Conv2D")
    w.expect(conv, stride=2, padding="SAME")
    w.same_input(conv, "input_1")
    w.same_input(conv, "conv1/convolution/merged_input", 1)
    w.node("conv1/convolution/merged_input", "Const")
    add = _bias(w, "conv1_bn", conv.name)
    x = _relu6(w, "conv1", add)
    for i, (_, stride) in enumerate(faceres.BLOCKS, start=1):
        dw = w.node(f"conv_dw_{i}/depthwise", "DepthwiseConv2dNative")
        w.expect(dw, stride=stride, padding="SAME")
        w.same_input(dw, x)
        w.same_input(dw, f"conv_dw_{i}/depthwise_kernel", 1)
        w.node(f"conv_dw_{i}/depthwise_kernel", "Const")
        mul = w.node(f"conv_dw_{i}_bn/batchnorm_1/mul_1", "Mul")
        w.same_input(mul, dw.name)
        w.same_input(mul, f"conv_dw_{i}_bn/batchnorm_1/mul", 1)
        w.node(f"conv_dw_{i}_bn/batchnorm_1/mul", "Const")
        x = _relu6(w, f"conv_dw_{i}", _bias(w, f"conv_dw_{i}_bn", mul.name))
        pw = w.node(f"conv_pw_{i}_bn/batchnorm_1/mul_1", "Conv2D")
        w.expect(pw, stride=1, padding="SAME")
        w.same_input(pw, x)
        w.same_input(pw, f"conv_pw_{i}/convolution/merged_input", 1)
        w.node(f"conv_pw_{i}/convolution/merged_input", "Const")
        x = _relu6(w, f"conv_pw_{i}", _bias(w, f"conv_pw_{i}_bn", pw.name))
    mean = w.node(FACERES_EMBEDDING, "Mean")
    w.same_input(mean, x)
    w.same_input(mean, f"{FACERES_EMBEDDING}/reduction_indices", 1)
    w.int_const(f"{FACERES_EMBEDDING}/reduction_indices", [1, 2])
    if mean.attr.get("keep_dims", {}).get("b", False):
        w.fail(f"node {mean.name!r} keeps the pooled dims")
    for name, op, inputs in FACERES_HEADS:
        node = w.node(name, op)
        if [i.split(":")[0] for i in node.inputs] != inputs:
            w.fail(f"node {name!r} reads {node.inputs}, expected {inputs}")
        for const in inputs[1:]:
            w.node(const, "Const")
    w.check_all_covered()


def _bias(w: GraphWalker, prefix: str, src: str) -> str:
    add = w.node(f"{prefix}/batchnorm_1/add_1", "Add")
    w.same_input(add, src)
    w.same_input(add, f"{prefix}/batchnorm_1/sub", 1)
    w.node(f"{prefix}/batchnorm_1/sub", "Const")
    return add.name


# --- MobileFace -------------------------------------------------------------------------------


def mobileface_table() -> list[tuple[str, str, str]]:
    rows = [("conv1_weight", "stem/kernel", "identity"), ("prelu1_gamma", "stem_gamma", "identity")]
    for k in range(1, len(mobileface.STAGES) + 1):
        s, u = f"stages/{k - 1}", f"stage{k}_unit1"
        rows += [(f"{u}_conv0_0_weight", f"{s}/expand/kernel", "identity"),
                 (f"{u}_conv0_1_df", f"{s}/down/dw/kernel", "depthwise_hwc1_to_hw1c"),
                 (f"{u}_prelu0_gamma", f"{s}/down/gamma", "identity"),
                 (f"{u}_conv1_df", f"{s}/res1/dw/kernel", "depthwise_hwc1_to_hw1c"),
                 (f"{u}_prelu1_gamma", f"{s}/res1/gamma", "identity"),
                 (f"{u}_conv2_df", f"{s}/res2/dw/kernel", "depthwise_hwc1_to_hw1c"),
                 (f"{u}_prelu2_gamma", f"{s}/res2/gamma", "identity")]
    rows += [("dense/kernel", "dense/kernel", "identity"), ("batchnorm0/mul", "bn_scale", "identity"),
             ("batchnorm0/sub", "bn_offset", "identity")]
    return rows


MOBILEFACE_EMBEDDING = "batchnorm0/add_1"


def _inputs(node: tfjs_graph.Node) -> list[str]:
    return [i.split(":")[0] for i in node.inputs]


def _pad1(w: GraphWalker, src: str) -> str:
    pad = w.consumer(src, "Pad")
    w.int_const(pad.inputs[1], [[0, 0], [1, 1], [1, 1], [0, 0]])
    return pad.name


def _prelu(w: GraphWalker, src: str, gamma: str) -> str:
    """``AddV2(Maximum(0, x), Mul(gamma, Minimum(0, x)))``; returns the AddV2."""
    mx, mn = w.consumer(src, "Maximum"), w.consumer(src, "Minimum")
    for n in (mx, mn):
        if _inputs(n)[1] != src:
            w.fail(f"node {n.name!r} reads {n.inputs}, expected (0, {src!r})")
        w.int_const(n.inputs[0], 0.0)
    mul = w.consumer(mn.name, "Mul")
    if _inputs(mul) != [gamma, mn.name]:
        w.fail(f"node {mul.name!r} reads {mul.inputs}, expected [{gamma!r}, {mn.name!r}]")
    w.node(gamma, "Const")
    add = w.consumer(mul.name, "AddV2")
    if _inputs(add) != [mx.name, mul.name]:
        w.fail(f"node {add.name!r} reads {add.inputs}, expected [{mx.name!r}, {mul.name!r}]")
    return add.name


def _conv(w: GraphWalker, src: str, op: str, kernel: str, stride: int) -> str:
    conv = w.consumer(src, op)
    w.expect(conv, stride=stride, padding="VALID")
    if _inputs(conv) != [src, kernel]:
        w.fail(f"node {conv.name!r} reads {conv.inputs}, expected [{src!r}, {kernel!r}]")
    w.node(kernel, "Const")
    return conv.name


def check_mobileface(graph: tfjs_graph.TfjsGraph, source: str) -> None:
    """Raise ValueError naming the node wherever the graph differs from MobileFace."""
    w = GraphWalker(graph, source)
    _check_input(w, "data", mobileface.INPUT_SIZE)
    sub = w.consumer("data", "Sub")
    w.int_const(sub.inputs[1], [mobileface.MEAN])
    mul = w.consumer(sub.name, "Mul")
    w.int_const(mul.inputs[1], [mobileface.SCALE])
    x = _conv(w, _pad1(w, mul.name), "Conv2D", "conv1_weight", 2)
    x = _prelu(w, x, "prelu1_gamma")
    for k in range(1, len(mobileface.STAGES) + 1):
        u = f"stage{k}_unit1"
        x = _conv(w, x, "Conv2D", f"{u}_conv0_0_weight", 1)
        x = _prelu(w, _conv(w, _pad1(w, x), "DepthwiseConv2dNative", f"{u}_conv0_1_df", 2), f"{u}_prelu0_gamma")
        skip = x
        for j in (1, 2):
            x = _prelu(w, _conv(w, _pad1(w, x), "DepthwiseConv2dNative", f"{u}_conv{j}_df", 1), f"{u}_prelu{j}_gamma")
        res = [c for c in graph.consumers(x) if c.op == "AddV2"]
        if len(res) != 1 or sorted(_inputs(res[0])) != sorted([x, skip]):
            w.fail(f"stage {k}: expected one AddV2({x!r}, {skip!r}), found {[(r.name, r.inputs) for r in res]}")
        x = w.node(res[0].name, "AddV2").name
    reshape = w.consumer(x, "Reshape")
    w.int_const(reshape.inputs[1], [-1, mobileface.FINAL_SIZE ** 2 * mobileface.STAGES[-1]])
    mm = w.consumer(reshape.name, "MatMul")
    if _inputs(mm) != [reshape.name, "dense/kernel"] or mm.attr.get("transpose_b", {}).get("b", False):
        w.fail(f"node {mm.name!r} reads {mm.inputs}, expected [{reshape.name!r}, 'dense/kernel'] untransposed")
    w.node("dense/kernel", "Const")
    bn = w.consumer(mm.name, "Mul")
    if _inputs(bn) != [mm.name, "batchnorm0/mul"]:
        w.fail(f"node {bn.name!r} reads {bn.inputs}")
    w.node("batchnorm0/mul", "Const")
    out = w.consumer(bn.name, "AddV2")
    if out.name != MOBILEFACE_EMBEDDING or _inputs(out) != [bn.name, "batchnorm0/sub"]:
        w.fail(f"node {out.name!r} reads {out.inputs}, expected the embedding {MOBILEFACE_EMBEDDING!r}")
    w.node("batchnorm0/sub", "Const")
    w.check_all_covered()


# --- shared ----------------------------------------------------------------------------------


def _check_input(w: GraphWalker, name: str, size: int) -> None:
    if w.g.inputs != [name]:
        w.fail(f"inputs {w.g.inputs}, expected [{name!r}]")
    dims = [int(d["size"]) for d in w.g.nodes[name].attr["shape"]["shape"]["dim"]]
    if dims[1:] != [size, size, 3]:
        w.fail(f"{name} has shape {dims}, the model takes [B, {size}, {size}, 3]")
    w.node(name, "Placeholder")


# Why a listed model is not converted.
EXCLUDED = {
    "mobilefacenet": (
        "not converted: the shipped graph's 'embeddings' (L2-normalised 'MobileFaceNet/Logits/SpatialSqueeze', "
        "its only output) are almost input-independent. Run in TF.js itself on the 52 dlib_johns chips "
        "(112x112), any two faces have cosine >= 0.97 and the verification AUC is 0.67-0.73 for every input "
        "tried: 0..1 RGB (what @vladmandic/human 3.0.4 feeds), (x - 127.5) / 128 (the upstream MobileFaceNet_TF "
        "normalisation), 0..255 RGB or BGR; a uniform grey input gives cosine 1.000 to every face embedding. "
        "From the third block on, the input-independent part of the activations is ~30-100x their variation "
        "across faces (folded batch-norm offsets), and removing it does not recover identity (AUC 0.62-0.65). "
        "A wrong output node or preprocessing does not explain it; the weights do"),
}

# name -> (model class, mapping table, graph check, constants checked but not converted)
_MODELS = {
    "faceres": (lambda: faceres.FaceRes, faceres_table, check_faceres,
                {c for _, _, ins in FACERES_HEADS for c in ins[1:]}),
    "faceres_deep": (lambda: faceres.FaceRes, faceres_table, check_faceres,
                     {c for _, _, ins in FACERES_HEADS for c in ins[1:]}),
    "mobileface": (lambda: mobileface.MobileFace, mobileface_table, check_mobileface, set()),
}


def convert(files: dict[str, bytes], source: str, name: str) -> dict[str, np.ndarray]:
    """model.json + .bin (base name -> bytes) -> flat Flax params {'a/b/c': array}."""
    if name in EXCLUDED:
        raise ValueError(f"{name}: {EXCLUDED[name]}")
    if name not in _MODELS:
        raise KeyError(f"tfjs_recognizers converts {sorted(_MODELS)}, not {name!r}")
    cls, table_fn, check, head_consts = _MODELS[name]
    tfjs_graph.check_shards(files, source)
    graph = tfjs_graph.graph_from_files(files, source)
    check(graph, source)
    target = abstract_shapes(lambda: cls()(rngs=nnx.Rngs(0)))
    table = table_fn()
    # Float constants: the weights (table rows), structural scalars checked by value, the skipped heads.
    weights = {n for n, node in graph.nodes.items()
               if node.op == "Const" and graph.weights[n].dtype == np.float32 and graph.weights[n].ndim >= 1
               and n not in head_consts and graph.weights[n].size > 1}
    return apply_mapping(graph.weights, table, weights, target, source)


# --- where the weights come from -------------------------------------------------------------

SOURCES = {
    "faceres": human_model_source("faceres"),
    "faceres_deep": human_model_source("faceres-deep"),
    "mobileface": human_model_source("mobileface"),
    "mobilefacenet": human_model_source("mobilefacenet"),
}
