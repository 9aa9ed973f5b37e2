"""The batched face pipeline's parts against their oracles: the letterbox resize, the region blur of the
warps, the padded batch shapes, and a batch with bad files in it (synthetic networks, no weights)."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import batching
from leam_jax.face import decode, detection, scratch
from leam_jax.face import pipeline as pipeline_mod
from leam_jax.face.pipeline import FacePipeline

# --- the letterbox resize against the per-tap numpy loop it replaced --------------------------------


def reference_weights(n_in: int, n_out: int) -> np.ndarray:
    """[n_in, n_out] weights of jax.image.resize(linear, antialias) along one axis, dense."""
    inv_scale = n_in / n_out
    kernel_scale = max(inv_scale, 1.0)
    sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
    x = np.abs(sample[None, :] - np.arange(n_in)[:, None]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - x)
    total = weights.sum(axis=0, keepdims=True)
    weights = np.where(np.abs(total) > 1000 * np.finfo(np.float32).eps, weights / np.where(total != 0, total, 1), 0.0)
    inside = (sample >= -0.5) & (sample <= n_in - 0.5)
    return np.where(inside[None, :], weights, 0.0).astype(np.float32)


def reference_resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    """One axis resampled with reference_weights, one band tap at a time (the letterbox before sparse matrices)."""
    weights = reference_weights(x.shape[axis], n_out)
    nonzero = weights != 0
    lo = np.where(nonzero.any(0), nonzero.argmax(0), 0)
    width = int(nonzero.sum(0).max()) if nonzero.any() else 1
    x = np.moveaxis(x, axis, 0)
    out = np.zeros((n_out, *x.shape[1:]), np.float32)
    cols = np.arange(n_out)
    for k in range(width):
        j = np.minimum(lo + k, x.shape[0] - 1)
        wk = np.where(lo + k < x.shape[0], weights[j, cols], 0.0).astype(np.float32)
        out += wk.reshape(-1, *([1] * (x.ndim - 1))) * x[j]
    return np.moveaxis(out, 0, axis)


def reference_letterbox(image: np.ndarray, border: int = 0, size: int = detection.INPUT_SIZE) -> np.ndarray:
    image = np.pad(image, ((border, border), (border, border), (0, 0)))
    h, w = image.shape[:2]
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    resized = reference_resize_axis(reference_resize_axis(image.astype(np.float32), nh, 0), nw, 1)
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[oy:oy + nh, ox:ox + nw] = np.clip(resized, 0.0, 255.0)
    return canvas


# Same weights, applied in the same order: equal to float32 rounding (in fact bit for bit here).
LETTERBOX_ATOL = 1e-3


@pytest.mark.parametrize("shape", [(300, 451), (40, 30), (256, 100), (1000, 37), (3, 5), (256, 256)])
@pytest.mark.parametrize("border", [0, 7, "retry"])
def test_letterbox_equals_the_reference_resize(shape, border):
    image = np.random.default_rng(sum(shape)).integers(0, 256, (*shape, 3)).astype(np.uint8)
    k = int(round(pipeline_mod.PAD_RETRY_FRACTION * max(shape))) if border == "retry" else border
    canvas, lb = detection.letterbox(image, border=k)
    np.testing.assert_allclose(canvas, reference_letterbox(image, k), atol=LETTERBOX_ATOL)
    padded_lb = detection.letterbox(np.pad(image, ((k, k), (k, k), (0, 0))))[1]
    assert lb == padded_lb  # maps to the bordered image's pixels, as letterboxing the bordered image does
    n_in, n_out = shape[0], max(1, round((shape[0] + 2 * k) * lb.scale[1]))
    np.testing.assert_allclose(detection._resize_matrix(n_in, n_out, k).toarray(),
                               reference_weights(n_in + 2 * k, n_out).T[:, k:k + n_in], atol=1e-7)


def test_letterbox_is_the_same_from_a_reused_cast_buffer():
    """Large and small photos one after another on one thread (the float32 cast buffer reused)."""
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, shape).astype(np.uint8) for shape in ((900, 700, 3), (50, 80, 3), (700, 900, 3))]
    first = [detection.letterbox(im)[0] for im in images]
    for im, canvas in zip(images[::-1], first[::-1]):
        np.testing.assert_array_equal(detection.letterbox(im)[0], canvas)
    np.testing.assert_allclose(first[1], reference_letterbox(images[1], 0), atol=LETTERBOX_ATOL)


def test_preprocess_on_the_host_equals_the_device_op():
    """The numpy path gives the very float32 values of the jitted/eager one (XLA's reciprocal multiply)."""
    x = np.concatenate([np.arange(256, dtype=np.float32),
                        np.random.default_rng(0).uniform(0, 255, 200_000).astype(np.float32)])
    np.testing.assert_array_equal(detection.preprocess(x), np.asarray(detection.preprocess(jnp.asarray(x))))


@pytest.mark.faces
def test_letterbox_equals_the_reference_on_the_photos(faces_dir):
    worst = 0.0
    for s in ("wild_small", "orl_att"):
        for it in decode.list_people(faces_dir / s)[:: 1 if s == "wild_small" else 10]:
            image = decode.read_rgb(it.path)
            worst = max(worst, float(np.abs(detection.letterbox(image)[0] - reference_letterbox(image)).max()))
    print(f"\nletterbox vs the reference resize: max abs difference {worst:.2g} (of 0..255)")
    assert worst <= LETTERBOX_ATOL


# --- the warps' region blur against blurring the whole image -------------------------------------------


def full_blur_warp(image: np.ndarray, out_to_in: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The warp before the region blur: the whole image blurred when shrinking by more than 1.5."""
    scale = float(np.sqrt(abs(np.linalg.det(out_to_in[:, :2]))))
    src = cv2.GaussianBlur(image, (0, 0), 0.5 * scale) if scale > 1.5 else image
    return cv2.warpAffine(src, out_to_in, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def test_region_blur_warp_equals_the_whole_image_blur():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (240, 320, 3)).astype(np.uint8)
    image = cv2.addWeighted(noise, 0.5, cv2.GaussianBlur(noise, (0, 0), 4), 0.5, 0)
    cases = 0
    for size in ((192, 192), (256, 256), (150, 112)):
        for _ in range(40):
            side = rng.uniform(20, 700)  # shrink factors 0.1-4.7 for 150-256 px outputs
            centre = rng.uniform([-150, -150], [470, 390])  # inside, across the border, or off the image
            out_to_in = pipeline_mod._crop_to_image(centre, side, rng.uniform(-np.pi, np.pi), size[0])
            out_to_in[:, 1] *= size[0] / size[1]  # a non-square output covers the same crop
            np.testing.assert_array_equal(pipeline_mod._warp(image, out_to_in, size), full_blur_warp(image, out_to_in, size))
            cases += 1
    assert cases == 120
    # the thread's reused blur buffer is all zeros again after every warp (no pixels leak into the next photo)
    assert not scratch.held(pipeline_mod.BLUR_CANVAS).any()


def test_region_blur_into_a_reused_buffer_equals_a_fresh_one():
    """Photos of other sizes one after another on one thread: each warp as with a fresh zero array."""
    rng = np.random.default_rng(1)
    for shape in ((300, 200, 3), (120, 500, 3), (300, 200, 3), (64, 64, 3)):
        image = rng.integers(0, 256, shape).astype(np.uint8)
        out_to_in = pipeline_mod._crop_to_image(np.array([shape[1] / 2, shape[0] / 2]), 0.8 * min(shape[:2]), 0.3, 40)
        np.testing.assert_array_equal(pipeline_mod._warp(image, out_to_in, (40, 40)), full_blur_warp(image, out_to_in, (40, 40)))
        np.testing.assert_array_equal(pipeline_mod._warp(image[:, ::-1], out_to_in, (40, 40)),
                                      full_blur_warp(np.ascontiguousarray(image[:, ::-1]), out_to_in, (40, 40)))
    assert not scratch.held(pipeline_mod.BLUR_CANVAS).any()


# --- padded batch shapes ---------------------------------------------------------------------------------


def test_bucketed_calls_pad_to_a_few_shapes():
    assert [batching.bucket_size(n, 8) for n in (1, 2, 3, 4, 5, 8, 9)] == [1, 2, 4, 4, 8, 8, 8]
    traced = []

    @jax.jit
    def double(x):
        traced.append(x.shape[0])
        return x * 2

    for n in range(1, 10):
        x = np.arange(n * 3, dtype=np.float32).reshape(n, 3)
        np.testing.assert_array_equal(batching.run_bucketed(double, x, 4), x * 2)
    assert sorted(traced) == [1, 2, 4]  # one compilation per bucket, none per batch


# --- a batch with bad files, with synthetic networks ---------------------------------------------------


def fake_detector(params, x):
    """One confident face, 80 x 80 canvas pixels around the canvas centre, in every image."""
    i = (8 * 16 + 8) * 2  # 16x16 map, cell (8, 8): anchor at (136, 136)
    reg = jnp.zeros((x.shape[0], 896, 16)).at[:, i, :4].set(jnp.array([-8.0, -8.0, 80.0, 80.0]))
    reg = reg.at[:, i, 4:].set(jnp.array([-20.0, -10.0, 20.0, -10.0] + [0.0] * 8))  # eyes level
    return reg, jnp.full((x.shape[0], 896, 1), -10.0).at[:, i].set(5.0)


MESH = np.random.default_rng(0).uniform(60, 132, (468, 3)).astype(np.float32)


def fake_mesh(params, x):
    """A fixed point cloud in the middle of the crop, whatever it shows; face probability 0.9."""
    return jnp.broadcast_to(jnp.asarray(MESH), (x.shape[0], 468, 3)), jnp.full((x.shape[0],), 0.9)


@pytest.fixture
def synthetic_pipeline():
    return FacePipeline(detector=(fake_detector, None), mesh=(fake_mesh, None), batch_size=2)


def test_bad_files_in_a_batch_give_their_errors_and_the_others_come_out(synthetic_pipeline, tmp_path):
    rng = np.random.default_rng(1)
    cv2.imwrite(str(tmp_path / "good1.png"), rng.integers(0, 256, (200, 260, 3)).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "good2.png"), rng.integers(0, 256, (300, 240, 3)).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "tiny.png"), np.zeros((10, 12, 3), np.uint8))
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    names = ["good1.png", "empty.jpg", "text.jpg", "tiny.png", "missing.png", "good2.png"]
    results = synthetic_pipeline.read_many([tmp_path / n for n in names])
    assert len(results) == len(names)
    reasons = {}
    for name, r in zip(names, results):
        if isinstance(r, decode.ImageError):
            assert r.path.endswith(name)
            reasons[name] = r.reason
    assert list(reasons) == ["empty.jpg", "text.jpg", "tiny.png", "missing.png"]
    assert reasons["empty.jpg"] == "empty file" and reasons["text.jpg"] == "not a decodable image"
    assert reasons["tiny.png"].startswith("image too small for a face (12x10")
    assert reasons["missing.png"].startswith("cannot read file")
    for name in ("good1.png", "good2.png"):  # the same faces as reading the photo alone
        (alone,), (batched,) = synthetic_pipeline.read(tmp_path / name), results[names.index(name)]
        assert batched.path.endswith(name) and batched.score == alone.score
        for field in ("box", "mesh", "image_to_frame", "frame", "labels"):
            np.testing.assert_array_equal(getattr(batched, field), getattr(alone, field))


def test_faces_many_keeps_errors_in_place_and_rejects_arrays_without_a_face(synthetic_pipeline):
    good = np.random.default_rng(2).integers(0, 256, (120, 100, 3)).astype(np.uint8)
    given = decode.ImageError("given.png", "decoded elsewhere")
    out = synthetic_pipeline.faces_many([good, given, good[..., 0], good[:20]], ["a.png", "given.png", "gray.png", "low.png"])
    assert isinstance(out[0], list) and out[0][0].path == "a.png"
    assert out[1] is given
    assert out[2].reason.startswith("not an RGB image") and out[3].reason.startswith("image too small")
    with pytest.raises(ValueError, match="paths"):
        synthetic_pipeline.faces_many([good], ["a.png", "b.png"])
    assert synthetic_pipeline.faces_many([]) == [] and synthetic_pipeline.read_many([]) == []
