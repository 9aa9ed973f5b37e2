"""The manifests of pinned sha256s: the package's (read-only) and the user's local one.

``manifest.json`` ships inside the package and pins, for every model whose
weights come from a registry package, the package, version and archive, the
sha256 of the archive and of each file read from it, and the digest of the
converted params. It is never written at run time, and a missing, unreadable
or incomplete manifest is an error naming the file, never a reason to trust
a download.

Conversions of a user's own files are recorded in ``manifest.local.json``
beside the checkpoints they describe (:func:`leam_jax.weights.paths.checkpoint_dir`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from leam_jax.weights import paths
from leam_jax.weights.errors import WeightsError

PACKAGE_MANIFEST = Path(__file__).with_name("manifest.json")
LOCAL_NAME = "manifest.local.json"


class ManifestError(WeightsError):
    """A manifest is missing, unreadable, or pins nothing for a model it should."""


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise ManifestError(f"{path}: manifest not found") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ManifestError(f"{path}: unreadable manifest ({type(e).__name__}: {e})") from e
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a manifest (a JSON object of model entries)")
    return data


def read_pinned() -> dict:
    """The package manifest: {model name: entry}. Raises ManifestError naming the file if it is missing."""
    data = _read(PACKAGE_MANIFEST)
    if not data:
        raise ManifestError(f"{PACKAGE_MANIFEST}: the manifest pins no model")
    return data


def is_pinned(name: str) -> bool:
    return name in read_pinned()


def pinned(name: str) -> dict:
    """A registry model's complete entry: archive, member and converted-params sha256s."""
    entry = read_pinned().get(name)
    if entry is None:
        raise ManifestError(f"{PACKAGE_MANIFEST}: no entry for {name!r}; registry downloads are converted only "
                            "against pinned sha256s (add the entry: python -m converters NAME --pin)")
    source = entry.get("source") or {}
    members, shas = source.get("members") or [], source.get("member_sha256") or {}
    gaps = [k for k, v in (("converted_sha256", entry.get("converted_sha256")),
                           ("source.archive_sha256", source.get("archive_sha256"))) if not v]
    if not members or not all(shas.get(m) for m in members):
        gaps.append("source.member_sha256 of every member")
    if gaps:
        raise ManifestError(f"{PACKAGE_MANIFEST}: the entry for {name!r} pins no {', '.join(gaps)}")
    return entry


def local_path() -> Path:
    return paths.checkpoint_dir() / LOCAL_NAME


def read_local() -> dict:
    """The user's local manifest ({} before the first conversion of a user file)."""
    path = local_path()
    return _read(path) if path.exists() else {}


def record_local(name: str, entry: dict) -> None:
    """Record a conversion of a user's file in the local manifest (atomically)."""
    path = local_path()
    data = read_local()
    data[name] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def expected_digest(name: str) -> str:
    """The params digest a checkpoint ``name`` must have: pinned for registry models, else the local record."""
    if is_pinned(name):
        return pinned(name)["converted_sha256"]
    digest = read_local().get(name, {}).get("converted_sha256")
    if not digest:
        raise ManifestError(f"{local_path()}: no conversion of {name!r} recorded; convert your file: "
                            f"python -m converters {name} --source PATH")
    return digest
