"""insightface IResNet-18/34/50/100 weights (.pth state dict or .onnx export) -> Flax params of IResNet.

No registry package ships these weights (``SOURCES`` is empty); users convert
their own file: ``python -m converters iresnet50 --source backbone.pth``.

Both readers produce the same *units*, named after insightface's PyTorch
modules, with every eval-mode batch norm that follows a conv or the linear
layer folded into it (float64, then float32):

* ``conv_bn`` units: ``weight`` [O, I, k, k] and ``bias`` [O] (``conv1`` + ``bn1``;
  ``layerS.I.conv1`` + ``bn2``; ``layerS.I.conv2`` + ``bn3``;
  ``layerS.I.downsample`` = ``downsample.0`` + ``downsample.1``);
* ``bn`` units (batch norms before a conv, not foldable because of zero
  padding): ``scale``, ``shift`` [C] (``layerS.I.bn1``, ``bn2``);
* ``prelu`` units: ``weight`` [C];
* the ``linear_bn`` unit ``fc`` + ``features``: ``weight`` [512, 25088], ``bias`` [512].

``mapping_table()`` then sends each unit array to its Flax key through one
rule of ``TRANSFORMS``. The .pth reader checks the state dict key by key
against ``torch_shapes()``; the .onnx reader walks the graph from its input
(Conv [+ BatchNormalization], PRelu, Add, BatchNormalization, Flatten/Reshape,
Gemm or MatMul + Add [+ BatchNormalization]), so tensor names do not matter,
and rejects any float initializer it did not use.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from leam_jax.models import iresnet as model

SOURCES: dict = {}  # user-supplied weights only
BN_EPS = 1e-5  # insightface's BatchNorm eps; a state dict does not store it (ONNX does)

# --- the units, input side first ------------------------------------------------


def depth_of(name: str) -> int:
    try:
        depth = int(name.removeprefix("iresnet"))
    except ValueError:
        depth = -1
    if depth not in model.LAYERS:
        raise ValueError(f"{name}: not an IResNet name (iresnet{{{','.join(map(str, model.LAYERS))}}})")
    return depth


def block_prefixes(depth: int) -> list[tuple[str, int, int, int]]:
    """(torch prefix ``layerS.I``, cin, cout, stride) per block, input side first."""
    out, cin = [], model.WIDTHS[0]
    for s, (width, n) in enumerate(zip(model.WIDTHS, model.LAYERS[depth])):
        for i in range(n):
            out.append((f"layer{s + 1}.{i}", cin, width, 2 if i == 0 else 1))
            cin = width
    return out


def units(depth: int) -> list[tuple[str, str, tuple[str, ...]]]:
    """(unit name, kind, the torch modules it folds) in forward order (skip path after main path)."""
    rows = [("conv1", "conv_bn", ("conv1", "bn1")), ("prelu", "prelu", ("prelu",))]
    for p, cin, cout, stride in block_prefixes(depth):
        rows += [
            (f"{p}.bn1", "bn", (f"{p}.bn1",)),
            (f"{p}.conv1", "conv_bn", (f"{p}.conv1", f"{p}.bn2")),
            (f"{p}.prelu", "prelu", (f"{p}.prelu",)),
            (f"{p}.conv2", "conv_bn", (f"{p}.conv2", f"{p}.bn3")),
        ]
        if stride != 1 or cin != cout:
            rows.append((f"{p}.downsample", "conv_bn", (f"{p}.downsample.0", f"{p}.downsample.1")))
    rows += [("bn2", "bn", ("bn2",)), ("fc", "linear_bn", ("fc", "features"))]
    return rows


# --- unit -> Flax parameter -----------------------------------------------------


def _linear_nchw_flatten(w: np.ndarray) -> np.ndarray:
    # torch fc.weight [O, C*7*7] reads a (C, H, W) flatten; Flax reads (H, W, C) rows of [H*W*C, O].
    o, n = w.shape
    s = model.FINAL_SIZE
    c = n // (s * s)
    return np.ascontiguousarray(w.reshape(o, c, s, s).transpose(2, 3, 1, 0).reshape(s * s * c, o))


# How a unit array becomes a Flax array: the transpose rules, in one place.
TRANSFORMS = {
    "oihw_to_hwio": lambda a: np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0))),
    "linear_nchw_flatten": _linear_nchw_flatten,
    "identity": lambda a: np.ascontiguousarray(a),
}


def mapping_table(depth: int) -> list[tuple[str, str, str, str]]:
    """Rows (unit, unit param, flax key, transform), input side first."""
    rows = [
        ("conv1", "weight", "stem_conv/kernel", "oihw_to_hwio"),
        ("conv1", "bias", "stem_conv/bias", "identity"),
        ("prelu", "weight", "stem_prelu/alpha", "identity"),
    ]
    for b, (p, cin, cout, stride) in enumerate(block_prefixes(depth)):
        f = f"blocks/{b}"
        rows += [
            (f"{p}.bn1", "scale", f"{f}/bn1/gamma", "identity"),
            (f"{p}.bn1", "shift", f"{f}/bn1/beta", "identity"),
            (f"{p}.conv1", "weight", f"{f}/conv1/kernel", "oihw_to_hwio"),
            (f"{p}.conv1", "bias", f"{f}/conv1/bias", "identity"),
            (f"{p}.prelu", "weight", f"{f}/prelu/alpha", "identity"),
            (f"{p}.conv2", "weight", f"{f}/conv2/kernel", "oihw_to_hwio"),
            (f"{p}.conv2", "bias", f"{f}/conv2/bias", "identity"),
        ]
        if stride != 1 or cin != cout:
            rows += [
                (f"{p}.downsample", "weight", f"{f}/downsample/kernel", "oihw_to_hwio"),
                (f"{p}.downsample", "bias", f"{f}/downsample/bias", "identity"),
            ]
    rows += [
        ("bn2", "scale", "bn2/gamma", "identity"),
        ("bn2", "shift", "bn2/beta", "identity"),
        ("fc", "weight", "fc/kernel", "linear_nchw_flatten"),
        ("fc", "bias", "fc/bias", "identity"),
    ]
    return rows


# --- batch-norm folding (float64) ---------------------------------------------


def _bn_scale_shift(gamma, beta, mean, var, eps) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return s, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * s


def fold(weight: np.ndarray, bias: np.ndarray | None, bn: tuple | None) -> dict[str, np.ndarray]:
    """Conv/linear ``weight`` [O, ...] and ``bias`` [O] (or None) followed by eval BN (gamma, beta, mean, var, eps)."""
    w = np.asarray(weight, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    if bn is not None:
        s, t = _bn_scale_shift(*bn)
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = b * s + t
    return {"weight": w, "bias": b}


def affine(bn: tuple) -> dict[str, np.ndarray]:
    s, t = _bn_scale_shift(*bn)
    return {"scale": s, "shift": t}


# --- reader (a): PyTorch state dict ---------------------------------------------


def torch_shapes(depth: int) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of an insightface IResNet and its shape (``num_batches_tracked`` optional)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)

    w0 = model.WIDTHS[0]
    shapes["conv1.weight"] = (w0, 3, 3, 3)
    bn("bn1", w0)
    shapes["prelu.weight"] = (w0,)
    for p, cin, cout, stride in block_prefixes(depth):
        bn(f"{p}.bn1", cin)
        shapes[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
        bn(f"{p}.bn2", cout)
        shapes[f"{p}.prelu.weight"] = (cout,)
        shapes[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
        bn(f"{p}.bn3", cout)
        if stride != 1 or cin != cout:
            shapes[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
            bn(f"{p}.downsample.1", cout)
    c = model.WIDTHS[-1]
    bn("bn2", c)
    shapes["fc.weight"] = (model.EMBEDDING_DIM, c * model.FINAL_SIZE**2)
    shapes["fc.bias"] = (model.EMBEDDING_DIM,)
    bn("features", model.EMBEDDING_DIM)
    return shapes


def read_state_dict(data: bytes, source: str) -> dict[str, np.ndarray]:
    """A .pth state dict as {key: float64 array}; tensors only (``weights_only=True``)."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or unsafe pickles
        raise ValueError(f"{source}: not a PyTorch state dict loadable with weights_only=True ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model"):  # {"state_dict": {...}} checkpoints
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    keys = list(obj)
    if keys and all(str(k).startswith("module.") for k in keys):  # saved from DataParallel
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{source}: key {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().to(torch.float64).numpy() if v.is_floating_point() else v.numpy()
    return out


def units_from_state_dict(sd: Mapping[str, np.ndarray], depth: int, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Strictly check the state dict against ``torch_shapes`` and fold it into units."""
    want = torch_shapes(depth)
    optional = {k.rsplit(".", 1)[0] + ".num_batches_tracked" for k in want if k.endswith(".running_var")}
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want and k not in optional]
    if missing:
        raise ValueError(f"{source}: missing key {missing[0]!r}" + (f" (+{len(missing) - 1} more)" if len(missing) > 1 else "")
                         + f" for iresnet{depth}")
    if extra:
        raise ValueError(f"{source}: unexpected key {extra[0]!r}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else "")
                         + f" for iresnet{depth}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{source}: key {k!r} has shape {tuple(sd[k].shape)}, iresnet{depth} expects {shape}")

    def bn(m: str) -> tuple:
        return (sd[f"{m}.weight"], sd[f"{m}.bias"], sd[f"{m}.running_mean"], sd[f"{m}.running_var"], BN_EPS)

    out: dict[str, dict[str, np.ndarray]] = {}
    for unit, kind, mods in units(depth):
        if kind == "conv_bn":
            out[unit] = fold(sd[f"{mods[0]}.weight"], None, bn(mods[1]))
        elif kind == "linear_bn":
            out[unit] = fold(sd[f"{mods[0]}.weight"], sd[f"{mods[0]}.bias"], bn(mods[1]))
        elif kind == "bn":
            out[unit] = affine(bn(mods[0]))
        else:  # prelu
            out[unit] = {"weight": np.asarray(sd[f"{mods[0]}.weight"], np.float64)}
    return out


# --- reader (b): ONNX export, walked node by node --------------------------------


class _Graph:
    """An ONNX graph seen as a dataflow: constants, producers, consumers (Identity/Dropout see-through)."""

    def __init__(self, data: bytes, source: str):
        import onnx
        from onnx import numpy_helper

        try:
            m = onnx.load_model_from_string(data)
        except Exception as e:  # protobuf raises DecodeError and others
            raise ValueError(f"{source}: not an ONNX model ({type(e).__name__}: {e})") from e
        self.source = source
        g = m.graph
        self.consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in g.initializer}
        self.initializers = set(self.consts)
        self.used: set[str] = set()
        self.alias: dict[str, str] = {}
        self.derived: dict[str, list[str]] = {}  # folded constant -> the constants it came from
        self.nodes = []
        for n in g.node:
            if n.op_type == "Constant":
                for a in n.attribute:
                    if a.name == "value":
                        self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                    elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                        self.consts[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
                continue
            if n.op_type in ("Identity", "Dropout"):  # eval-mode no-ops (Dropout's mask output unused)
                self.alias[n.output[0]] = self.name(n.input[0])
                continue
            if n.op_type in _CONST_OPS and all(self.name(t) in self.consts for t in n.input if t):
                # Constant subgraphs left by exporters without constant folding (e.g. PRelu slope Unsqueeze).
                ins = [self.consts[self.name(t)] for t in n.input if t]
                self.consts[n.output[0]] = _CONST_OPS[n.op_type](ins, self.attrs(n))
                self.derived[n.output[0]] = [self.name(t) for t in n.input if t]
                continue
            self.nodes.append(n)
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for t in n.input:
                if t:
                    self.consumers.setdefault(self.name(t), []).append(n)
        inputs = [i.name for i in g.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise ValueError(f"{source}: expected one graph input (the image batch), got {inputs}")
        self.input = inputs[0]
        self.outputs = [self.name(o.name) for o in g.output]
        self.visited: set[int] = set()

    def name(self, t: str) -> str:
        while t in self.alias:
            t = self.alias[t]
        return t

    def const(self, t: str, what: str, node) -> np.ndarray:
        t = self.name(t)
        if t not in self.consts:
            raise ValueError(f"{self.source}: {node.op_type} node {node.name!r}: {what} {t!r} is not a constant")
        stack = [t]
        while stack:
            c = stack.pop()
            self.used.add(c)
            stack += self.derived.get(c, [])
        return self.consts[t]

    def attrs(self, node) -> dict:
        import onnx

        return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}

    def next(self, t: str, ops: tuple[str, ...], what: str, *, exclude=()) -> object:
        """The one not yet visited consumer of tensor ``t`` whose op is in ``ops``."""
        cands = [n for n in self.consumers.get(self.name(t), []) if n.op_type in ops and id(n) not in self.visited
                 and n not in exclude]
        if len(cands) != 1:
            seen = [(n.op_type, n.name) for n in self.consumers.get(self.name(t), [])]
            raise ValueError(f"{self.source}: expected one {'/'.join(ops)} node for {what} after tensor {t!r}, "
                             f"found consumers {seen}")
        self.visited.add(id(cands[0]))
        return cands[0]

    def sole_consumer(self, t: str):
        c = self.consumers.get(self.name(t), [])
        return c[0] if len(c) == 1 else None

    def bn_params(self, node) -> tuple:
        ins = [self.const(node.input[i], f"BatchNormalization input {i}", node) for i in range(1, 5)]
        if len(node.output) > 1 and any(node.output[1:]):
            raise ValueError(f"{self.source}: BatchNormalization {node.name!r} is in training mode; export in eval mode")
        return (*ins, float(self.attrs(node).get("epsilon", 1e-5)))


def _unsqueeze(ins: list[np.ndarray], at: dict) -> np.ndarray:
    axes = [int(a) for a in (ins[1] if len(ins) > 1 else at["axes"])]
    out = ins[0]
    for a in sorted(a % (out.ndim + len(axes)) for a in axes):
        out = np.expand_dims(out, a)
    return out


def _squeeze(ins: list[np.ndarray], at: dict) -> np.ndarray:
    axes = ins[1] if len(ins) > 1 else at.get("axes")
    return np.squeeze(ins[0], axis=None if axes is None else tuple(int(a) for a in axes))


# Ops evaluated at load time when every input is a constant.
_CONST_OPS = {
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": lambda ins, at: ins[0].reshape([int(d) if d != 0 else ins[0].shape[i] for i, d in enumerate(ins[1])]),
    "Cast": lambda ins, at: ins[0].astype(np.float64) if ins[0].dtype.kind == "f" else ins[0],
    # A bias-less Linear's weight in an export without constant folding (MobileFaceNet's GDC head).
    "Transpose": lambda ins, at: np.transpose(ins[0], at.get("perm")),
}


def _check_channels(g: _Graph, node, what: str, arrays: dict[str, np.ndarray], c: int) -> None:
    for k, a in arrays.items():
        if a.shape[0] != c:
            raise ValueError(f"{g.source}: {node.op_type} node {node.name!r} ({what}): {k} has {a.shape[0]} channels, expected {c}")


def _conv_unit(g: _Graph, t: str, what: str, cin: int, cout: int, k: int, stride: int, *, exclude=()):
    node = g.next(t, ("Conv",), what, exclude=exclude)
    at = g.attrs(node)
    p = k // 2
    got = (list(at.get("strides", [1, 1])), list(at.get("pads", [0, 0, 0, 0])), int(at.get("group", 1)),
           list(at.get("dilations", [1, 1])))
    if got != ([stride, stride], [p, p, p, p], 1, [1, 1]) or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{g.source}: Conv {node.name!r} ({what}): strides/pads/group/dilations {got}, "
                         f"expected {[stride] * 2}, {[p] * 4}, 1, [1, 1]")
    w = g.const(node.input[1], "weight", node)
    if w.shape != (cout, cin, k, k):
        raise ValueError(f"{g.source}: Conv {node.name!r} ({what}): weight shape {w.shape}, expected {(cout, cin, k, k)}")
    return fold_conv_bias_bn(g, node, w, what, cout)


def fold_conv_bias_bn(g: _Graph, node, w: np.ndarray, what: str, cout: int):
    """A Conv node's bias and the BatchNormalization after it (if the exporter left one) folded
    into one unit. -> (the output tensor name, unit)."""
    b = g.const(node.input[2], "bias", node) if len(node.input) > 2 and node.input[2] else None
    out = node.output[0]
    bn = None
    nxt = g.sole_consumer(out)
    if nxt is not None and nxt.op_type == "BatchNormalization":  # not folded by the exporter
        g.visited.add(id(nxt))
        bn = g.bn_params(nxt)
        out = nxt.output[0]
    unit = fold(w, b, bn)
    _check_channels(g, node, what, unit, cout)
    return out, unit


def _bn_unit(g: _Graph, t: str, what: str, c: int):
    node = g.next(t, ("BatchNormalization",), what)
    unit = affine(g.bn_params(node))
    _check_channels(g, node, what, unit, c)
    return node.output[0], unit


def _prelu_unit(g: _Graph, t: str, what: str, c: int):
    node = g.next(t, ("PRelu",), what)
    slope = np.asarray(g.const(node.input[1], "slope", node), np.float64)
    if slope.size != c or slope.ndim > 1 and slope.shape[0] != c:  # [C] or [C, 1, 1]
        raise ValueError(f"{g.source}: PRelu {node.name!r} ({what}): slope shape {slope.shape}, expected ({c},) or ({c}, 1, 1)")
    return node.output[0], {"weight": slope.reshape(c)}


def _linear_unit(g: _Graph, t: str, what: str, nin: int, nout: int):
    node = g.next(t, ("Gemm", "MatMul"), what)
    if node.op_type == "Gemm":
        at = g.attrs(node)
        if at.get("transA", 0):
            raise ValueError(f"{g.source}: Gemm {node.name!r} ({what}) has transA=1")
        w = np.asarray(g.const(node.input[1], "weight", node), np.float64)
        w = (w if at.get("transB", 0) else w.T) * float(at.get("alpha", 1.0))
        b = (np.asarray(g.const(node.input[2], "bias", node), np.float64) * float(at.get("beta", 1.0))
             if len(node.input) > 2 and node.input[2] else None)
        out = node.output[0]
    else:
        w = np.asarray(g.const(node.input[1], "weight", node), np.float64).T
        out, b = node.output[0], None
        nxt = g.sole_consumer(out)
        if nxt is not None and nxt.op_type == "Add":
            g.visited.add(id(nxt))
            other = nxt.input[1] if g.name(nxt.input[0]) == g.name(out) else nxt.input[0]
            b = np.asarray(g.const(other, "bias", nxt), np.float64)
            out = nxt.output[0]
    if w.shape != (nout, nin) or (b is not None and b.reshape(-1).shape != (nout,)):
        raise ValueError(f"{g.source}: {node.op_type} {node.name!r} ({what}): weight {w.shape}, expected {(nout, nin)}")
    bn = None
    nxt = g.sole_consumer(out)
    if nxt is not None and nxt.op_type == "BatchNormalization":
        g.visited.add(id(nxt))
        bn = g.bn_params(nxt)
        out = nxt.output[0]
    return out, fold(w, None if b is None else b.reshape(-1), bn)


def units_from_onnx(data: bytes, depth: int, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Walk an ONNX export of IResNet from its input and fold it into units."""
    g = _Graph(data, source)
    out: dict[str, dict[str, np.ndarray]] = {}
    w0 = model.WIDTHS[0]
    t, out["conv1"] = _conv_unit(g, g.input, "conv1", 3, w0, 3, 1)
    t, out["prelu"] = _prelu_unit(g, t, "prelu", w0)
    for p, cin, cout, stride in block_prefixes(depth):
        x = t
        y, out[f"{p}.bn1"] = _bn_unit(g, x, f"{p}.bn1", cin)
        y, out[f"{p}.conv1"] = _conv_unit(g, y, f"{p}.conv1", cin, cout, 3, 1)
        y, out[f"{p}.prelu"] = _prelu_unit(g, y, f"{p}.prelu", cout)
        y, out[f"{p}.conv2"] = _conv_unit(g, y, f"{p}.conv2", cout, cout, 3, stride)
        skip = x
        if stride != 1 or cin != cout:
            skip, out[f"{p}.downsample"] = _conv_unit(g, x, f"{p}.downsample", cin, cout, 1, stride)
        add = g.next(y, ("Add",), f"{p} residual add")
        if sorted(g.name(i) for i in add.input) != sorted((g.name(y), g.name(skip))):
            raise ValueError(f"{source}: Add {add.name!r} ({p}) does not add the main path and the skip path")
        t = add.output[0]
    c = model.WIDTHS[-1]
    t, out["bn2"] = _bn_unit(g, t, "bn2", c)
    flat = g.next(t, ("Flatten", "Reshape"), "flatten")
    if flat.op_type == "Flatten" and int(g.attrs(flat).get("axis", 1)) != 1:
        raise ValueError(f"{source}: Flatten {flat.name!r} has axis {g.attrs(flat)['axis']}, expected 1")
    if flat.op_type == "Reshape" and g.name(flat.input[1]) in g.consts:
        shape = g.const(flat.input[1], "shape", flat)
        if shape.shape != (2,) or shape[1] not in (-1, c * model.FINAL_SIZE**2):
            raise ValueError(f"{source}: Reshape {flat.name!r} to {shape.tolist()}, expected [B, {c * model.FINAL_SIZE**2}]")
    t, out["fc"] = _linear_unit(g, flat.output[0], "fc + features", c * model.FINAL_SIZE**2, model.EMBEDDING_DIM)
    if g.name(t) not in g.outputs:
        raise ValueError(f"{source}: the embedding tensor {t!r} is not a graph output {g.outputs}; extra nodes follow it")
    unused = sorted(k for k in g.initializers - g.used if np.issubdtype(g.consts[k].dtype, np.floating))
    if unused:
        raise ValueError(f"{source}: unmapped initializer {unused[0]!r}" + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""))
    return out


# --- entry point ----------------------------------------------------------------


def to_flat(unit_arrays: Mapping[str, Mapping[str, np.ndarray]], depth: int, dtype=np.float32) -> dict[str, np.ndarray]:
    """Units -> flat Flax params {'a/b/c': array} through ``mapping_table`` (float32; float64 for parity checks)."""
    flat: dict[str, np.ndarray] = {}
    for unit, param, key, rule in mapping_table(depth):
        flat[key] = TRANSFORMS[rule](np.asarray(unit_arrays[unit][param])).astype(dtype)
    return flat


def convert(files: dict[str, bytes], source: str, name: str = "iresnet50") -> dict[str, np.ndarray]:
    """One user file (``.pth``/``.pt`` state dict or ``.onnx`` export) -> flat Flax params of ``IResNet(depth)``."""
    depth = depth_of(name)
    if len(files) != 1:
        raise ValueError(f"{source}: expected one .pth/.pt/.onnx file, got {sorted(files)}")
    ((fname, data),) = files.items()
    suffix = Path(fname).suffix.lower()
    if suffix in (".pth", ".pt"):
        u = units_from_state_dict(read_state_dict(data, source), depth, source)
    elif suffix == ".onnx":
        u = units_from_onnx(data, depth, source)
    else:
        raise ValueError(f"{source}: unknown weight format {suffix!r}; expected .pth, .pt or .onnx")
    return to_flat(u, depth)
