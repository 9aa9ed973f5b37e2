"""The converted dlib ResNet against dlib itself (dlib-bin): embeddings, decisions, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core

pytestmark = [pytest.mark.weights, pytest.mark.dlib]

THRESHOLD = 0.6  # dlib's same-person distance threshold


def dlib_descriptors(recognizer, chips: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(recognizer.compute_face_descriptor(np.ascontiguousarray(c))) for c in chips])


def flax_descriptors(model, chips: np.ndarray) -> np.ndarray:
    embed = core.jit(lambda x: model.apply(model.params, x)[0])
    return np.asarray(embed(jnp.asarray(chips)))


@pytest.mark.faces
def test_embeddings_match_dlib_on_all_johns_chips(dlib_model, dlib_recognizer, johns_chips):
    chips, persons, _ = johns_chips
    assert len(chips) == 52
    ours, ref = flax_descriptors(dlib_model, chips), dlib_descriptors(dlib_recognizer, chips)
    err = np.abs(ours - ref).max()
    print(f"johns: max abs diff {err:.3e} over {chips.shape[0]} chips")
    assert err <= 1e-4


def test_embeddings_match_dlib_on_noise_chips(dlib_model, dlib_recognizer):
    rng = np.random.default_rng(1234)
    chips = rng.integers(0, 256, (10, 150, 150, 3), dtype=np.uint8)
    err = np.abs(flax_descriptors(dlib_model, chips) - dlib_descriptors(dlib_recognizer, chips)).max()
    print(f"noise: max abs diff {err:.3e}")
    assert err <= 1e-4


@pytest.mark.faces
def test_same_different_decisions_identical(dlib_model, dlib_recognizer, johns_chips):
    chips, persons, _ = johns_chips

    def decisions(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=-1)
        iu = np.triu_indices(len(e), 1)
        return d[iu] < THRESHOLD, d[iu]

    ours, d_ours = decisions(flax_descriptors(dlib_model, chips))
    ref, d_ref = decisions(dlib_descriptors(dlib_recognizer, chips))
    print(f"{ours.size} pairs, closest distance to the threshold {np.abs(d_ref - THRESHOLD).min():.4f}")
    np.testing.assert_array_equal(ours, ref)
    same = (np.array(persons)[:, None] == np.array(persons)[None])[np.triu_indices(len(persons), 1)]
    assert (ref == same).mean() > 0.95  # sanity: dlib itself verifies these people


@pytest.mark.faces
def test_input_gradient_matches_dlib_finite_differences(dlib_model, dlib_recognizer, johns_chips):
    """JAX d e_k / d pixel vs central differences of dlib's own descriptor (step 1 grey level)."""
    x = johns_chips[0][0]
    k, h = 3, 1
    g = np.asarray(jax.grad(lambda im: dlib_model.apply(dlib_model.params, im[None])[0][0, k])(jnp.asarray(x, jnp.float32)))
    mag = np.abs(g)
    mag[(x < h) | (x > 255 - h)] = 0
    picks = np.argsort(mag.ravel())[::-1][:400:16]  # 25 pixels among the 400 most influential
    rel = []
    for flat_i in picks:
        i = np.unravel_index(flat_i, x.shape)
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        fd = (dlib_descriptors(dlib_recognizer, xp[None])[0, k] - dlib_descriptors(dlib_recognizer, xm[None])[0, k]) / (2 * h)
        rel.append(abs(fd - g[i]) / max(abs(fd), abs(g[i])))
    rel = np.array(rel)
    print(f"FD check: {np.sum(rel <= 2e-2)}/{rel.size} pixels within 2e-2, median rel {np.median(rel):.2e}, max {rel.max():.2e}")
    assert np.sum(rel <= 2e-2) >= 20
    assert np.median(rel) <= 1e-2
