"""The photo side of protection: regions, the differentiable model views and the masks, against the face
pipeline's own (cv2) warps, finite differences and exact counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax.face import decode
from leam_jax.face.pipeline import TEMPLATES, FacePipeline
from leam_jax.protect import photos
from leam_jax.study.inputs import Source

TEMPLATE_NAMES = ("dlib150", "arcface112", "square224")


@pytest.fixture(scope="module")
def pipeline():
    return FacePipeline()


@pytest.fixture(scope="module")
def wild(faces_dir, pipeline):
    """A large in-the-wild photo (the models shrink its face: the anti-aliased path) and a small ORL one."""
    out = []
    for rel in ("wild_small/biden/biden.jpg", "orl_att/s1/1.pgm"):
        path = str(faces_dir / rel)
        out += photos.prepare_photo(pipeline, Source(path, rel.split("/")[1]), TEMPLATE_NAMES, aligned=False,
                                    all_faces=False, max_pixels=decode.DEFAULT_MAX_PIXELS)
    return out


def test_region_holds_every_model_input_and_pastes_back(wild):
    for pf in wild:
        x0, y0, x1, y1 = pf.box
        assert 0 <= x0 < x1 <= pf.photo.shape[1] and 0 <= y0 < y1 <= pf.photo.shape[0]
        assert pf.side in photos.BUCKETS and max(x1 - x0, y1 - y0) <= pf.side
        np.testing.assert_array_equal(pf.paste(pf.region()), pf.photo)
        assert pf.footprint().sum() > 0 and not pf.footprint()[y1 - y0:, :].any()


def test_the_model_view_of_the_region_is_what_the_face_pipeline_shows_the_model(wild):
    """JAX blur + warp of the region against cv2's blur + warp of the whole photo (FacePipeline.model_input)."""
    for pf in wild:
        region = jnp.asarray(pf.region(), jnp.float32)[None]
        for t in TEMPLATE_NAMES:
            ours = np.asarray(photos.model_view(t, pf.side)(region, jnp.asarray(pf.model_affines[t])[None]))[0]
            ref = pf.crops[t].astype(np.float32)
            # Where the template reaches past the photo, cv2 blends with its black border and JAX gives 0:
            # compare the pixels sampled at least 3 px inside the photo (cv2 also rounds to uint8).
            s = TEMPLATES[t][0]
            ys, xs = np.mgrid[0:s, 0:s].astype(np.float64)
            sx, sy = photos.apply_affine(pf.model_affines[t].astype(np.float64), xs, ys)
            x0, y0, x1, y1 = pf.box
            px, py = sx + x0, sy + y0
            h, w = pf.photo.shape[:2]
            inner = (px >= 3) & (py >= 3) & (px <= w - 4) & (py <= h - 4)
            diff = np.abs(ours - ref)[inner]
            assert inner.mean() > 0.5 and diff.mean() < 0.6 and diff.max() < 3.0, (pf.path, t, diff.mean(), diff.max())


def test_model_view_gradient_matches_finite_differences():
    """Through the blur and the warp, in float64, for a shrinking view (blur on) and an enlarging one."""
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        region = jnp.asarray(rng.uniform(0, 255, (1, 128, 128, 3)))
        for t, scale in (("arcface112", 1.0), ("arcface112", 0.8)):
            side = 128 if scale == 1.0 else 384
            reg = region if side == 128 else jnp.asarray(rng.uniform(0, 255, (1, side, side, 3)))
            s = (side - 8) / TEMPLATES[t][0]
            a = jnp.asarray([[[s, 0.1, 3.0], [-0.1, s, 4.0]]])
            view = photos.model_view(t, side)
            w = jnp.asarray(rng.normal(size=(1, 112, 112, 3)))
            f = lambda x, view=view, a=a, w=w: jnp.sum(view(x, a) * w)  # noqa: E731
            g = jax.grad(f)(reg)
            d = jnp.asarray(rng.normal(size=reg.shape))
            h = 1e-3
            fd = (f(reg + h * d) - f(reg - h * d)) / (2 * h)
            assert float(jnp.sum(g * d)) == pytest.approx(float(fd), rel=1e-6)
            assert (photos.blur_radius(side, t) > 0) == (side == 384)  # the shrinking view is blurred


@pytest.mark.parametrize("kind", photos.MASK_KINDS)
def test_every_mask_kind_has_exactly_the_count_inside_the_face_pixels(wild, kind):
    pf = wild[1]
    foot = pf.footprint()
    rng = np.random.default_rng(1)
    frame_map = rng.uniform(size=(256, 256)).astype(np.float32)
    for p in (1.0, 10.0, 25.0):
        m = photos.mask(kind, pf, p, seed=0, leam_map=frame_map, gradcam_map=frame_map)
        assert m.shape == foot.shape and not (m & ~foot).any()
        assert m.sum() == (foot.sum() if kind == "full" else photos.mask_count(foot, p))
    again = photos.mask(kind, pf, 10.0, seed=0, leam_map=frame_map, gradcam_map=frame_map)
    np.testing.assert_array_equal(again, photos.mask(kind, pf, 10.0, seed=0, leam_map=frame_map,
                                                     gradcam_map=frame_map))


def test_leam_masks_take_the_top_of_the_map_and_parser_masks_the_critical_region(wild):
    pf = wild[0]
    frame_map = np.zeros((256, 256), np.float32)
    frame_map[100:140, 60:200] = 1.0  # an eye band
    m = photos.mask("leam", pf, 1.0, seed=0, leam_map=frame_map)
    warped = photos.frame_to_region(pf, frame_map)
    assert warped[m].min() >= warped[pf.footprint() & ~m].max()
    region = photos.parser_region(pf) & pf.footprint()
    k = photos.mask_count(pf.footprint(), 1.0)
    assert region.sum() > k  # the parser's eyes, brows and nose hold more than 1% of the face pixels
    parser = photos.mask("parser", pf, 1.0, seed=0)
    assert (parser & ~region).sum() == 0
