"""Validity statistics (LEAM_SPEC.md section 6) against plain numpy / brute-force oracles.

The public functions are jitted themselves, so every call here runs under ``jax.jit``; the tests
keep to a few shapes (M = 80 or 60 items, N = 30 rows) so that each compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import stats

# --- oracles, written out plainly ------------------------------------------------------------


def brute_weighted_auc(s, p, w):
    num = sum(w[i] * w[j] * ((s[i] > s[j]) + 0.5 * (s[i] == s[j]))
              for i in range(len(s)) if p[i] for j in range(len(s)) if not p[j])
    return num / (w[p].sum() * w[~p].sum())


def textbook_d(x1, x0):
    n1, n0 = len(x1), len(x0)
    pooled = np.sqrt(((n1 - 1) * np.var(x1, ddof=1) + (n0 - 1) * np.var(x0, ddof=1)) / (n1 + n0 - 2))
    return (np.mean(x1) - np.mean(x0)) / pooled


def brute_pairs(values, ids, valid=None, pair_mask=None):
    """Scores and same-person flags of the pairs i < j that person_specificity counts."""
    n = len(ids)
    valid = np.ones(n, bool) if valid is None else valid
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
             if valid[i] and valid[j] and (pair_mask is None or pair_mask[i, j])]
    return np.array([values[i, j] for i, j in pairs]), np.array([ids[i] == ids[j] for i, j in pairs])


def average_ranks(x):
    """Rank of each element: 1 + number smaller + (number of others equal) / 2."""
    return np.array([1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])


def brute_spearman(a, b):
    ra, rb = average_ranks(a.ravel()), average_ranks(b.ravel())
    return np.corrcoef(ra, rb)[0, 1]


def specificity_data(seed=0, shift=0.8):
    """10 people x 3 images (N = 30 in every test: one compiled program per option set) and a
    symmetric [N, N] score that is higher by ``shift`` for same-person pairs."""
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(10), 3)
    rng.shuffle(ids)
    noise = rng.normal(size=(30, 30))
    values = (noise + noise.T) / 2 + shift * (ids[:, None] == ids[None, :])
    return values.astype(np.float32), ids


# --- weighted AUC ---------------------------------------------------------------------------

M = 80


def test_weighted_auc_matches_double_loop_with_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=M) * 2)  # integer scores: many ties
    p = rng.uniform(size=M) < 0.4
    w = rng.uniform(0, 2, size=M) * (rng.uniform(size=M) > 0.2)  # some zero weights
    assert float(stats.weighted_roc_auc(s, p, w)) == pytest.approx(brute_weighted_auc(s, p, w), abs=1e-6)
    counts = rng.integers(0, 4, size=M)  # integer weights (exact int32 sums) = repeated items
    rep = np.repeat(np.arange(M), counts)
    want = brute_weighted_auc(s[rep], p[rep], np.ones(len(rep)))
    assert float(stats.weighted_roc_auc(s, p, counts)) == pytest.approx(want, abs=1e-6)
    assert float(stats.weighted_roc_auc(s, p, counts.astype(float))) == pytest.approx(want, abs=1e-6)
    dropped = counts == 0  # weight-0 items do not count, whatever their score (NaN, inf)
    junk = np.where(dropped, np.array([np.nan, np.inf, -np.inf])[np.arange(M) % 3], s)
    assert float(stats.weighted_roc_auc(junk, p, counts)) == pytest.approx(want, abs=1e-6)


def test_weighted_auc_unit_weights_equal_roc_auc_and_degenerate_cases():
    rng = np.random.default_rng(1)
    s = np.round(rng.normal(size=M), 1)
    p = rng.uniform(size=M) < 0.3
    auc = float(jax.jit(stats.roc_auc)(s, p))
    assert float(stats.weighted_roc_auc(s, p, np.ones(M))) == pytest.approx(auc, abs=1e-6)
    assert float(stats.weighted_roc_auc(s, p, np.ones(M, np.int32))) == pytest.approx(auc, abs=1e-6)
    ones, order = np.ones(M), np.arange(M)
    assert float(stats.weighted_roc_auc(order, order >= 30, ones)) == 1.0  # perfectly separated
    assert float(stats.weighted_roc_auc(order, order < 30, ones)) == 0.0
    assert float(stats.weighted_roc_auc(ones, order < 30, ones)) == 0.5  # all tied
    assert np.isnan(stats.weighted_roc_auc(s, p, np.where(p, 0.0, 1.0)))  # no positive weight
    assert np.isnan(stats.weighted_roc_auc(s, p, np.where(p, 1.0, 0.0)))  # no negative weight
    with pytest.raises(ValueError, match="need \\[M\\]"):
        stats.weighted_roc_auc(s, p, np.ones(M - 1))
    with pytest.raises(ValueError, match="need \\[M\\]"):
        stats.weighted_roc_auc(s.reshape(8, 10), p.reshape(8, 10), np.ones((8, 10)))


# --- Cohen's d ------------------------------------------------------------------------------


def test_cohens_d_textbook_and_repeat_weights():
    rng = np.random.default_rng(2)
    p = np.arange(60) < 25
    x = rng.normal(size=60) + 0.7 * p
    assert float(stats.cohens_d(x, p)) == pytest.approx(textbook_d(x[p], x[~p]), rel=1e-5)
    counts = rng.integers(0, 4, size=60)
    xr, pr = np.repeat(x, counts), np.repeat(p, counts)
    assert float(stats.cohens_d(x, p, counts.astype(float))) == pytest.approx(textbook_d(xr[pr], xr[~pr]), rel=1e-5)
    assert float(stats.cohens_d(x, p, np.ones(60))) == pytest.approx(float(stats.cohens_d(x, p)), rel=1e-6)
    junk = np.where(counts == 0, np.nan, x)  # weight-0 items do not count, even if NaN
    assert float(stats.cohens_d(junk, p, counts.astype(float))) == pytest.approx(textbook_d(xr[pr], xr[~pr]), rel=1e-5)


def test_cohens_d_undefined_is_nan():
    x, order = np.arange(60.0), np.arange(60)
    assert np.isnan(stats.cohens_d(x, order == 0))  # a single positive
    half = np.where(order < 3, 0.5, 1.0) * (order < 3) + (order >= 30)  # positives weigh 1.5 in all
    assert np.isnan(stats.cohens_d(x, order < 30, half))
    assert np.isnan(stats.cohens_d(np.where(order < 30, 1.0, 2.0), order < 30))  # zero pooled SD
    assert np.isnan(stats.cohens_d(np.full(60, 0.1), order < 30))  # constant; its float32 mean is inexact
    with pytest.raises(ValueError, match="need \\[M\\]"):
        stats.cohens_d(x, np.ones(59, bool))


# --- person bootstrap weights ---------------------------------------------------------------


def test_person_bootstrap_weights_equal_resampled_pair_counts():
    people, draws = 5, 4000
    a = np.array([0, 1, 2, 3, 4, 0, 2, 4, 1, 2])  # (p, p) for every person, then different-person pairs
    b = np.array([0, 1, 2, 3, 4, 1, 4, 2, 3, 0])
    key = jax.random.PRNGKey(3)
    w = np.asarray(stats.person_bootstrap_weights(key, a, b, people, draws))
    assert w.shape == (draws, len(a))
    drawn = np.asarray(jax.random.randint(key, (draws, people), 0, people))  # the documented stream
    for d in range(10):
        resampled = list(drawn[d])  # slot u holds a copy of person resampled[u] with all their images
        for m in range(len(a)):
            # Copies (u, v) that form this pair; two copies of one person are not paired with each other.
            want = sum(1 for u in range(people) for v in range(people)
                       if resampled[u] == a[m] and resampled[v] == b[m] and (a[m] != b[m] or u == v))
            assert w[d, m] == want, (d, m)
    assert (w[:, :people].sum(1) == people).all()  # P people drawn per draw
    np.testing.assert_allclose(w[:, :people].mean(0), 1.0, atol=0.06)  # E[c_p] = 1
    np.testing.assert_allclose(w[:, people:].mean(0), 1 - 1 / people, atol=0.06)  # E[c_a c_b] = 1 - 1/P
    np.testing.assert_array_equal(stats.person_bootstrap_weights(key, a, b, people, draws), w)  # seeded
    assert not np.array_equal(stats.person_bootstrap_weights(jax.random.PRNGKey(4), a, b, people, draws), w)
    with pytest.raises(ValueError, match="both be \\[M\\]"):
        stats.person_bootstrap_weights(key, np.arange(3), np.arange(4), 4, 2)
    with pytest.raises(ValueError, match="num_people >= 1"):
        stats.person_bootstrap_weights(key, np.arange(3), np.arange(3), 0, 2)


# --- person specificity ---------------------------------------------------------------------


def check_point(spec, scores, same):
    assert float(spec.auc) == pytest.approx(brute_weighted_auc(scores, same, np.ones(len(scores))), abs=1e-6)
    assert float(spec.d) == pytest.approx(textbook_d(scores[same], scores[~same]), rel=1e-4)
    assert (int(spec.n_same), int(spec.n_diff)) == (same.sum(), (~same).sum())
    np.testing.assert_allclose([spec.mean_same, spec.mean_diff], [scores[same].mean(), scores[~same].mean()],
                               rtol=1e-5)


BOOT = dict(num_draws=1000, chunk=100)
INTERVALS = ("auc_low", "auc_high", "d_low", "d_high")


def test_person_specificity_point_interval_and_numpy_cluster_bootstrap():
    values, ids = specificity_data()
    spec = stats.person_specificity(values, ids, key=jax.random.PRNGKey(0), **BOOT)
    check_point(spec, *brute_pairs(values, ids))
    assert spec.auc_low <= spec.auc <= spec.auc_high and spec.auc_low > 0.5
    assert spec.d_low <= spec.d <= spec.d_high and spec.d_low > 0
    # An independent numpy bootstrap over people: its percentile interval agrees to Monte-Carlo error.
    i, j = np.triu_indices(30, 1)
    s, same = values[i, j], ids[i] == ids[j]
    beats = (s[:, None] > s[None, :]) + 0.5 * (s[:, None] == s[None, :])  # [pair, pair]
    rng = np.random.default_rng(0)
    aucs = []
    for _ in range(4000):
        c = np.bincount(rng.integers(0, 10, 10), minlength=10)
        w = np.where(same, c[ids[i]], c[ids[i]] * c[ids[j]]).astype(float)
        wp, wn = w * same, w * ~same
        if wp.sum() > 0 and wn.sum() > 0:
            aucs.append(wp @ beats @ wn / (wp.sum() * wn.sum()))
    np.testing.assert_allclose([spec.auc_low, spec.auc_high], np.quantile(aucs, [0.025, 0.975]), atol=0.03)


def test_person_specificity_masks_chunks_seeds_and_outer_jit():
    values, ids = specificity_data(seed=1)
    key = jax.random.PRNGKey(0)
    # One program (under an outer jit, chunk 7) for every masked call below.
    masked = jax.jit(lambda v, m: stats.person_specificity(values, ids, key=key, valid=v, pair_mask=m,
                                                              num_draws=1000, chunk=7))
    rng = np.random.default_rng(1)
    source = rng.integers(0, 2, 30)
    within = source[:, None] == source[None, :]
    valid = rng.uniform(size=30) > 0.25
    everyone, all_pairs = np.ones(30, bool), np.ones((30, 30), bool)
    check_point(masked(everyone, within), *brute_pairs(values, ids, pair_mask=within))
    check_point(masked(valid, all_pairs), *brute_pairs(values, ids, valid=valid))
    check_point(masked(valid, within), *brute_pairs(values, ids, valid, within))
    # All-true masks and another chunk size: the same pairs, people and draws as the defaults.
    spec = stats.person_specificity(values, ids, key=key, **BOOT)
    same = masked(everyone, all_pairs)
    for field in ("auc", "d", "mean_same", "n_diff", *INTERVALS):
        assert float(getattr(same, field)) == pytest.approx(float(getattr(spec, field)), abs=1e-5), field
    again = stats.person_specificity(values, ids, key=key, **BOOT)
    other = stats.person_specificity(values, ids, key=jax.random.PRNGKey(1), **BOOT)
    assert [float(getattr(again, f)) for f in INTERVALS] == [float(getattr(spec, f)) for f in INTERVALS]
    assert float(other.auc_low) != float(spec.auc_low)


def test_person_specificity_grouped_equals_pair_by_pair():
    # The grouped bootstrap (per-person totals) against the pair-by-pair one: the same draws, so
    # every field agrees to float32 rounding, with masks, tied scores and a loose people bound.
    values, ids = specificity_data(seed=2)
    rng = np.random.default_rng(2)
    valid = rng.uniform(size=30) > 0.2
    within = (lambda s: s[:, None] == s[None, :])(rng.integers(0, 2, 30))
    key = jax.random.PRNGKey(3)
    fields = ("auc", "d", "mean_same", "mean_diff", "n_same", "n_diff", *INTERVALS)
    for vals, kw in ((values, {}), (np.round(values, 1), dict(valid=valid, pair_mask=within))):
        pairs = stats.person_specificity(vals, ids, key=key, num_draws=300, chunk=7, **kw)
        check_point(pairs, *brute_pairs(vals, ids, kw.get("valid"), kw.get("pair_mask")))
        for bound in (10, 13):
            grouped = stats.person_specificity(vals, ids, key=key, num_draws=300, max_people=bound, **kw)
            for field in fields:
                assert float(getattr(grouped, field)) == pytest.approx(float(getattr(pairs, field)), abs=2e-6), field
    # Scopes stacked [S, N, N] share one sort of the pairs; each equals its own call, both ways.
    scopes = np.stack([np.ones((30, 30), bool), within])
    for bound in (None, 10):
        stacked = stats.person_specificity(values, ids, key=key, num_draws=300, chunk=7, valid=valid,
                                           pair_mask=scopes, max_people=bound)
        for k, mask in enumerate(scopes):
            alone = stats.person_specificity(values, ids, key=key, num_draws=300, chunk=7, valid=valid,
                                             pair_mask=mask, max_people=bound)
            for field in fields:
                assert float(getattr(stacked, field)[k]) == pytest.approx(float(getattr(alone, field)), abs=1e-6), field
    # Fewer people than the data hold: NaN, never a statistic over the wrong groups.
    short = stats.person_specificity(values, ids, key=key, num_draws=300, max_people=9)
    assert all(np.isnan(float(getattr(short, f))) for f in ("auc", "d", *INTERVALS))
    with pytest.raises(ValueError, match="max_people"):
        stats.person_specificity(values, ids, key=key, max_people=0)


def test_person_specificity_perfect_separation_and_errors():
    _, ids = specificity_data()
    values = (ids[:, None] == ids[None, :]).astype(np.float32) + 0.01 * np.arange(30)[None, :]
    spec = stats.person_specificity(values, ids, key=jax.random.PRNGKey(0), **BOOT)
    assert float(spec.auc) == 1.0 and float(spec.auc_low) == 1.0 and float(spec.auc_high) == 1.0
    assert float(spec.d) > 5
    key = jax.random.PRNGKey(0)
    with pytest.raises(ValueError, match="need values \\[N, N\\]"):
        stats.person_specificity(values[:, :5], ids, key=key)
    with pytest.raises(ValueError, match="pair_mask must be"):
        stats.person_specificity(values, ids, key=key, pair_mask=np.ones((3, 3), bool))
    with pytest.raises(ValueError, match="pair_mask must be"):
        stats.person_specificity(values, ids, key=key, pair_mask=np.ones((2, 30, 29), bool))
    with pytest.raises(ValueError, match="0 < level < 1"):
        stats.person_specificity(values, ids, key=key, level=95)


# --- Spearman -------------------------------------------------------------------------------


def test_spearman_matches_average_rank_oracle_with_ties():
    rng = np.random.default_rng(4)
    a = np.maximum(np.round(rng.normal(size=(2, 3, 9, 7)), 1), 0)  # ReLU'd: many exact zeros and ties
    b = np.maximum(np.round(a + rng.normal(size=a.shape), 1), 0)
    got = np.asarray(stats.spearman(a, b))
    assert got.shape == (2, 3)
    want = np.array([[brute_spearman(a[i, k], b[i, k]) for k in range(3)] for i in range(2)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(stats.spearman(a[0, 0], b[0, 0])) == pytest.approx(want[0, 0], abs=1e-5)  # one map -> scalar


def test_spearman_monotone_reversed_constant_and_errors():
    rng = np.random.default_rng(5)
    a = np.maximum(rng.normal(size=(2, 3, 9, 7)), 0)
    np.testing.assert_allclose(stats.spearman(a, np.exp(3 * a) + 2), 1.0, atol=1e-6)
    np.testing.assert_allclose(stats.spearman(a, -a), -1.0, atol=1e-6)
    assert (np.asarray(stats.spearman(a, np.zeros_like(a))) == 0.0).all()  # constant map: 0, not NaN
    with pytest.raises(ValueError, match="one shape"):
        stats.spearman(a, a[..., :6])
    with pytest.raises(ValueError, match="one shape"):
        stats.spearman(a[0, 0, 0], a[0, 0, 0])


# --- deletion area --------------------------------------------------------------------------


def test_deletion_area_trapezoid_mean_height():
    percents = (0.5, 1, 2, 5, 10)
    deltas = np.random.default_rng(6).uniform(size=(3, 2, 5))
    area = sum((percents[k + 1] - percents[k]) * (deltas[..., k] + deltas[..., k + 1]) / 2 for k in range(4))
    want = area / (10 - 0.5)
    np.testing.assert_allclose(stats.deletion_area(percents, deltas), want, rtol=1e-6)
    np.testing.assert_allclose(stats.deletion_area(jnp.asarray(percents), deltas), want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(functools.partial(stats.deletion_area, percents))(deltas), want, rtol=1e-6)
    flat_and_linear = np.array([[0.2, 0.2, 0.2], [0.0, 0.1, 0.4]])  # Δcos = 0.2; Δcos = p / 10 over [0, 4]
    np.testing.assert_allclose(stats.deletion_area((0.0, 1.0, 4.0), flat_and_linear), [0.2, 0.2], rtol=1e-6)


def test_deletion_area_errors():
    with pytest.raises(ValueError, match="strictly increasing"):
        stats.deletion_area((1, 1, 2), np.zeros(3))
    with pytest.raises(ValueError, match="strictly increasing"):
        stats.deletion_area((5, 1), np.zeros(2))
    with pytest.raises(ValueError, match="strictly increasing"):
        stats.deletion_area((1,), np.zeros(1))
    with pytest.raises(ValueError, match="deltas must be"):
        stats.deletion_area((1, 2, 3), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="1-D"):
        stats.deletion_area(np.ones((2, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="not traced"):
        jax.jit(stats.deletion_area)(jnp.array([1.0, 2.0]), jnp.zeros(2))
