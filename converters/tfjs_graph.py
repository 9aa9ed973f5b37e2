"""Reader for TF.js graph models (``model.json`` + ``*.bin``), without TensorFlow.

``model.json`` holds the graph (``modelTopology.node``: TF NodeDefs as JSON)
and a ``weightsManifest``: groups of ``.bin`` shards that, concatenated in
order, hold every weight back to back in manifest order. A weight is stored as
its ``dtype`` (float32, int32, bool) or, when it has a ``quantization``
entry, as float16, or as uint8/uint16 codes with ``value = code * scale +
min``. The reader returns named numpy arrays and the nodes; any size mismatch
or unknown type is an error naming the file. :func:`check_shards` checks the
shard sizes against the manifest before anything is parsed.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


class TfjsFormatError(ValueError):
    """The model.json / .bin pair is malformed (names the file and the weight)."""


_STORED = {"float32": np.dtype("<f4"), "int32": np.dtype("<i4"), "bool": np.dtype("u1"),
           "float16": np.dtype("<f2"), "uint8": np.dtype("u1"), "uint16": np.dtype("<u2")}


@dataclasses.dataclass
class Node:
    name: str
    op: str
    inputs: list[str]  # data inputs ("name" or "name:k"); control inputs ("^x") dropped
    attr: dict[str, Any]

    def attr_list(self, key: str) -> list[int]:
        return [int(v) for v in self.attr.get(key, {}).get("list", {}).get("i", [])]

    def attr_str(self, key: str) -> str:
        raw = self.attr.get(key, {}).get("s")
        return base64.b64decode(raw).decode() if raw is not None else ""

    def attr_strs(self, key: str) -> list[str]:
        return [base64.b64decode(v).decode() for v in self.attr.get(key, {}).get("list", {}).get("s", [])]

    def attr_float(self, key: str, default: float = 0.0) -> float:
        return float(self.attr.get(key, {}).get("f", default))


@dataclasses.dataclass
class TfjsGraph:
    """A parsed TF.js graph model."""

    source: str
    nodes: dict[str, Node]
    weights: dict[str, np.ndarray]
    inputs: list[str]
    outputs: list[str]
    signature: dict[str, Any]

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if any(i.split(":")[0] == name for i in n.inputs)]


def read_weights(manifest: list[Mapping], shards: list[bytes], source: str) -> dict[str, np.ndarray]:
    """Decode the weights of a ``weightsManifest`` from its concatenated shard bytes."""
    buffer = b"".join(shards)
    out: dict[str, np.ndarray] = {}
    offset = 0
    for group in manifest:
        for spec in group["weights"]:
            name, shape, dtype = spec["name"], [int(d) for d in spec["shape"]], spec["dtype"]
            quant = spec.get("quantization")
            stored = quant["dtype"] if quant else dtype
            if stored not in _STORED or dtype not in _STORED:
                raise TfjsFormatError(f"{source}: weight {name!r} has unsupported dtype {dtype}/{stored}")
            count = int(np.prod(shape, dtype=np.int64))
            nbytes = count * _STORED[stored].itemsize
            if offset + nbytes > len(buffer):
                raise TfjsFormatError(f"{source}: weight {name!r} needs bytes {offset}..{offset + nbytes}, "
                                      f"the .bin shards hold {len(buffer)} (truncated?)")
            raw = np.frombuffer(buffer, _STORED[stored], count, offset).reshape(shape)
            offset += nbytes
            if quant and stored in ("uint8", "uint16"):
                # In double precision, then rounded once, as TF.js does (JS numbers are doubles).
                value = (raw.astype(np.float64) * float(quant["scale"]) + float(quant["min"])).astype(np.float32)
            elif quant and stored == "float16":
                value = raw.astype(np.float32)
            elif dtype == "bool":
                value = raw.astype(bool)
            else:
                value = raw.copy()
            if name in out:
                raise TfjsFormatError(f"{source}: weight {name!r} appears twice")
            out[name] = value
    if offset != len(buffer):
        raise TfjsFormatError(f"{source}: {len(buffer) - offset} bytes in the .bin shards are not described by the manifest")
    return out


def parse(model_json: bytes | str, shards: Mapping[str, bytes], source: str) -> TfjsGraph:
    """Parse a model.json text and its shards (``{path in manifest: bytes}``)."""
    try:
        spec = json.loads(model_json)
    except json.JSONDecodeError as e:
        raise TfjsFormatError(f"{source}: not valid JSON ({e})") from e
    if spec.get("format") not in ("graph-model", None) or "modelTopology" not in spec:
        raise TfjsFormatError(f"{source}: not a TF.js graph model (format={spec.get('format')!r})")
    manifest = spec.get("weightsManifest", [])
    blobs = []
    for group in manifest:
        for path in group["paths"]:
            if path not in shards:
                raise TfjsFormatError(f"{source}: weight shard {path!r} is missing")
            blobs.append(shards[path])
    weights = read_weights(manifest, blobs, source)
    nodes = {}
    for raw in spec["modelTopology"]["node"]:
        inputs = [i for i in raw.get("input", []) if not i.startswith("^")]
        nodes[raw["name"]] = Node(raw["name"], raw["op"], inputs, raw.get("attr", {}))
    for n in nodes.values():
        for i in n.inputs:
            if i.split(":")[0] not in nodes:
                raise TfjsFormatError(f"{source}: node {n.name!r} reads unknown node {i!r}")
        if n.op == "Const" and n.name not in weights:
            raise TfjsFormatError(f"{source}: constant {n.name!r} has no weight in the manifest")
    inputs = [n.name for n in nodes.values() if n.op == "Placeholder"]
    used = {i.split(":")[0] for n in nodes.values() for i in n.inputs}
    outputs = [n.name for n in nodes.values() if n.name not in used and n.op != "Const"]
    return TfjsGraph(source, nodes, weights, inputs, outputs, spec.get("signature", {}))


def load(model_json_path: str | Path) -> TfjsGraph:
    """Read ``model.json`` and the shards next to it."""
    path = Path(model_json_path)
    text = path.read_bytes()
    try:
        manifest = json.loads(text).get("weightsManifest", [])
    except json.JSONDecodeError as e:
        raise TfjsFormatError(f"{path}: not valid JSON ({e})") from e
    shards = {}
    for group in manifest:
        for p in group["paths"]:
            f = path.parent / p
            if not f.is_file():
                raise TfjsFormatError(f"{path}: weight shard {f} is missing")
            shards[p] = f.read_bytes()
    return parse(text, shards, str(path))


def check_shards(files: Mapping[str, bytes], source: str) -> None:
    """Shard bytes against the manifest, before parsing: a short or long .bin names itself."""
    json_name = _model_json_name(files, source)
    try:
        spec = json.loads(files[json_name])
    except json.JSONDecodeError as e:
        raise TfjsFormatError(f"{source}: {json_name} is not valid JSON ({e})") from e
    for group in spec.get("weightsManifest", []):
        want = 0
        for wspec in group["weights"]:
            stored = (wspec.get("quantization") or {}).get("dtype", wspec["dtype"])
            if stored not in _STORED:
                raise TfjsFormatError(f"{source}: weight {wspec['name']!r} has unsupported dtype {stored}")
            want += int(np.prod([int(d) for d in wspec["shape"]], dtype=np.int64)) * _STORED[stored].itemsize
        paths = group["paths"]
        missing = [p for p in paths if p not in files]
        if missing:
            raise TfjsFormatError(f"{source}: weight shard(s) {missing} missing")
        have = sum(len(files[p]) for p in paths)
        if have != want:
            raise TfjsFormatError(
                f"{source}: weight shard(s) {', '.join(paths)} hold {have} bytes, {json_name} describes {want} "
                f"({'truncated' if have < want else 'trailing bytes'}?)")


def _model_json_name(files: Mapping[str, bytes], source: str) -> str:
    jsons = [k for k in files if k.endswith(".json")]
    if len(jsons) != 1:
        raise TfjsFormatError(f"{source}: expected one model.json among {sorted(files)}")
    return jsons[0]


def graph_from_files(files: Mapping[str, bytes], source: str) -> TfjsGraph:
    """Parse the model.json among ``files`` (base name -> bytes) with its shards."""
    name = _model_json_name(files, source)
    return parse(files[name], {k: v for k, v in files.items() if k != name}, source)
