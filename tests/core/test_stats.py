"""Map statistics against numpy oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import stats
from tests.core.test_core import np_normalize

RNG = np.random.default_rng(0)


def maps(n, h=12, w=10):
    return np_normalize(RNG.uniform(size=(n, h, w)) ** 4).astype(np.float32)


def np_top_mask(m, percent):
    flat = m.reshape(-1)
    k = max(1, int(np.floor(flat.size * percent / 100 + 0.5)))
    mask = np.zeros(flat.size, bool)
    mask[np.argsort(-flat, kind="stable")[:k]] = True
    return mask.reshape(m.shape)


def np_bc(p, q, top=None):
    if top is not None:
        p, q = np_normalize(np.where(np_top_mask(p, top), p, 0)), np_normalize(np.where(np_top_mask(q, top), q, 0))
    return np.sqrt(p * q).sum()


def test_top_percent_mask_exact_count_and_pixels():
    m = maps(3)
    for p in (0.5, 1, 5, 10):
        mask = np.asarray(jax.jit(stats.top_percent_mask, static_argnums=1)(m, p))
        for i in range(3):
            np.testing.assert_array_equal(mask[i], np_top_mask(m[i], p))
    assert np.asarray(stats.top_percent_mask(jnp.zeros((1, 150, 150)), 1)).sum() == 225  # ties: still exact


def test_top_percent_mask_ties_and_signs_follow_top_k_order():
    """Bisection over the 2^-16 rank grid picks exactly lax.top_k's pixels: higher rank first,
    ties by lower pixel index, also for signed maps and heavy ties (upsampled coarse maps)."""
    rng = np.random.default_rng(3)
    coarse = rng.normal(size=(4, 9, 9)).astype(np.float32)
    m = np.repeat(np.repeat(coarse, 17, axis=1), 17, axis=2)[:, :150, :150]  # blocks of equal values, signed
    for p in (0.5, 1, 5, 10, 50):
        flat = m.reshape(4, -1)
        peak = np.abs(flat).max(1, keepdims=True)
        ranked = np.round(flat / peak * 2.0**16)
        _, idx = jax.lax.top_k(jnp.asarray(ranked), stats.top_k_count(flat.shape[1], p))
        want = np.zeros(flat.shape, bool)
        np.put_along_axis(want, np.asarray(idx), True, axis=1)
        np.testing.assert_array_equal(np.asarray(stats.top_percent_mask(jnp.asarray(m), p)).reshape(4, -1), want)


def test_bhattacharyya_equals_numpy_and_is_one_for_identical():
    p, q = maps(2)
    np.testing.assert_allclose(stats.bhattacharyya(p, q), np_bc(p, q), rtol=1e-5)
    np.testing.assert_allclose(stats.bhattacharyya(p, p), 1.0, rtol=1e-5)
    for top in (1, 10):
        np.testing.assert_allclose(stats.bhattacharyya(p, q, top_percent=top), np_bc(p, q, top), rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(stats.bhattacharyya(p, p, top_percent=top), 1.0, rtol=1e-5)
    disjoint_a = np.zeros((4, 4), np.float32)
    disjoint_a[0, 0] = 1
    disjoint_b = np.zeros((4, 4), np.float32)
    disjoint_b[3, 3] = 1
    assert float(stats.bhattacharyya(disjoint_a, disjoint_b)) == 0.0
    with pytest.raises(ValueError, match="share H, W"):
        stats.bhattacharyya(p, q[:, :5])


def test_bc_matrix_and_same_different_summary():
    m = maps(6)
    ids = np.array([0, 0, 1, 1, 1, 2])
    bc = np.asarray(stats.bc_matrix(jnp.asarray(m)))
    for i in range(6):
        for j in range(6):
            assert abs(bc[i, j] - np_bc(m[i], m[j])) < 1e-5
    s = jax.jit(stats.bc_same_different)(jnp.asarray(m), jnp.asarray(ids))
    same = [np_bc(m[i], m[j]) for i in range(6) for j in range(i + 1, 6) if ids[i] == ids[j]]
    diff = [np_bc(m[i], m[j]) for i in range(6) for j in range(i + 1, 6) if ids[i] != ids[j]]
    np.testing.assert_allclose([s.mean_same, s.mean_diff], [np.mean(same), np.mean(diff)], rtol=1e-5)
    assert int(s.n_same) == len(same) == 4 and int(s.n_diff) == len(diff) == 11
    v = stats.bc_same_different(jnp.asarray(m), jnp.asarray(ids), valid=jnp.array([1, 1, 1, 1, 1, 0], bool))
    assert int(v.n_diff) == 6


def test_layer_diversity_equals_numpy():
    per_layer = np.stack([maps(4) for _ in range(2)])  # [2, 4, H, W]
    bc, mean_off = stats.layer_diversity(jnp.asarray(per_layer))
    for b in range(2):
        ref = np.array([[np_bc(per_layer[b, i], per_layer[b, j]) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(bc[b], ref, rtol=1e-5)
        np.testing.assert_allclose(mean_off[b], ref[~np.eye(4, dtype=bool)].mean(), rtol=1e-5)


def test_random_masks_match_count():
    masks = np.asarray(stats.random_masks(jax.random.PRNGKey(0), (3, 20, 30), 5))
    assert (masks.reshape(3, -1).sum(1) == 30).all()
    assert not (masks[0] == masks[1]).all()


def test_occlude_fills():
    img = jnp.asarray(RNG.uniform(0, 255, (2, 8, 8, 3)), jnp.float32)
    mask = jnp.zeros((2, 8, 8), bool).at[:, 2:4, 3:6].set(True)
    for fill in stats.FILLS:
        out = np.asarray(stats.occlude(img, mask, fill=fill, key=jax.random.PRNGKey(1), blur_sigma=1.0))
        np.testing.assert_array_equal(out[~np.asarray(mask)], np.asarray(img)[~np.asarray(mask)])
        inside = out[np.asarray(mask)]
        if fill == "zero":
            assert (inside == 0).all()
        if fill == "mean":
            np.testing.assert_allclose(out[0, 2, 3], np.asarray(img)[0].mean((0, 1)), rtol=1e-5)
        if fill == "noise":
            assert ((inside >= 0) & (inside <= 255)).all() and not np.allclose(inside, np.asarray(img)[np.asarray(mask)])
    with pytest.raises(ValueError, match="fill must be one of"):
        stats.occlude(img, mask, fill="paint")
    with pytest.raises(ValueError, match="needs a PRNG key"):
        stats.occlude(img, mask, fill="noise")


def test_occlusion_delta_oracle():
    """With a linear 'model' the occlusion delta has a closed form."""
    w = jnp.asarray(RNG.normal(size=(8 * 8 * 3, 4)), jnp.float32)
    embed = lambda x: x.reshape(x.shape[0], -1) @ w
    img = jnp.asarray(RNG.uniform(0, 255, (2, 8, 8, 3)), jnp.float32)
    ref = jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32)
    none = jnp.zeros((2, 8, 8), bool)
    np.testing.assert_allclose(stats.occlusion_delta(embed, img, none, ref), 0.0, atol=1e-6)
    mask = none.at[:, :4].set(True)
    occluded = np.where(np.asarray(mask)[..., None], 0, np.asarray(img))
    cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    e0, e1 = np.asarray(embed(img)), occluded.reshape(2, -1) @ np.asarray(w)
    np.testing.assert_allclose(stats.occlusion_delta(embed, img, mask, ref, fill="zero"), cos(e0, ref) - cos(e1, ref), rtol=1e-4)
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    rnd = stats.random_occlusion_delta(embed, img, 10, ref, keys, fill="zero")
    # The mean over draws of each draw's Δcos with its own mask (each key split into mask and fill keys).
    draws = [stats.occlusion_delta(embed, img, stats.random_masks(jax.random.split(k)[0], (2, 8, 8), 10), ref,
                                   fill="zero") for k in keys]
    np.testing.assert_allclose(rnd, np.mean(draws, axis=0), rtol=1e-5)
    assert rnd.shape == (2,) and np.all(np.isfinite(rnd))


@pytest.mark.parametrize("fill", ["noise", "mean"])
def test_occlusion_deltas_equal_one_call_per_mask(fill):
    """The compiled loop over V masks equals V separate occlusion_delta calls, key for key."""
    w = jnp.asarray(RNG.normal(size=(8 * 8 * 3, 4)), jnp.float32)
    embed = lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ w / 100.0)
    img = jnp.asarray(RNG.uniform(0, 255, (2, 8, 8, 3)), jnp.float32)
    ref = jnp.asarray(RNG.normal(size=(2, 4)), jnp.float32)
    masks = jnp.asarray(RNG.random((5, 2, 8, 8)) < 0.2)
    keys = jax.random.split(jax.random.PRNGKey(1), 5)
    got = jax.jit(lambda m, k: stats.occlusion_deltas(embed, img, m, ref, fill=fill, keys=k))(masks, keys)
    want = [stats.occlusion_delta(embed, img, m, ref, fill=fill, key=k) for m, k in zip(masks, keys)]
    np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[V, B, H, W\]"):
        stats.occlusion_deltas(embed, img, masks[0], ref)


# --- verification: all pairs, AUC, TAR at FAR (brute-force oracles) -------------------------


def brute_auc(s, p):
    pos, neg = s[p], s[~p]
    return np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # many ties
    p = rng.uniform(size=300) < 0.3
    assert float(stats.roc_auc(s, p)) == pytest.approx(brute_auc(s, p), abs=1e-6)
    assert float(jax.jit(stats.roc_auc)(s, p)) == pytest.approx(brute_auc(s, p), abs=1e-6)
    assert float(stats.roc_auc(np.arange(10.0), np.arange(10) >= 5)) == 1.0
    assert np.isnan(stats.roc_auc(np.arange(4.0), np.zeros(4, bool)))


def test_tar_at_far_and_pairs():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    assert float(stats.tar_at_far(s, p, far=0.0)) == pytest.approx(2 / 3)  # threshold at the best negative, 0.7
    assert float(stats.tar_at_far(s, p, far=0.5)) == 1.0
    rng = np.random.default_rng(1)
    s, p = rng.normal(size=500), rng.uniform(size=500) < 0.2
    neg = np.sort(s[~p])[::-1]
    assert float(stats.tar_at_far(s, p, 0.01)) == pytest.approx(np.mean(s[p] > neg[int(0.01 * len(neg))]))
    emb = np.array([[1.0, 0], [0.9, 0.1], [0, 1]])
    scores, same = stats.pair_scores(emb, np.array([0, 0, 1]))
    np.testing.assert_array_equal(same, [True, False, False])
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, [unit[0] @ unit[1], unit[0] @ unit[2], unit[1] @ unit[2]], rtol=1e-6)
    dist, _ = stats.pair_scores(emb, np.array([0, 0, 1]), metric="euclidean")
    np.testing.assert_allclose(dist, [-np.linalg.norm(emb[i] - emb[j]) for i, j in ((0, 1), (0, 2), (1, 2))],
                               rtol=1e-5)
    with pytest.raises(ValueError, match="metric must be cosine or euclidean"):
        stats.pair_scores(emb, np.array([0, 0, 1]), metric="l1")


def test_same_different_on_a_precomputed_matrix():
    v = RNG.random((6, 6)).astype(np.float32)
    ids = np.array([0, 0, 1, 1, 1, 2])
    valid = np.array([True, True, True, False, True, True])
    s = stats.same_different(jnp.asarray(v), jnp.asarray(ids), valid=jnp.asarray(valid))
    pairs = [(i, j) for i in range(6) for j in range(i + 1, 6) if valid[i] and valid[j]]
    same = [v[i, j] for i, j in pairs if ids[i] == ids[j]]
    diff = [v[i, j] for i, j in pairs if ids[i] != ids[j]]
    assert (int(s.n_same), int(s.n_diff)) == (len(same), len(diff))
    np.testing.assert_allclose([s.mean_same, s.mean_diff], [np.mean(same), np.mean(diff)], rtol=1e-6)


def test_threshold_at_far_accepts_at_most_far_of_the_negatives():
    rng = np.random.default_rng(3)
    s = rng.normal(size=2000).astype(np.float32)
    p = rng.uniform(size=2000) < 0.2
    neg = np.sort(s[~p])[::-1]
    for far in (0.0, 1e-3, 1e-2, 0.1):
        t = float(stats.threshold_at_far(s, p, far))
        assert t == neg[int(np.floor(far * neg.size))]
        assert np.mean(neg > t) <= far
    assert float(stats.threshold_at_far(s, p, 1.0)) == -np.inf


def test_person_bootstrap_mean_equals_the_weighted_numpy_oracle():
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(7), [1, 2, 3, 1, 4, 2, 3])
    v = rng.uniform(size=ids.size).astype(np.float32)
    v[5] = np.nan  # left out
    key = jax.random.PRNGKey(9)
    mean, lo, hi = stats.person_bootstrap_mean(key, v, ids, num_people=7, num_draws=500)
    w = np.asarray(stats.person_bootstrap_weights(key, ids, ids, 7, 500)).astype(np.float64)
    ok = np.isfinite(v)
    means = (w[:, ok] @ v[ok].astype(np.float64)) / w[:, ok].sum(1)
    assert float(mean) == pytest.approx(np.nanmean(v), rel=1e-6)
    np.testing.assert_allclose([lo, hi], np.nanpercentile(means, [2.5, 97.5]), rtol=1e-5)
    assert lo <= mean <= hi
