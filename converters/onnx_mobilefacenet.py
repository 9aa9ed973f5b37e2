"""insightface MobileFaceNet ONNX export (e.g. buffalo_s ``w600k_mbf.onnx``) -> Flax params of MobileFaceNet.

No registry package ships these weights (``SOURCES`` is empty); users convert
their own file: ``python -m converters mobilefacenet_onnx --source w600k_mbf.onnx``.

The reader walks the ONNX graph from its input along
:func:`leam_jax.models.mobilefacenet.layer_specs` (Conv [+ BatchNormalization],
PRelu, Add, Conv, Flatten/Reshape, Gemm or MatMul [+ Add] [+ BatchNormalization]),
checking every conv's strides, pads, groups and weight shape on the way, so
tensor names do not matter. It folds each eval-mode batch norm into the conv
or linear layer before it (float64, then float32) and produces *units* named
after insightface's PyTorch modules (``layers.3.layers.1.layers.0.layers.0``
is the 1x1 expand conv of the second residual bottleneck of stage 3):

* ``conv_bn`` units: ``weight`` [O, I/groups, k, k] and ``bias`` [O];
* ``prelu`` units: ``weight`` [C];
* the ``linear_bn`` unit ``features.layers.2`` + ``features.layers.3``:
  ``weight`` [512, 512], ``bias`` [512].

``mapping_table()`` sends each unit array to its Flax key through one rule of
``converters.mapping.TRANSFORMS``; the graph is walked by
``converters.onnx_graph``. Strict: a float initializer the walk did not use,
a node that is neither walked nor part of the flatten's shape computation,
or an embedding that is not the graph output is an error naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converters.mapping import TRANSFORMS
from converters.onnx_graph import OnnxGraph, conv_unit, linear_unit, prelu_unit
from leam_jax.models import mobilefacenet as model

SOURCES: dict = {}  # user-supplied weights only
NAMES = {"mobilefacenet_onnx": "mbf"}  # registry name -> architecture config
# Nodes that may stay off the walk: the batch-size computation of ``x.view(x.size(0), -1)``.
SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast"})


def config_of(name: str) -> str:
    if name not in NAMES:
        raise ValueError(f"{name}: onnx_mobilefacenet converts {sorted(NAMES)}")
    return NAMES[name]


# --- the units, input side first ------------------------------------------------


def torch_prefixes(config: str) -> list[str]:
    """insightface's module path of every tapped layer (``layers.I`` or ``layers.I.layers.J``; ``conv_sep``)."""
    out, top, prev_stage = [], -1, None
    for name, _, a in model.layer_specs(config):
        if name == "conv_6_sep":
            out.append("conv_sep")
            continue
        stage = name.rsplit("_", 1)[0] if a.get("residual") else None
        if stage is None or stage != prev_stage:
            top += 1
        prev_stage = stage
        out.append(f"layers.{top}.layers.{name.rsplit('_', 1)[1]}" if stage else f"layers.{top}")
    return out


