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
rule of ``converters.mapping.TRANSFORMS``. The .pth file is read by
``converters.torch_state_dict`` and checked key by key against
``torch_shapes()``; the .onnx export is walked by ``converters.onnx_graph``
from its input (Conv [+ BatchNormalization], PRelu, Add, BatchNormalization,
Flatten/Reshape, Gemm or MatMul + Add [+ BatchNormalization]), so tensor
names do not matter, and any float initializer it did not use is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converters.folding import affine, fold
from converters.mapping import TRANSFORMS
from converters.onnx_graph import OnnxGraph, bn_unit, conv_unit, linear_unit, prelu_unit
from converters.torch_state_dict import bn_params, check_keys, read_state_dict
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
        ("fc", "weight", "fc/kernel", f"linear_nchw_flatten_{model.FINAL_SIZE}x{model.FINAL_SIZE}"),
        ("fc", "bias", "fc/bias", "identity"),
    ]
    return rows


# --- reader (a): PyTorch state dict (converters.torch_state_dict) ----------------


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


def units_from_state_dict(sd: Mapping[str, np.ndarray], depth: int, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Strictly check the state dict against ``torch_shapes`` and fold it into units."""
    check_keys(sd, torch_shapes(depth), source, f"iresnet{depth}")

    def bn(m: str) -> tuple:
        return bn_params(sd, m, BN_EPS)

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


def units_from_onnx(data: bytes, depth: int, source: str) -> dict[str, dict[str, np.ndarray]]:
    """Walk an ONNX export of IResNet from its input and fold it into units."""
    g = OnnxGraph(data, source)
    out: dict[str, dict[str, np.ndarray]] = {}
    w0 = model.WIDTHS[0]
    t, out["conv1"] = conv_unit(g, g.input, "conv1", 3, w0, 3, 1)
    t, out["prelu"] = prelu_unit(g, t, "prelu", w0)
    for p, cin, cout, stride in block_prefixes(depth):
        x = t
        y, out[f"{p}.bn1"] = bn_unit(g, x, f"{p}.bn1", cin)
        y, out[f"{p}.conv1"] = conv_unit(g, y, f"{p}.conv1", cin, cout, 3, 1)
        y, out[f"{p}.prelu"] = prelu_unit(g, y, f"{p}.prelu", cout)
        y, out[f"{p}.conv2"] = conv_unit(g, y, f"{p}.conv2", cout, cout, 3, stride)
        skip = x
        if stride != 1 or cin != cout:
            skip, out[f"{p}.downsample"] = conv_unit(g, x, f"{p}.downsample", cin, cout, 1, stride)
        add = g.next(y, ("Add",), f"{p} residual add")
        if sorted(g.name(i) for i in add.input) != sorted((g.name(y), g.name(skip))):
            raise ValueError(f"{source}: Add {add.name!r} ({p}) does not add the main path and the skip path")
        t = add.output[0]
    c = model.WIDTHS[-1]
    t, out["bn2"] = bn_unit(g, t, "bn2", c)
    t = g.flatten(t, c * model.FINAL_SIZE**2)
    t, out["fc"] = linear_unit(g, t, "fc + features", c * model.FINAL_SIZE**2, model.EMBEDDING_DIM)
    g.check_output(t)
    g.check_all_initializers_used()
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
