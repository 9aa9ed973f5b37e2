"""The built-in sample photos: the six demo group photos of the npm package ``@vladmandic/face-api``.

``sample_images()`` returns their paths in the cache
(``~/.cache/leam_jax/samples/faceapi-1.7.15/sample1.jpg`` .. ``sample6.jpg``, or under
``$LEAM_JAX_CACHE``). The first call extracts them from the package tarball, which
:mod:`leam_jax.weights.packages` fetches once with ``npm pack`` (the same tarball, checked against
the same pinned sha256, as the ``dlib_resnet_faceapi`` weights); later calls only check each cached
photo's sha256 and touch neither the tarball nor the network.
"""

from __future__ import annotations

import os
from pathlib import Path

from leam_jax.weights import manifest, packages

# sha256 of package/demo/sample<i>.jpg in @vladmandic/face-api 1.7.15.
SAMPLE_SHA256 = {
    "sample1.jpg": "8ecae4b267b2d3169e06e00c7dee97097aa2a94635d45216f7732a5f4943cb51",
    "sample2.jpg": "7d2b60ae6f13bf30f422e04df87451081a02c83de469056f25afb44b7000c691",
    "sample3.jpg": "8eb081c9efb14370fa94d9feab9e5fbeafd19a627491853a80c2bf67f7ffa936",
    "sample4.jpg": "729efa5923061d40eb4ed5f267a18cc7b8ba6f852bb2757b16d8b7e4937476fc",
    "sample5.jpg": "6d45095ebb182d8f975c0790e0e4eefd86fbb40609cf4b271776d92e12662938",
    "sample6.jpg": "9baad80f9d5e306fb9b8c0913d44445f1e95848df317530efb03d0934c57ba87",
}
MEMBER_DIR = "package/demo"
# The package-manifest entry whose pinned archive sha256 pins the tarball.
MANIFEST_ENTRY = "dlib_resnet_faceapi"


def samples_dir() -> Path:
    """Where the photos are kept (not created here)."""
    version = manifest.pinned(MANIFEST_ENTRY)["source"]["version"]
    root = Path(os.environ.get("LEAM_JAX_CACHE", Path.home() / ".cache" / "leam_jax"))
    return root / "samples" / f"faceapi-{version}"


def sample_images() -> list[Path]:
    """Paths of sample1.jpg .. sample6.jpg, extracted (once) from the verified face-api tarball.

    Raises:
        leam_jax.weights.packages.SourceError: the photos are not cached and the tarball cannot be
            fetched (no ``npm`` client, no registry access) or does not match its sha256.
    """
    out = samples_dir()
    paths = [out / name for name in SAMPLE_SHA256]
    stale = [p for p in paths if not p.is_file() or packages.sha256_file(p) != SAMPLE_SHA256[p.name]]
    if not stale:
        return paths
    try:
        archive = packages.pinned_archive(MANIFEST_ENTRY)
    except packages.SourceError as e:
        source = manifest.pinned(MANIFEST_ENTRY)["source"]
        raise packages.SourceError(
            f"the built-in sample photos come from the npm package {source['package']}@{source['version']} "
            f"and are not cached in {out}: {e}. Install Node.js/npm, or pass your own photos "
            "(--data_dir or --manifest)") from e
    out.mkdir(parents=True, exist_ok=True)
    for p in stale:
        data = packages.read_member(archive, f"{MEMBER_DIR}/{p.name}")
        got = packages.sha256_bytes(data)
        if got != SAMPLE_SHA256[p.name]:
            raise packages.SourceError(f"{archive}:{MEMBER_DIR}/{p.name}: sha256 {got}, expected {SAMPLE_SHA256[p.name]}")
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(p)
    return paths
