"""The protection run's measurements against brute-force oracles."""

import cv2
import numpy as np

from leam_jax.protect import evaluate


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_thresholds_accept_at_most_far_of_other_peoples_references():
    rng = np.random.default_rng(0)
    persons = np.repeat(np.array([f"p{i}" for i in range(12)]), 4)
    centres = unit(rng.normal(size=(12, 16)))
    emb = unit(np.repeat(centres, 4, axis=0) + 0.7 * rng.normal(size=(48, 16))).astype(np.float32)
    thr = evaluate.thresholds(emb, persons, fars=(0.01, 0.1))
    refs = {p: unit(emb[persons == p].mean(0, keepdims=True))[0] for p in np.unique(persons)}
    impostor = np.array([e @ refs[q] for e, p in zip(emb, persons) for q in refs if q != p])
    for far, t in thr.items():  # float32 matmuls differ in the last bits from this loop's
        assert np.mean(impostor > t + 1e-6) <= far
        assert abs(t - np.sort(impostor)[::-1][int(np.floor(far * impostor.size))]) < 1e-6
    assert abs(evaluate.impostor_spread(emb, persons) - np.std(impostor)) < 1e-6


def test_a_png_holds_exactly_the_quantised_photo_measured_in_memory():
    """Why the non-product variants are measured in memory: the lossless file decodes to the same bytes."""
    photo = np.random.default_rng(1).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR))
    back = cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(back, photo)


def test_transforms_keep_the_geometry_and_change_the_pixels():
    photo = np.random.default_rng(2).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    for name in ("jpeg90", "jpeg75", "resize0.5", "blur1"):
        out = evaluate.transform(photo, name)
        assert out.shape == photo.shape and out.dtype == np.uint8 and np.any(out != photo)
    np.testing.assert_array_equal(evaluate.transform(photo, "blur1"), cv2.GaussianBlur(photo, (0, 0), 1.0))


def test_bootstrap_resamples_people_not_photos():
    persons = np.array(["a"] * 9 + ["b"])
    values = np.array([1.0] * 9 + [0.0])
    mean, lo, hi = evaluate.bootstrap(values, persons, seed=0)
    assert abs(mean - 0.9) < 1e-6 and lo == 0.0 and hi == 1.0  # two people: a draw of b alone, or of a alone
