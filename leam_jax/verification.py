"""Verification metrics over all pairs of a labelled embedding set (numpy)."""

from __future__ import annotations

import numpy as np


def pair_scores(emb: np.ndarray, persons: list[str] | np.ndarray, *, metric: str = "cosine") -> tuple[np.ndarray, np.ndarray]:
    """Similarity of every pair i < j and whether it is a same-person pair.

    metric: ``cosine`` (higher = more similar) or ``euclidean`` (negated distance).
    """
    emb = np.asarray(emb, np.float64)
    if metric == "cosine":
        unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        sim = unit @ unit.T
    elif metric == "euclidean":
        sim = -np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    else:
        raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
    iu = np.triu_indices(len(emb), 1)
    ids = np.asarray(persons)
    return sim[iu], (ids[:, None] == ids[None])[iu]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):  # average ranks over ties
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, positive: np.ndarray, far: float = 0.01) -> float:
    """True-accept rate at the threshold where at most ``far`` of negative pairs are accepted."""
    scores, positive = np.asarray(scores, np.float64), np.asarray(positive, bool)
    neg = np.sort(scores[~positive])[::-1]
    k = int(np.floor(far * len(neg)))
    threshold = neg[k] if k < len(neg) else -np.inf  # accept scores strictly above
    return float((scores[positive] > threshold).mean())
