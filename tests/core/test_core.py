"""LEAM core against numpy / finite-difference / per-layer-vjp oracles, on tiny models."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core
from tests.references.tiny_models import FRAMEWORKS, SIZE, nnx_model

RNG = np.random.default_rng(0)
IMAGES = jnp.asarray(RNG.uniform(0, 255, (6, SIZE, SIZE, 3)), jnp.float32)
PERSONS = jnp.array([0, 0, 1, 1, 1, 2])  # person 2 has a single image


# --- numpy oracles -------------------------------------------------------------


def np_unit(x):
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.where(n > 0, x / np.where(n > 0, n, 1), 0)


def np_layer_map(g, a, weighting):
    g, a = np.asarray(g, np.float64), np.asarray(a, np.float64)
    if weighting == "gradcam":
        w = g.mean(axis=(1, 2), keepdims=True)
        return np.maximum((w * a).sum(-1), 0)
    if weighting == "layercam":
        return (np.maximum(g, 0) * a).sum(-1)
    return np.abs((g * a).sum(-1))


def np_normalize(m):
    s = m.sum(axis=(-2, -1), keepdims=True)
    return np.where(s > 1e-12, m / np.where(s > 1e-12, s, 1), 0)


def np_loo(emb, ids):
    e = np_unit(np.asarray(emb, np.float64))
    ids = np.asarray(ids)
    refs, has = np.zeros_like(e), np.zeros(len(e), bool)
    for i in range(len(e)):
        others = [j for j in range(len(e)) if ids[j] == ids[i] and j != i]
        if others:
            refs[i], has[i] = np_unit(e[others].mean(0)), True
    return refs, has


def per_layer_reference(apply_fn, params, images, ids, weighting, taps):
    """The naive way, as the oracle: one separate jax.vjp per tap, numpy maps, cv2 resize."""
    emb, acts = apply_fn(params, images)
    refs, has = np_loo(emb, ids)

    def score_of(e):
        e_hat = core.l2_normalize(e)
        ident = jnp.sum(e_hat * jnp.asarray(refs, jnp.float32), -1)
        self_ = jnp.sum(e * jax.lax.stop_gradient(e_hat), -1)
        return jnp.where(jnp.asarray(has), ident, self_)

    maps = []
    for t in taps:
        zero = jnp.zeros_like(acts[t])
        s, vjp = jax.vjp(lambda z, t=t: score_of(apply_fn(params, images, {t: z})[0]), zero)
        (g,) = vjp(jnp.ones_like(s))
        m = np_layer_map(g, acts[t], weighting)
        up = np.stack([cv2.resize(mi.astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_LINEAR) for mi in m])
        maps.append(np_normalize(np.maximum(up, 0)))
    per_layer = np.stack(maps, 1)
    return per_layer, np_normalize(per_layer.mean(1))


# --- gradients -------------------------------------------------------------------


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_all_taps_vjp_equals_one_vjp_per_layer(framework):
    apply_fn, params = FRAMEWORKS[framework]()
    score = lambda e: core.self_score(e)
    _, _, acts, grads = core.tap_gradients(apply_fn, params, IMAGES, score)
    assert {"c1", "c2", "c3"} <= set(grads)
    for t in ("c1", "c2", "c3"):
        s, vjp = jax.vjp(lambda z, t=t: score(apply_fn(params, IMAGES, {t: z})[0]), jnp.zeros_like(acts[t]))
        np.testing.assert_allclose(grads[t], vjp(jnp.ones_like(s))[0], atol=1e-5)


def test_gradients_match_central_finite_differences():
    """Directional derivatives along random directions, in float64 (a step of 1e-5
    crosses no ReLU kink in practice)."""
    with jax.enable_x64(True):
        apply_fn, params = nnx_model(seed=3)
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), params)
        images = jnp.asarray(IMAGES[:2], jnp.float64)
        score = lambda e: core.self_score(e)
        _, _, acts, grads = core.tap_gradients(apply_fn, params, images, score, taps=("c1", "c2", "c3"))
        rng = np.random.default_rng(1)
        for t in ("c1", "c2", "c3"):
            v = jnp.asarray(rng.normal(size=acts[t].shape), jnp.float64)
            f = lambda eps, t=t, v=v: float(jnp.sum(score(apply_fn(params, images, {t: eps * v})[0])))
            eps = 1e-5
            fd = (f(eps) - f(-eps)) / (2 * eps)
            analytic = float(jnp.sum(grads[t] * v))
            assert abs(fd - analytic) <= 1e-6 * max(abs(fd), abs(analytic)), (t, fd, analytic)


# --- maps ----------------------------------------------------------------------------


@pytest.mark.parametrize("weighting", core.WEIGHTINGS)
def test_layer_map_equals_numpy(weighting):
    g = RNG.normal(size=(3, 5, 6, 7)).astype(np.float32)
    a = np.maximum(RNG.normal(size=(3, 5, 6, 7)), 0).astype(np.float32)
    ours = jax.jit(core.layer_map, static_argnums=2)(g, a, weighting)
    np.testing.assert_allclose(ours, np_layer_map(g, a, weighting), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
@pytest.mark.parametrize("weighting", core.WEIGHTINGS)
def test_leam_maps_equal_per_layer_reference(framework, weighting):
    apply_fn, params = FRAMEWORKS[framework]()
    taps = ("c1", "c2", "c3")
    out = core.leam_maps(apply_fn, params, IMAGES, target="identity", person_ids=PERSONS, weighting=weighting,
                         taps=taps)
    ref_layers, ref_overall = per_layer_reference(apply_fn, params, IMAGES, PERSONS, weighting, taps)
    assert out.taps == taps and out.per_layer.shape == (6, 3, SIZE, SIZE)
    np.testing.assert_allclose(out.per_layer, ref_layers, atol=1e-5)
    np.testing.assert_allclose(out.overall, ref_overall, atol=1e-5)
    ok = ~np.asarray(out.flags)
    np.testing.assert_allclose(np.asarray(out.per_layer).sum((-2, -1))[ok], 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(out.overall).sum((-2, -1)), 1.0, atol=1e-5)
    np.testing.assert_array_equal(out.used_self, [False, False, False, False, False, True])


def test_zero_gradient_gives_flagged_zero_map_not_nan():
    apply_fn, params = nnx_model()
    out = core.leam_maps(apply_fn, params, IMAGES, target="self", taps=("c1", "dead", "c3"))
    dead = list(out.taps).index("dead")
    assert np.all(np.isfinite(out.per_layer)) and np.all(np.isfinite(out.overall))
    assert np.all(np.asarray(out.flags)[:, dead])
    assert np.all(np.asarray(out.per_layer)[:, dead] == 0)
    np.testing.assert_allclose(np.asarray(out.overall).sum((-2, -1)), 1.0, atol=1e-5)
    only_dead = core.leam_maps(apply_fn, params, IMAGES, target="self", taps=("dead",))
    assert np.all(np.asarray(only_dead.overall_flags)) and np.all(np.asarray(only_dead.overall) == 0)


def test_normalize_and_overall_map():
    m = jnp.asarray(RNG.uniform(size=(2, 3, 4, 4)), jnp.float32).at[1, 2].set(0.0)
    n, flags = core.normalize_maps(m)
    np.testing.assert_allclose(n, np_normalize(np.asarray(m)), rtol=1e-6)
    np.testing.assert_array_equal(flags, [[False] * 3, [False, False, True]])
    w = jnp.array([1.0, 0.0, 3.0])
    overall, _ = core.overall_map(n, w)
    expected = np_normalize(np.tensordot(np.asarray(n), np.asarray(w), axes=([1], [0])))
    np.testing.assert_allclose(overall, expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"layer_weights must have shape \(3,\)"):
        core.overall_map(n, jnp.ones(2))


def test_resize_equals_cv2_bilinear():
    m = RNG.uniform(size=(2, 7, 9)).astype(np.float32)
    ours = np.asarray(core.resize_maps(jnp.asarray(m), (21, 27)))
    ref = np.stack([cv2.resize(x, (27, 21), interpolation=cv2.INTER_LINEAR) for x in m])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


# --- targets and references ---------------------------------------------------------


def test_target_scores_match_numpy():
    e = RNG.normal(size=(4, 5)).astype(np.float32)
    r = RNG.normal(size=(4, 5)).astype(np.float32)
    q = RNG.normal(size=(4, 5)).astype(np.float32)
    cos = lambda a, b: (np_unit(a) * np_unit(b)).sum(-1)
    np.testing.assert_allclose(core.identity_score(e, r), cos(e, r), rtol=1e-5)
    np.testing.assert_allclose(core.self_score(e), np.linalg.norm(e, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(core.pair_score(e, r), cos(e, r), rtol=1e-5)
    np.testing.assert_allclose(core.contrast_score(e, r, q), cos(e, r) - cos(e, q), rtol=1e-5, atol=1e-6)
    # self-score's gradient is the unit vector (nonzero); <ê, sg(ê)> would have none.
    np.testing.assert_allclose(jax.grad(lambda x: core.self_score(x[None])[0])(e[0]), np_unit(e[0]), rtol=1e-5)


def test_loo_references_equal_numpy_loop():
    e = RNG.normal(size=(7, 5)).astype(np.float32)
    ids = np.array([0, 1, 0, 2, 1, 0, 3])
    refs, has = jax.jit(core.loo_references, static_argnames="num_people")(e, jnp.asarray(ids), num_people=4)
    ref_refs, ref_has = np_loo(e, ids)
    np.testing.assert_array_equal(has, ref_has)
    np.testing.assert_allclose(refs, ref_refs, atol=1e-6)
    valid = jnp.array([True, True, False, True, True, True, True])  # drop one of person 0's images
    _, has_v = core.loo_references(e, jnp.asarray(ids), num_people=4, valid=valid)
    np.testing.assert_array_equal(has_v, [True, True, False, False, True, True, False])


@pytest.mark.parametrize("target", ["pair", "contrast", "self"])
def test_other_targets_run_and_normalise(target):
    apply_fn, params = nnx_model()
    emb = apply_fn(params, IMAGES)[0]
    kwargs = {"references": jnp.roll(emb, 1, 0)}
    if target == "contrast":
        kwargs["negatives"] = jnp.roll(emb, 2, 0)
    if target == "self":
        kwargs = {}
    out = core.leam_maps(apply_fn, params, IMAGES, target=target, taps=("c1", "c2", "c3"), **kwargs)
    np.testing.assert_allclose(np.asarray(out.overall).sum((-2, -1)), 1.0, atol=1e-5)


def test_batched_equals_single_image():
    apply_fn, params = nnx_model()
    batch = core.leam_maps(apply_fn, params, IMAGES, target="self")
    for i in range(2):
        one = core.leam_maps(apply_fn, params, IMAGES[i : i + 1], target="self")
        np.testing.assert_allclose(batch.overall[i], one.overall[0], atol=1e-6)


def test_core_composes_inside_the_callers_jit_grad_and_vmap():
    # The library compiles with CPU options; XLA refuses them on a nested jit, so a core
    # function called under the caller's own transformation must run as a plain jit.
    apply_fn, params = nnx_model()
    want = core.leam_maps(apply_fn, params, IMAGES, target="self").overall
    got = jax.jit(lambda x: core.leam_maps(apply_fn, params, x, target="self").overall)(IMAGES)
    np.testing.assert_allclose(got, want, atol=1e-6)
    per_image = jax.vmap(lambda x: core.leam_maps(apply_fn, params, x[None], target="self").overall[0])(IMAGES)
    np.testing.assert_allclose(per_image, want, atol=1e-6)


def test_input_gradient_saliency_is_normalised_abs_gradient():
    apply_fn, params = nnx_model()
    maps, flags = core.input_gradient_saliency(apply_fn, params, IMAGES, core.self_score)
    g = jax.grad(lambda x: jnp.sum(core.self_score(apply_fn(params, x)[0])))(IMAGES)
    np.testing.assert_allclose(maps, np_normalize(np.abs(np.asarray(g)).max(-1)), rtol=1e-5, atol=1e-9)
    assert not np.any(flags)


# --- errors ----------------------------------------------------------------------------


def test_bad_arguments_are_clear_errors():
    apply_fn, params = nnx_model()
    with pytest.raises(ValueError, match=r"images must be \[B, H, W, C\]"):
        core.leam_maps(apply_fn, params, IMAGES[0], target="self")
    with pytest.raises(ValueError, match=r"unknown taps \['nope'\]"):
        core.leam_maps(apply_fn, params, IMAGES, target="self", taps=("nope",))
    with pytest.raises(ValueError, match="weighting must be one of"):
        core.leam_maps(apply_fn, params, IMAGES, target="self", weighting="cam")
    with pytest.raises(ValueError, match="target must be one of"):
        core.leam_maps(apply_fn, params, IMAGES, target="other")
    with pytest.raises(ValueError, match="needs references or person_ids"):
        core.leam_maps(apply_fn, params, IMAGES)
    with pytest.raises(ValueError, match=r"references must be \[B=6, D\]"):
        core.leam_maps(apply_fn, params, IMAGES, target="pair", references=jnp.zeros((5, 5)))
    with pytest.raises(ValueError, match=r"grad and act must both be \[B, H, W, C\]"):
        core.layer_map(jnp.zeros((2, 3)), jnp.zeros((2, 3)))


def test_raw_person_ids_are_an_error_and_dense_ids_fix_them():
    apply_fn, params = nnx_model()
    raw = jnp.array([1001, 1001, 1002, 1002, 1002, 1007])
    with pytest.raises(ValueError, match=r"person_ids must be dense ids in \[0, num_people=6\).*1001 to 1007"):
        core.leam_maps(apply_fn, params, IMAGES, person_ids=raw)
    with pytest.raises(ValueError, match="dense_person_ids"):
        core.loo_references(jnp.ones((6, 4)), raw, num_people=3)
    dense, num = core.dense_person_ids(raw)
    assert num == 3 and list(np.asarray(dense)) == list(np.asarray(PERSONS))
    got = core.leam_maps(apply_fn, params, IMAGES, person_ids=dense, num_people=num)
    want = core.leam_maps(apply_fn, params, IMAGES, person_ids=PERSONS, num_people=3)
    np.testing.assert_allclose(got.overall, want.overall, atol=1e-7)


@pytest.mark.parametrize("target", ["identity", "population", "identification"])
def test_traced_out_of_range_ids_give_nan_scores_not_wrong_ones(target):
    """Inside a user's own jit the ids cannot be checked; an id outside [0, num_people) then gives
    a NaN score (and flagged zero maps), never a silently wrong reference."""
    apply_fn, params = nnx_model()
    emb = apply_fn(params, IMAGES)[0]
    ids = jnp.array([0, 0, 1, 1, 1, 9])
    scores = jax.jit(lambda e, i: core.target_scores(e, target=target, person_ids=i, num_people=3))(emb, ids)
    assert np.isnan(scores[5]) and np.isfinite(scores[:5]).all()
    # The other rows equal a run without the bad row: it takes no part in references or the gallery.
    want = core.target_scores(emb[:5], target=target, person_ids=PERSONS[:5], num_people=3)
    np.testing.assert_allclose(scores[:5], want, rtol=1e-5, atol=1e-6)  # jit vs eager rounding


def test_runners_share_placed_params_without_copies():
    apply_fn, params = nnx_model()
    place = core.Placement(4)
    placed = place.replicate(params)
    a = core.LeamRunner(apply_fn, placed, batch_size=4, weighting="gradcam")
    b = core.LeamRunner(apply_fn, placed, batch_size=4, weighting="layercam")
    leaves = jax.tree_util.tree_leaves
    assert all(x is y is z for x, y, z in zip(leaves(placed), leaves(a.params), leaves(b.params)))
    with pytest.raises(ValueError, match="positive multiple"):
        core.LeamRunner(apply_fn, params, batch_size=0)


@pytest.mark.parametrize("target", ["identity", "population"])
def test_set_runner_equals_one_run_per_weighting_and_the_baselines(target):
    # One forward and backward pass for every weighting and both baselines: each must equal its own run.
    apply_fn, params = nnx_model()
    taps = ("c1", "c2", "c3")
    emb = apply_fn(params, IMAGES)[0]
    refs, _ = core.loo_references(emb, PERSONS, num_people=3)
    gallery, _ = core.person_gallery(emb, PERSONS, num_people=3)
    kw = dict(references=refs, person_ids=PERSONS, gallery=gallery if target == "population" else None)
    runner = core.LeamSetRunner(apply_fn, params, batch_size=8, weighting=core.WEIGHTINGS, taps=taps, target=target)
    maps, base = runner(IMAGES, **kw)
    assert set(maps) == set(core.WEIGHTINGS) and runner.trace_count == 1
    for w in core.WEIGHTINGS:
        want = core.leam_maps(apply_fn, params, IMAGES, target=target, weighting=w, taps=taps, num_people=3, **kw)
        np.testing.assert_allclose(maps[w].per_layer, want.per_layer, atol=1e-6)
        np.testing.assert_allclose(maps[w].overall, want.overall, atol=1e-6)
        np.testing.assert_array_equal(maps[w].flags, want.flags)
    last = core.leam_maps(apply_fn, params, IMAGES, target=target, weighting="gradcam", taps=taps[-1:], num_people=3,
                          **kw)
    np.testing.assert_allclose(base["last_layer"], last.overall, atol=1e-6)

    def score(e):
        return core.target_scores(e, target=target, references=refs, person_ids=PERSONS, gallery=kw["gallery"])

    np.testing.assert_allclose(base["input_gradient"], core.input_gradient_saliency(apply_fn, params, IMAGES, score)[0],
                               atol=1e-6)


# --- fixed shapes: no recompilation ------------------------------------------------------


def test_ragged_batches_do_not_recompile():
    apply_fn, params = nnx_model()
    runner = core.LeamRunner(apply_fn, params, batch_size=4, taps=("c1", "c2", "c3"))
    full = core.leam_maps(apply_fn, params, IMAGES[:4], person_ids=PERSONS[:4], taps=("c1", "c2", "c3"))
    out = runner(IMAGES[:4], person_ids=PERSONS[:4])
    np.testing.assert_allclose(out.overall, full.overall, atol=1e-6)
    for n in (3, 1, 4, 2):
        part = runner(IMAGES[:n], person_ids=PERSONS[:n])
        assert part.overall.shape == (n, SIZE, SIZE)
        ref = core.leam_maps(apply_fn, params, IMAGES[:n], person_ids=PERSONS[:n], taps=("c1", "c2", "c3"))
        np.testing.assert_allclose(part.overall, ref.overall, atol=1e-6)  # padding changes nothing
    assert runner.trace_count == 1


def test_jit_cpu_options_update_the_library_options_for_one_function():
    merged = core.compiler_options(core.FORWARD_CPU_OPTIONS)
    if jax.default_backend() == "cpu":
        assert merged == {**core.CPU_COMPILER_OPTIONS, **core.FORWARD_CPU_OPTIONS}
    else:
        assert merged is None
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 9, 9, 3)), jnp.float32)
    pool = core.jit(lambda t: jnp.max(t, axis=(1, 2)), cpu_options=core.FORWARD_CPU_OPTIONS)
    np.testing.assert_array_equal(np.asarray(pool(x)), np.asarray(x).max(axis=(1, 2)))  # max: exact either way