def units(config: str) -> list[tuple[str, str, tuple, str]]:
    """(unit name, kind, conv geometry (cin, cout, k, stride, groups, pad), flax prefix), forward order."""
    rows: list[tuple[str, str, tuple, str]] = []
    for i, ((_, kind, a), p) in enumerate(zip(model.layer_specs(config), torch_prefixes(config))):
        f = f"layers/{i}"
        if kind == "conv":
            rows += [(f"{p}.layers.0", "conv_bn", (a["cin"], a["cout"], a["k"], a["stride"], a["groups"], a["k"] // 2), f"{f}/conv"),
                     (f"{p}.layers.2", "prelu", (a["cout"],), f"{f}/alpha")]
        else:
            cin, cout, inner, s = a["cin"], a["cout"], a["inner"], a["stride"]
            rows += [(f"{p}.layers.0.layers.0", "conv_bn", (cin, inner, 1, 1, 1, 0), f"{f}/expand/conv"),
                     (f"{p}.layers.0.layers.2", "prelu", (inner,), f"{f}/expand/alpha"),
                     (f"{p}.layers.1.layers.0", "conv_bn", (inner, inner, 3, s, inner, 1), f"{f}/dw/conv"),
                     (f"{p}.layers.1.layers.2", "prelu", (inner,), f"{f}/dw/alpha"),
                     (f"{p}.layers.2.layers.0", "conv_bn", (inner, cout, 1, 1, 1, 0), f"{f}/project")]
    w, k = model.GDC_WIDTH, model.FINAL_SIZE
    rows += [("features.layers.0.layers.0", "conv_bn", (w, w, k, 1, w, 0), "gdc"),
             ("features.layers.2", "linear_bn", (w, model.EMBEDDING_DIM), "fc")]
    return rows


# --- unit -> Flax parameter -----------------------------------------------------

def mapping_table(config: str) -> list[tuple[str, str, str, str]]:
    """Rows (unit, unit param, flax key, transform), input side first."""
    rows = []
    for unit, kind, _, f in units(config):
        if kind == "conv_bn":
            rows += [(unit, "weight", f"{f}/kernel", "oihw_to_hwio"), (unit, "bias", f"{f}/bias", "identity")]
        elif kind == "prelu":
            rows.append((unit, "weight", f, "identity"))
        else:
            rows += [(unit, "weight", f"{f}/kernel", "linear_oi_to_io"), (unit, "bias", f"{f}/bias", "identity")]
    return rows


# --- reader: ONNX export, walked node by node ------------------------------------


def units_from_onnx(data: bytes, config: str, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Walk an ONNX export of MobileFaceNet from its input and fold it into units."""
    g = OnnxGraph(data, source)
    first = g.consumers.get(g.input, [])
    if any(n.op_type in ("Sub", "Mul", "Div") for n in first):
        raise ValueError(f"{source}: the graph normalises its input itself ({[n.op_type for n in first]}); "
                         "expected the (x - 127.5) / 127.5 normalisation outside the graph")
    out: dict[str, dict[str, np.ndarray]] = {}
    rows = units(config)
    t, r = g.input, 0

    def step(t: str) -> str:
        nonlocal r
        unit, kind, geo, _ = rows[r]
        r += 1
        if kind == "conv_bn":
            cin, cout, k, stride, groups, pad = geo
            t, out[unit] = conv_unit(g, t, unit, cin, cout, k, stride, groups=groups, pad=pad)
        elif kind == "prelu":
            t, out[unit] = prelu_unit(g, t, unit, geo[0])
        return t

    for (_, kind, a), p in zip(model.layer_specs(config), torch_prefixes(config)):
        x = t
        for _ in range(2 if kind == "conv" else 5):
            t = step(t)
        if kind == "bottleneck" and a["residual"]:
            add = g.next(t, ("Add",), f"{p} residual add")
            if sorted(g.name(i) for i in add.input) != sorted((g.name(t), g.name(x))):
                raise ValueError(f"{source}: Add {add.name!r} ({p}) does not add the bottleneck and its input")
            t = add.output[0]
    t = step(t)  # GDC depthwise 7x7 + BN
    t = g.flatten(t, model.GDC_WIDTH)
    unit, _, (nin, nout), _ = rows[r]
    t, out[unit] = linear_unit(g, t, "features.layers.2 + features.layers.3", nin, nout)
    g.check_output(t)
    stray = [(n.op_type, n.name) for n in g.nodes if id(n) not in g.visited and n.op_type not in SHAPE_OPS]
    if stray:
        raise ValueError(f"{source}: graph node {stray[0]} is not part of MobileFaceNet"
                         + (f" (+{len(stray) - 1} more)" if len(stray) > 1 else ""))
    g.check_all_initializers_used()
    return out


# --- entry point ----------------------------------------------------------------


def to_flat(unit_arrays: Mapping[str, Mapping[str, np.ndarray]], config: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """Units -> flat Flax params {'a/b/c': array} through ``mapping_table`` (float32; float64 for parity checks)."""
    return {key: TRANSFORMS[rule](np.asarray(unit_arrays[unit][param])).astype(dtype)
            for unit, param, key, rule in mapping_table(config)}


def convert(files: dict[str, bytes], source: str, name: str = "mobilefacenet_onnx") -> dict[str, np.ndarray]:
    """One user ``.onnx`` file -> flat Flax params of ``MobileFaceNet``."""
    config = config_of(name)
    if len(files) != 1:
        raise ValueError(f"{source}: expected one .onnx file, got {sorted(files)}")
    ((fname, data),) = files.items()
    if Path(fname).suffix.lower() != ".onnx":
        raise ValueError(f"{source}: unknown weight format {Path(fname).suffix!r}; {name} converts an .onnx export")
    return to_flat(units_from_onnx(data, config, source), config)
