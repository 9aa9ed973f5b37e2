"""Walking a TF.js graph along a Flax model, checking every node on the way.

A converter's graph check creates one :class:`GraphWalker`, follows the graph
from its input layer by layer (op, strides, padding, fused ops, wiring,
structural constants) and ends with :meth:`GraphWalker.check_all_covered`:
every node must be used exactly once, so a different graph is an error
naming the node, never a silently different model.
"""

from __future__ import annotations

import numpy as np

from converters import tfjs_graph


def strides(node: tfjs_graph.Node) -> int:
    """The one spatial stride of an NHWC conv or pool node."""
    s = node.attr_list("strides")
    if len(s) != 4 or s[0] != 1 or s[3] != 1 or s[1] != s[2]:
        raise ValueError(f"node {node.name!r}: unexpected strides {s}")
    return s[1]


class GraphWalker:
    """Follows a graph along a layer table, recording every node it checks."""

    def __init__(self, graph: tfjs_graph.TfjsGraph, source: str):
        self.g, self.source, self.seen = graph, source, set()
        self.outputs: dict[str, str] = {}  # layer path -> name of its output node

    def fail(self, msg: str):
        raise ValueError(f"{self.source}: {msg}")

    def node(self, name: str, op: str) -> tfjs_graph.Node:
        """The node ``name`` (``op`` expected), recorded; a second use is an error."""
        name = name.split(":")[0]
        if name not in self.g.nodes:
            self.fail(f"node {name!r} is missing")
        n = self.g.nodes[name]
        if n.op != op:
            self.fail(f"node {name!r} is {n.op}, expected {op}")
        if name in self.seen:
            self.fail(f"node {name!r} is used twice by the layer table")
        self.seen.add(name)
        return n

    def consumer(self, name: str, op: str) -> tfjs_graph.Node:
        """The one node of type ``op`` reading ``name``."""
        users = [c for c in self.g.consumers(name) if c.op == op]
        if len(users) != 1:
            self.fail(f"node {name!r}: expected one {op} consumer, found {[c.name for c in users]}")
        return self.node(users[0].name, op)

    def reader(self, const: str, op: str) -> tfjs_graph.Node:
        """The one node of type ``op`` reading the constant ``const``."""
        self.node(const, "Const")
        users = self.g.consumers(const)
        if len(users) != 1 or users[0].op != op:
            self.fail(f"constant {const!r}: expected one {op} reader, found {[(u.name, u.op) for u in users]}")
        return self.node(users[0].name, op)

    def expect(self, node: tfjs_graph.Node, *, stride: int, padding: str, fused: list[str] | None = None):
        if strides(node) != stride:
            self.fail(f"node {node.name!r}: stride {strides(node)}, the model has {stride}")
        if node.attr_str("padding") != padding:
            self.fail(f"node {node.name!r}: padding {node.attr_str('padding')!r}, the model has {padding!r}")
        if node.attr_list("dilations") not in ([], [1, 1, 1, 1]):
            self.fail(f"node {node.name!r}: dilations {node.attr_list('dilations')}")
        if node.attr_str("data_format") not in ("", "NHWC"):
            self.fail(f"node {node.name!r}: data format {node.attr_str('data_format')!r}")
        if fused is not None and node.attr_strs("fused_ops") != fused:
            self.fail(f"node {node.name!r}: fused ops {node.attr_strs('fused_ops')}, expected {fused}")

    def same_input(self, node: tfjs_graph.Node, want: str, k: int = 0):
        if node.inputs[k].split(":")[0] != want:
            self.fail(f"node {node.name!r} reads {node.inputs[k]!r}, the layer table says {want!r}")

    def int_const(self, name: str, want: list) -> None:
        """The structural constant ``name`` (a shape, padding or bound) holds exactly ``want``."""
        self.node(name, "Const")
        got = np.asarray(self.g.weights[name]).tolist()
        if got != want:
            self.fail(f"constant {name!r} is {got}, expected {want}")

    def check_all_covered(self) -> None:
        unused = sorted(set(self.g.nodes) - self.seen)
        if unused:
            self.fail(f"graph nodes not covered by the layer table: {unused[:8]}{' ...' if len(unused) > 8 else ''}")
