"""The person-contrastive targets (population, identification) and the gallery, against
numpy oracles and per-image finite differences, on a tiny model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core
from tests.core.test_core import np_loo, np_unit
from tests.references.tiny_models import SIZE, nnx_model

RNG = np.random.default_rng(7)
IMAGES = jnp.asarray(RNG.uniform(0, 255, (7, SIZE, SIZE, 3)), jnp.float32)
PERSONS = np.array([0, 0, 1, 1, 1, 2, 3])  # persons 2 and 3 have a single image
TAPS = ("c1", "c2", "c3")


def np_gallery(emb, ids, num_people):
    e = np_unit(np.asarray(emb, np.float64))
    return np.stack([np_unit(e[ids == p].mean(0)) if (ids == p).any() else np.zeros(e.shape[1])
                     for p in range(num_people)])


def np_scores(emb, refs, gallery, ids, target, tau=core.DEFAULT_TEMPERATURE):
    """The spec's formulas, one image at a time."""
    e = np_unit(np.asarray(emb, np.float64))
    out = []
    for i in range(len(e)):
        if not np.any(refs[i]):
            out.append(np.linalg.norm(emb[i]))  # no other image of the person: 'self'
            continue
        own = e[i] @ np_unit(refs[i])
        present = [q for q in range(len(gallery)) if np.any(gallery[q]) and q != ids[i]]
        if target == "population":
            out.append(own - e[i] @ np_unit(np.sum([gallery[q] for q in present], 0)))
        else:
            logits = np.array([own] + [e[i] @ gallery[q] for q in present]) / tau
            out.append(logits[0] - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    return np.array(out)


def _inputs(num_people=4):
    emb = RNG.normal(size=(len(PERSONS), 6)).astype(np.float32)
    refs, _ = np_loo(emb, PERSONS)
    return emb, refs, np_gallery(emb, PERSONS, num_people)


def test_person_gallery_equals_numpy_and_skips_invalid_rows():
    emb, _, gallery = _inputs(num_people=5)  # person 4 has no image: a zero row
    g, counts = jax.jit(core.person_gallery, static_argnames="num_people")(
        emb, jnp.asarray(PERSONS), num_people=5)
    np.testing.assert_allclose(g, gallery, atol=1e-6)
    np.testing.assert_array_equal(counts, [2, 3, 1, 1, 0])
    valid = jnp.asarray(PERSONS != 3)
    g2, counts2 = core.person_gallery(emb, jnp.asarray(PERSONS), num_people=5, valid=valid)
    assert not np.any(np.asarray(g2)[3]) and counts2[3] == 0


@pytest.mark.parametrize("target", core.GALLERY_TARGETS)
def test_scores_equal_numpy_with_a_given_gallery(target):
    emb, refs, gallery = _inputs(num_people=5)
    gallery[4] = np_unit(RNG.normal(size=6))  # a person of the run who is not in this batch
    got = core.target_scores(jnp.asarray(emb), target=target, references=jnp.asarray(refs, jnp.float32),
                             gallery=jnp.asarray(gallery, jnp.float32), person_ids=jnp.asarray(PERSONS))
    np.testing.assert_allclose(got, np_scores(emb, refs, gallery, PERSONS, target), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", core.GALLERY_TARGETS)
def test_batch_gallery_is_the_default(target):
    emb, refs, gallery = _inputs()
    implicit = core.target_scores(jnp.asarray(emb), target=target, person_ids=jnp.asarray(PERSONS), num_people=4)
    np.testing.assert_allclose(implicit, np_scores(emb, refs, gallery, PERSONS, target), rtol=1e-5, atol=1e-5)


def test_identification_is_a_log_probability():
    emb, refs, gallery = _inputs()
    s = np.asarray(core.target_scores(jnp.asarray(emb), target="identification", person_ids=jnp.asarray(PERSONS),
                                      num_people=4))
    has = np.any(refs, axis=1)
    assert np.all(s[has] <= 1e-6)  # a log-probability


@pytest.mark.parametrize("target", core.GALLERY_TARGETS)
def test_tap_gradients_match_per_image_finite_differences(target):
    """Each image's score depends on its own activations only (the gallery and references are
    constants), so the one-vjp gradient of row i equals a finite difference that moves row i alone."""
    with jax.enable_x64(True):
        apply_fn, params = nnx_model(seed=5)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        x = jnp.asarray(IMAGES, jnp.float64)
        emb = np.asarray(apply_fn(params, x)[0])
        refs, _ = np_loo(emb, PERSONS)
        gallery = jnp.asarray(np_gallery(emb, PERSONS, 4))
        score = lambda e: core.target_scores(e, target=target, references=jnp.asarray(refs), gallery=gallery,
                                             person_ids=jnp.asarray(PERSONS))
        _, _, acts, grads = core.tap_gradients(apply_fn, params, x, score, taps=TAPS)
        rng = np.random.default_rng(2)
        for t in TAPS:
            for i in (0, 3, 5):
                v = np.zeros(acts[t].shape)
                v[i] = rng.normal(size=acts[t].shape[1:])
                f = lambda eps, t=t, v=v: np.asarray(score(apply_fn(params, x, {t: eps * jnp.asarray(v)})[0]))
                fd = (f(1e-5) - f(-1e-5)) / 2e-5
                assert np.allclose(np.delete(fd, i), 0.0, atol=1e-8), "another image's score moved"
                analytic = float(jnp.sum(grads[t][i] * v[i]))
                assert abs(fd[i] - analytic) <= 1e-6 * max(abs(fd[i]), abs(analytic), 1e-3), (t, i, fd[i], analytic)


@pytest.mark.parametrize("target", core.GALLERY_TARGETS)
def test_leam_maps_and_runner_with_a_gallery(target):
    apply_fn, params = nnx_model()
    emb = np.asarray(apply_fn(params, IMAGES)[0])
    refs, has = np_loo(emb, PERSONS)
    gallery = jnp.asarray(np_gallery(emb, PERSONS, 4), jnp.float32)
    kw = dict(target=target, references=jnp.asarray(refs, jnp.float32), person_ids=jnp.asarray(PERSONS),
              gallery=gallery, taps=TAPS)
    direct = core.leam_maps(apply_fn, params, IMAGES, **kw)
    np.testing.assert_array_equal(direct.used_self, ~has)
    np.testing.assert_allclose(direct.scores, np_scores(emb, refs, np.asarray(gallery), PERSONS, target),
                               rtol=1e-4, atol=1e-5)
    runner = core.LeamRunner(apply_fn, params, batch_size=4, target=target, taps=TAPS)
    for s in (slice(0, 4), slice(4, 7)):  # the ragged second batch reuses the compiled program
        out = runner(IMAGES[s], person_ids=jnp.asarray(PERSONS[s]), references=jnp.asarray(refs[s], jnp.float32),
                     gallery=gallery)
        np.testing.assert_allclose(out.overall, direct.overall[s], atol=1e-6)
    assert runner.trace_count == 1


def test_gallery_targets_errors():
    emb, refs, gallery = _inputs()
    e, g = jnp.asarray(emb), jnp.asarray(gallery, jnp.float32)
    with pytest.raises(ValueError, match="person_ids"):
        core.target_scores(e, target="population", references=jnp.asarray(refs, jnp.float32), gallery=g)
    with pytest.raises(ValueError, match="leave-one-out"):
        core.target_scores(e, target="identification", person_ids=jnp.asarray(PERSONS), gallery=g)
    apply_fn, params = nnx_model()
    with pytest.raises(ValueError, match="dense ids"):
        core.leam_maps(apply_fn, params, IMAGES, target="population", references=jnp.asarray(refs, jnp.float32),
                       person_ids=jnp.asarray(PERSONS + 10), gallery=g)
