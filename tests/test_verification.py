"""Verification metrics against brute-force oracles."""

import numpy as np

from leam_jax.verification import pair_scores, roc_auc, tar_at_far


def brute_auc(s, p):
    pos, neg = s[p], s[~p]
    return np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])


def test_auc_matches_brute_force_with_ties():
    rng = np.random.default_rng(0)
    s = np.round(rng.normal(size=300), 1)  # many ties
    p = rng.uniform(size=300) < 0.3
    assert abs(roc_auc(s, p) - brute_auc(s, p)) < 1e-12
    assert roc_auc(np.arange(10.0), np.arange(10) >= 5) == 1.0


def test_tar_at_far_and_pairs():
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    p = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0], bool)
    assert tar_at_far(s, p, far=0.0) == 2 / 3  # threshold at the best negative, 0.7
    assert tar_at_far(s, p, far=0.5) == 1.0
    emb = np.array([[1.0, 0], [0.9, 0.1], [0, 1]])
    scores, same = pair_scores(emb, ["a", "a", "b"])
    np.testing.assert_array_equal(same, [True, False, False])
    assert scores[0] > scores[1]
