"""TF.js graph reader: weight decoding (float32, int32, float16, uint8/uint16 quantised) and failures."""

import json

import numpy as np
import pytest

from converters.tfjs_graph import TfjsFormatError, parse


def model(weights, nodes=None):
    nodes = nodes or [{"name": "x", "op": "Placeholder", "attr": {}}] + [
        {"name": w["name"], "op": "Const", "attr": {}} for w in weights
    ] + [{"name": "y", "op": "AddV2", "input": ["x", weights[0]["name"], "^x"], "attr": {}}]
    return json.dumps({"format": "graph-model", "modelTopology": {"node": nodes},
                       "weightsManifest": [{"paths": ["a.bin", "b.bin"], "weights": weights}]})


def test_decodes_every_storage_type():
    f32 = np.arange(6, dtype="<f4").reshape(2, 3)
    i32 = np.array([7, -8], "<i4")
    f16 = np.array([0.5, -1.25, 3.0], "<f2")
    u8 = np.array([0, 10, 255], "u1")
    u16 = np.array([0, 1000, 65535], "<u2")
    weights = [
        {"name": "f32", "shape": [2, 3], "dtype": "float32"},
        {"name": "i32", "shape": [2], "dtype": "int32"},
        {"name": "f16", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "u8", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.5}},
        {"name": "u16", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint16", "min": 2.0, "scale": 0.25}},
    ]
    blob = f32.tobytes() + i32.tobytes() + f16.tobytes() + u8.tobytes() + u16.tobytes()
    g = parse(model(weights), {"a.bin": blob[:10], "b.bin": blob[10:]}, "m.json")  # shards concatenate
    np.testing.assert_array_equal(g.weights["f32"], f32)
    np.testing.assert_array_equal(g.weights["i32"], i32)
    np.testing.assert_array_equal(g.weights["f16"], [0.5, -1.25, 3.0])
    np.testing.assert_allclose(g.weights["u8"], u8 * 0.5 - 1.0)
    np.testing.assert_allclose(g.weights["u16"], u16 * 0.25 + 2.0)
    assert g.inputs == ["x"] and g.outputs == ["y"]
    assert g.nodes["y"].inputs == ["x", "f32"]  # control inputs dropped


def test_truncated_extra_and_missing_shards_name_the_file():
    weights = [{"name": "w", "shape": [4], "dtype": "float32"}]
    blob = np.zeros(4, "<f4").tobytes()
    with pytest.raises(TfjsFormatError, match=r"m\.json: weight 'w' needs bytes 0\.\.16, .* hold 12"):
        parse(model(weights), {"a.bin": blob[:12], "b.bin": b""}, "m.json")
    with pytest.raises(TfjsFormatError, match="4 bytes in the .bin shards are not described"):
        parse(model(weights), {"a.bin": blob, "b.bin": b"\0" * 4}, "m.json")
    with pytest.raises(TfjsFormatError, match="weight shard 'b.bin' is missing"):
        parse(model(weights), {"a.bin": blob}, "m.json")
    with pytest.raises(TfjsFormatError, match="not valid JSON"):
        parse("{", {}, "m.json")
    bad = [{"name": "w", "shape": [1], "dtype": "complex64"}]
    with pytest.raises(TfjsFormatError, match="unsupported dtype"):
        parse(model(bad), {"a.bin": b"\0" * 8, "b.bin": b""}, "m.json")
