"""ONNX exports walked as a dataflow from their input, whatever the tensor names.

:class:`OnnxGraph` sees through Identity/Dropout, evaluates constant
subgraphs (exporters without constant folding), and records which nodes and
initializers a walk used. The unit readers (:func:`conv_unit`,
:func:`bn_unit`, :func:`prelu_unit`, :func:`linear_unit`) each take the one
unvisited consumer of a tensor, check its attributes and shapes against the
architecture, and fold an eval-mode batch norm that follows into it
(float64). Every mismatch is a ValueError naming the file, the node and the
architecture's layer.
"""

from __future__ import annotations

import numpy as np

from converters.folding import affine, fold


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


def _attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class OnnxGraph:
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
        self.nodes = [n for n in g.node if not self._absorb(n)]
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

    def _absorb(self, n) -> bool:
        """Constants, eval-mode no-ops and constant subgraphs become constants or aliases, not nodes."""
        import onnx
        from onnx import numpy_helper

        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    self.consts[n.output[0]] = numpy_helper.to_array(a.t)
                elif a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    self.consts[n.output[0]] = np.asarray(onnx.helper.get_attribute_value(a))
            return True
        if n.op_type in ("Identity", "Dropout"):  # eval-mode no-ops (Dropout's mask output unused)
            self.alias[n.output[0]] = self.name(n.input[0])
            return True
        if n.op_type in _CONST_OPS and all(self.name(t) in self.consts for t in n.input if t):
            # Constant subgraphs left by exporters without constant folding (e.g. PRelu slope Unsqueeze).
            ins = [self.consts[self.name(t)] for t in n.input if t]
            self.consts[n.output[0]] = _CONST_OPS[n.op_type](ins, _attrs(n))
            self.derived[n.output[0]] = [self.name(t) for t in n.input if t]
            return True
        return False

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
        return _attrs(node)

    def next(self, t: str, ops: tuple[str, ...], what: str):
        """The one not yet visited consumer of tensor ``t`` whose op is in ``ops``."""
        cands = [n for n in self.consumers.get(self.name(t), []) if n.op_type in ops and id(n) not in self.visited]
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

    def take_bn_after(self, t: str) -> tuple[str, tuple | None]:
        """(output, BN params) of a BatchNormalization the exporter left after ``t`` unfolded; (t, None) if none."""
        nxt = self.sole_consumer(t)
        if nxt is None or nxt.op_type != "BatchNormalization":
            return t, None
        self.visited.add(id(nxt))
        return nxt.output[0], self.bn_params(nxt)

    def flatten(self, t: str, width: int) -> str:
        """The Flatten (axis 1) or Reshape to [B, width] after ``t``; returns its output."""
        flat = self.next(t, ("Flatten", "Reshape"), "flatten")
        if flat.op_type == "Flatten" and int(self.attrs(flat).get("axis", 1)) != 1:
            raise ValueError(f"{self.source}: Flatten {flat.name!r} has axis {self.attrs(flat)['axis']}, expected 1")
        if flat.op_type == "Reshape" and self.name(flat.input[1]) in self.consts:
            shape = self.const(flat.input[1], "shape", flat)
            if shape.shape != (2,) or shape[1] not in (-1, width):
                raise ValueError(f"{self.source}: Reshape {flat.name!r} to {shape.tolist()}, expected [B, {width}]")
        return flat.output[0]

    def check_output(self, t: str) -> None:
        if self.name(t) not in self.outputs:
            raise ValueError(f"{self.source}: the embedding tensor {t!r} is not a graph output {self.outputs}; "
                             "extra nodes follow it")

    def check_all_initializers_used(self) -> None:
        unused = sorted(k for k in self.initializers - self.used if np.issubdtype(self.consts[k].dtype, np.floating))
        if unused:
            raise ValueError(f"{self.source}: unmapped initializer {unused[0]!r}"
                             + (f" (+{len(unused) - 1} more)" if len(unused) > 1 else ""))


def _check_channels(g: OnnxGraph, node, what: str, arrays: dict[str, np.ndarray], c: int) -> None:
    for k, a in arrays.items():
        if a.shape[0] != c:
            raise ValueError(f"{g.source}: {node.op_type} node {node.name!r} ({what}): {k} has {a.shape[0]} channels, expected {c}")


