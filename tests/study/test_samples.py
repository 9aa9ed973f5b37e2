"""Built-in sample photos (leam_jax.study.samples): extracted from the pinned face-api tarball, checked
by sha256, served from the cache without the tarball or the network, and a clear error when
neither the cache nor the npm client can provide them.

Marked ``weights``: like the converted weights, the photos come from a registry package (the
same tarball as ``dlib_resnet_faceapi``), fetched once by the fixture when not cached.
"""

from __future__ import annotations

import subprocess

import pytest

from leam_jax.face import decode
from leam_jax.study import samples
from leam_jax.weights import packages

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def faceapi_archive():
    try:
        return packages.pinned_archive(samples.MANIFEST_ENTRY)
    except packages.SourceError as e:
        pytest.skip(f"face-api package unavailable: {e}")


def test_sample_images(tmp_path, monkeypatch, faceapi_archive):
    cache = tmp_path / "cache"
    npm_dir = cache / "sources" / "npm"
    npm_dir.mkdir(parents=True)
    link = npm_dir / faceapi_archive.name
    link.symlink_to(faceapi_archive)
    monkeypatch.setenv("LEAM_JAX_CACHE", str(cache))

    def no_client(*args, **kwargs):
        raise FileNotFoundError("npm")  # what subprocess.run raises when the client is not installed

    monkeypatch.setattr(subprocess, "run", no_client)

    paths = samples.sample_images()  # from the cached tarball, no client call
    assert [p.name for p in paths] == [f"sample{i}.jpg" for i in range(1, 7)]
    assert all(p.parent == cache / "samples" / "faceapi-1.7.15" for p in paths)
    for p in paths:
        assert packages.sha256_file(p) == samples.SAMPLE_SHA256[p.name]
        h, w, c = decode.read_rgb(p).shape
        assert w == 1920 and 1200 < h < 1600 and c == 3

    link.unlink()  # cached photos need neither the tarball nor the client
    assert samples.sample_images() == paths

    paths[2].write_bytes(b"not a jpeg")  # a damaged photo without a tarball: a clear error
    with pytest.raises(packages.SourceError, match=r"npm is not installed.*--data_dir"):
        samples.sample_images()

    link.symlink_to(faceapi_archive)  # with it: restored from the verified tarball
    assert samples.sample_images() == paths
    assert packages.sha256_file(paths[2]) == samples.SAMPLE_SHA256["sample3.jpg"]
