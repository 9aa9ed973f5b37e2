"""Alignment math against numpy/cv2 oracles and against dlib's get_face_chip."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax.face.alignment import (
    dlib_chip_details,
    dlib_chip_to_image,
    dlib_face_chip,
    invert_affine,
    similarity_transform,
    warp_affine,
)


def random_similarity(rng):
    angle, scale = rng.uniform(-0.6, 0.6), rng.uniform(0.3, 3.0)
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[scale * c, -scale * s, rng.uniform(-50, 50)], [scale * s, scale * c, rng.uniform(-50, 50)]])


def apply(a, pts):
    return pts @ a[:, :2].T + a[:, 2]


def test_similarity_transform_recovers_exact_transform():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = random_similarity(rng)
        src = rng.uniform(0, 200, (5, 2))
        np.testing.assert_allclose(similarity_transform(src, apply(a, src)), a, atol=1e-9)


def test_similarity_transform_least_squares_and_no_reflection():
    rng = np.random.default_rng(1)
    src = rng.uniform(0, 100, (7, 2))
    dst = src * np.array([1.0, -1.0])  # a mirror image: best proper similarity, never a reflection
    a = similarity_transform(src, dst)
    assert np.linalg.det(a[:, :2]) > 0
    with pytest.raises(ValueError, match="matching"):
        similarity_transform(src, dst[:3])


def test_invert_affine():
    a = random_similarity(np.random.default_rng(2))
    pts = np.random.default_rng(3).uniform(0, 100, (4, 2))
    np.testing.assert_allclose(apply(invert_affine(a), apply(a, pts)), pts, atol=1e-9)


def test_warp_affine_matches_cv2_bilinear():
    rng = np.random.default_rng(4)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (90, 110, 3)).astype(np.float32), (5, 5), 2)
    out_to_in = np.array([[0.7, -0.2, 20.0], [0.2, 0.7, 10.0]])
    ours = np.asarray(jax.jit(warp_affine, static_argnums=2)(img, out_to_in, (64, 72)))
    ref = cv2.warpAffine(img, out_to_in, (72, 64), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    # cv2 quantises sampling positions to 1/32 px; interior agrees to that precision.
    assert np.abs(ours[2:-2, 2:-2] - ref[2:-2, 2:-2]).max() < 0.6


def five_points(rng):
    base = np.array([[120, 80], [100, 82], [50, 80], [70, 82], [85, 120]], float)
    return np.round(base * rng.uniform(0.7, 1.1) + rng.normal(0, 3, (5, 2)) + rng.uniform(0, 30, 2))


def to_dlib_shape(dlib, pts):
    return dlib.full_object_detection(dlib.rectangle(0, 0, 200, 200), [dlib.point(int(x), int(y)) for x, y in pts])


@pytest.mark.dlib
def test_chip_details_match_dlib(dlib):
    rng = np.random.default_rng(5)
    for _ in range(25):
        pts = five_points(rng)
        size, padding = int(rng.choice([150, 112, 200])), float(rng.choice([0.25, 0.2, 0.0]))
        ref = dlib.get_face_chip_details(to_dlib_shape(dlib, pts), size, padding)
        ours = dlib_chip_details(pts, size, padding)
        r = ref.rect
        np.testing.assert_allclose(ours["center"], [(r.left() + r.right()) / 2, (r.top() + r.bottom()) / 2], atol=1e-9)
        np.testing.assert_allclose([ours["width"], ours["height"]], [r.width(), r.height()], atol=1e-9)
        assert abs(ours["angle"] - ref.angle) < 1e-12


@pytest.mark.dlib
def test_chip_pixels_match_dlib_get_face_chip(dlib):
    """Same pixels as dlib when it samples the image directly (face side < 2x chip)."""
    rng = np.random.default_rng(6)
    img = cv2.GaussianBlur(rng.integers(0, 256, (220, 240, 3)).astype(np.uint8), (5, 5), 2)
    for _ in range(5):
        pts = five_points(rng)
        ref = dlib.get_face_chip(img, to_dlib_shape(dlib, pts), 150, 0.25).astype(np.int32)
        # dlib truncates to uint8; floor with a hair of slack for float32 rounding.
        ours = np.floor(np.asarray(dlib_face_chip(img, pts)) + 1e-3).astype(np.int32)
        diff = np.abs(ours - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01


@pytest.mark.dlib
@pytest.mark.faces
@pytest.mark.weights
def test_real_photos_through_dlib_landmarks(dlib, dlib_landmarker, dlib_model, dlib_recognizer, faces_dir):
    """dlib HOG + 5 points on wild photos: geometry identical; chips identical where dlib
    needs no image pyramid; with a pyramid (large faces) dlib anti-aliases first and the
    descriptors still agree closely."""
    from leam_jax.face import decode

    detector, predictor = dlib_landmarker
    exact, approx = [], []
    for item in decode.list_people(faces_dir / "wild_small"):
        img = decode.read_rgb(item.path)
        dets = detector(img, 1)
        assert dets, f"dlib found no face in {item.path}"
        shape = predictor(img, dets[0])
        pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        ref = dlib.get_face_chip_details(shape, 150, 0.25)
        ours = dlib_chip_details(pts, 150, 0.25)
        assert abs(ours["width"] - ref.rect.width()) < 1e-9 and abs(ours["angle"] - ref.angle) < 1e-12
        chip_ref = dlib.get_face_chip(img, shape, 150, 0.25)
        chip = np.floor(np.asarray(dlib_face_chip(img, pts)) + 1e-3).clip(0, 255).astype(np.uint8)
        dist = np.linalg.norm(np.asarray(dlib_recognizer.compute_face_descriptor(chip_ref)) - np.asarray(dlib_model.embed(chip[None])[0]))
        (exact if ours["width"] < 2 * 150 else approx).append(dist)
    print(f"descriptor distance ours vs dlib chip: direct sampling max {max(exact):.4f} (n={len(exact)}), "
          f"pyramid cases max {max(approx):.4f} (n={len(approx)})")
    assert len(exact) >= 3 and max(exact) < 2e-3
    assert max(approx) < 0.15


def test_chip_to_image_maps_template_onto_points():
    """The chip's template points land on the image points for an exact similarity."""
    from leam_jax.face.alignment import DLIB_5PT_TEMPLATE

    a = random_similarity(np.random.default_rng(7))
    tpl = (0.25 + DLIB_5PT_TEMPLATE) / 1.5 * 150
    pts = apply(a, tpl)
    m = dlib_chip_to_image(pts, 150, 0.25)
    # dlib's chip centre (74.5, 74.5) is the image of (75, 75), and its pixel
    # grid is scaled by k = (150 s - 1) / (149 s) relative to the similarity.
    s_ = np.hypot(*a[:, 0])
    k = (150 * s_ - 1) / (149 * s_)
    np.testing.assert_allclose(apply(m, tpl), apply(a, 75.0 + k * (tpl - 74.5)), atol=1e-9)


