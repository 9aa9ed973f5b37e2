"""Mapping rows -> Flax arrays: the transform rules in one place, and a strict table application.

Every converter's mapping table names, per row, the source array, the Flax
key it fills and one rule of :data:`TRANSFORMS`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np


def _linear_nchw_flatten(side: int):
    """torch ``fc.weight`` [O, C*side*side] reads a (C, H, W) flatten; Flax reads (H, W, C) rows of [H*W*C, O]."""

    def rule(w: np.ndarray) -> np.ndarray:
        o, n = w.shape
        c = n // (side * side)
        return np.ascontiguousarray(w.reshape(o, c, side, side).transpose(2, 3, 1, 0).reshape(side * side * c, o))

    return rule


def _depthwise(a: np.ndarray) -> np.ndarray:
    if a.ndim != 4 or a.shape[3] != 1:
        raise ValueError(f"depthwise kernel {a.shape}: only channel multiplier 1 is supported")
    return np.ascontiguousarray(np.transpose(a, (0, 1, 3, 2)))


TRANSFORMS = {
    # TF and Flax both keep conv kernels HWIO, and a TF MatMul kernel [in, out] is a Linear kernel.
    "identity": lambda a: np.ascontiguousarray(a),
    # PyTorch / ONNX / dlib conv [O, I/groups, kh, kw] -> [kh, kw, I/groups, O]: plain, grouped, depthwise.
    "oihw_to_hwio": lambda a: np.ascontiguousarray(np.transpose(a, (2, 3, 1, 0))),
    # PyTorch Linear [out, in] -> [in, out].
    "linear_oi_to_io": lambda a: np.ascontiguousarray(a.T),
    # IResNet's fc after its 7x7 feature map.
    "linear_nchw_flatten_7x7": _linear_nchw_flatten(7),
    # TF DepthwiseConv2dNative [h, w, C, 1] -> grouped nnx.Conv [h, w, 1, C].
    "depthwise_hwc1_to_hw1c": _depthwise,
    # TF.js Prelu alpha [1, 1, C] -> [C].
    "prelu_11c_to_c": lambda a: np.ascontiguousarray(a.reshape(-1)),
    # face-api scales the input by 1/255, DlibResNet by 1/256: the factor goes into the first conv (faceapi_dlib).
    "fold_255_to_256": lambda a: np.ascontiguousarray(a.astype(np.float64) * (256.0 / 255.0)).astype(np.float32),
}


def apply_mapping(weights: Mapping[str, np.ndarray], table: Iterable[tuple[str, str, str]], names: set[str],
                  target: Mapping[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Fill Flax params from a mapping table of rows (weight name, Flax key, transform rule).

    Strict both ways: every weight in ``names`` must have a row, every row a
    weight and a Flax parameter of the same shape (``target``), and every
    parameter a row.
    """
    table = list(table)
    used = [name for name, _, _ in table]
    if sorted(used) != sorted(names):
        extra, missing = sorted(names - set(used)), sorted(set(used) - names)
        raise ValueError(f"{source}: weight constants not in the mapping table {extra}; table rows without a constant {missing}")
    flat: dict[str, np.ndarray] = {}
    for name, key, rule in table:
        value = TRANSFORMS[rule](weights[name]).astype(np.float32)
        if key not in target:
            raise ValueError(f"{source}: mapping row {name!r} -> {key!r}: no such Flax parameter")
        if tuple(value.shape) != target[key]:
            raise ValueError(f"{source}: {name!r} gives {key} shape {value.shape}, the model has {target[key]}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: {name!r} holds non-finite values")
        flat[key] = value
    missing = sorted(set(target) - set(flat))
    if missing:
        raise ValueError(f"{source}: Flax parameters with no mapping row: {missing}")
    return flat