def conv_unit(g: OnnxGraph, t: str, what: str, cin: int, cout: int, k: int, stride: int, *, groups: int = 1,
              pad: int | None = None) -> tuple[str, dict[str, np.ndarray]]:
    """Conv with exactly this geometry (+ its bias and an unfolded BatchNormalization) -> (output tensor, unit)."""
    node = g.next(t, ("Conv",), what)
    at = g.attrs(node)
    p = k // 2 if pad is None else pad
    got = (list(at.get("strides", [1, 1])), list(at.get("pads", [0, 0, 0, 0])), int(at.get("group", 1)),
           list(at.get("dilations", [1, 1])))
    want = ([stride] * 2, [p] * 4, groups, [1, 1])
    if got != want or at.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ValueError(f"{g.source}: Conv {node.name!r} ({what}): strides/pads/group/dilations {got}, expected {want}")
    w = g.const(node.input[1], "weight", node)
    if w.shape != (cout, cin // groups, k, k):
        raise ValueError(f"{g.source}: Conv {node.name!r} ({what}): weight shape {w.shape}, "
                         f"expected {(cout, cin // groups, k, k)}")
    b = g.const(node.input[2], "bias", node) if len(node.input) > 2 and node.input[2] else None
    out, bn = g.take_bn_after(node.output[0])
    unit = fold(w, b, bn)
    _check_channels(g, node, what, unit, cout)
    return out, unit


def bn_unit(g: OnnxGraph, t: str, what: str, c: int) -> tuple[str, dict[str, np.ndarray]]:
    """A BatchNormalization that stays one (before a zero-padded conv) -> (output, ``scale``/``shift`` unit)."""
    node = g.next(t, ("BatchNormalization",), what)
    unit = affine(g.bn_params(node))
    _check_channels(g, node, what, unit, c)
    return node.output[0], unit


def prelu_unit(g: OnnxGraph, t: str, what: str, c: int) -> tuple[str, dict[str, np.ndarray]]:
    node = g.next(t, ("PRelu",), what)
    slope = np.asarray(g.const(node.input[1], "slope", node), np.float64)
    if slope.size != c or slope.ndim > 1 and slope.shape[0] != c:  # [C] or [C, 1, 1]
        raise ValueError(f"{g.source}: PRelu {node.name!r} ({what}): slope shape {slope.shape}, expected ({c},) or ({c}, 1, 1)")
    return node.output[0], {"weight": slope.reshape(c)}


def _gemm_or_matmul(g: OnnxGraph, node, what: str) -> tuple[str, np.ndarray, np.ndarray | None]:
    """(output, weight [out, in], bias or None) of a Gemm, or of a MatMul [+ Add of a constant bias]."""
    if node.op_type == "Gemm":
        at = g.attrs(node)
        if at.get("transA", 0):
            raise ValueError(f"{g.source}: Gemm {node.name!r} ({what}) has transA=1")
        w = np.asarray(g.const(node.input[1], "weight", node), np.float64)
        w = (w if at.get("transB", 0) else w.T) * float(at.get("alpha", 1.0))
        b = (np.asarray(g.const(node.input[2], "bias", node), np.float64) * float(at.get("beta", 1.0))
             if len(node.input) > 2 and node.input[2] else None)
        return node.output[0], w, b
    w = np.asarray(g.const(node.input[1], "weight", node), np.float64).T
    out, b = node.output[0], None
    nxt = g.sole_consumer(out)
    if nxt is not None and nxt.op_type == "Add":
        g.visited.add(id(nxt))
        other = nxt.input[1] if g.name(nxt.input[0]) == g.name(out) else nxt.input[0]
        b = np.asarray(g.const(other, "bias", nxt), np.float64)
        out = nxt.output[0]
    return out, w, b


def linear_unit(g: OnnxGraph, t: str, what: str, nin: int, nout: int) -> tuple[str, dict[str, np.ndarray]]:
    """Gemm, or MatMul [+ Add], [+ BatchNormalization] -> (output, ``weight`` [nout, nin] / ``bias`` unit)."""
    node = g.next(t, ("Gemm", "MatMul"), what)
    out, w, b = _gemm_or_matmul(g, node, what)
    if w.shape != (nout, nin) or (b is not None and b.reshape(-1).shape != (nout,)):
        raise ValueError(f"{g.source}: {node.op_type} {node.name!r} ({what}): weight {w.shape}, expected {(nout, nin)}")
    out, bn = g.take_bn_after(out)
    return out, fold(w, None if b is None else b.reshape(-1), bn)