def test_frame_to_model_maps_template_onto_template():
    from leam_jax.face.alignment import (
        analysis_template,
        compose_affine,
        five_point_template,
        frame_to_model,
        image_to_template,
    )

    rng = np.random.default_rng(8)
    a = random_similarity(rng)
    pts = apply(a, analysis_template() * 0.7 + 20)  # some face in some image
    to_frame = image_to_template(pts, analysis_template())
    to_arcface = image_to_template(pts, five_point_template(112))
    f2m = frame_to_model(to_frame, to_arcface)
    np.testing.assert_allclose(apply(f2m, analysis_template()), five_point_template(112), atol=1e-9)
    np.testing.assert_allclose(compose_affine(to_frame, invert_affine(to_frame)), np.eye(2, 3), atol=1e-12)


def test_map_warp_round_trip_keeps_mass_in_face_box():
    """A map in a 112 model crop, warped into the 256 analysis frame and back."""
    from leam_jax.face.alignment import (
        analysis_template,
        five_point_template,
        frame_to_model,
        image_to_template,
        warp_map,
    )

    rng = np.random.default_rng(9)
    yy, xx = np.mgrid[:112, :112]
    box = np.zeros((112, 112), bool)
    box[20:100, 15:97] = True  # the face box of the 112 crop
    m = np.exp(-(((xx - 56) / 18.0) ** 2 + ((yy - 70) / 22.0) ** 2) / 2) * box
    m = (m / m.sum()).astype(np.float32)
    pts = apply(random_similarity(rng), analysis_template())
    f2m = frame_to_model(image_to_template(pts, analysis_template()), image_to_template(pts, five_point_template(112)))
    in_frame = warp_map(jnp.asarray(m), f2m, (256, 256))  # out = frame, in = model
    back = np.asarray(warp_map(in_frame, invert_affine(f2m), (112, 112)))
    np.testing.assert_allclose(np.asarray(in_frame).sum(), 1.0, rtol=1e-5)
    assert back[box].sum() / back.sum() >= 0.99
    assert np.abs(back - m).sum() < 0.1  # total variation after a round trip
