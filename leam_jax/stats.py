"""Statistics over LEAM maps (LEAM_SPEC.md section 4) that need no face parser.

Pure JAX: functions take maps ([..., H, W], normalised to sum 1), person ids
and masks, and return arrays or small registered dataclasses. Only the
occlusion step calls a model, through the ``embed_fn`` it is given.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from leam_jax.core import l2_normalize, normalize_maps, top_k_count

FILLS = ("zero", "mean", "blur", "noise")
# Default fill: the image's mean colour. Zero (black) fill makes 1% scattered
# random pixels a salt-noise attack far outside the training distribution,
# which then swamps the comparison with contiguous LEAM regions; results for
# every fill are reported side by side by the study tool.
DEFAULT_FILL = "mean"
_RANK_STEPS = float(2**16)  # top-p% ranking resolution (see top_percent_mask)


# ---------------------------------------------------------------------------
# Top-p% masks and Bhattacharyya coefficients.


def top_percent_mask(maps: jax.Array, percent: float) -> jax.Array:
    """Boolean mask of exactly the top ``percent``% pixels of each [..., H, W] map.

    Values are compared on a grid of 2^-16 of each map's maximum, and ties are
    broken by pixel index (lower first, as ``lax.top_k`` orders them), so the
    count is exact and the mask does not flip with last-bit float noise
    (another device count or batch size): upsampled coarse maps are full of
    values equal in exact arithmetic.
    """
    h, w = maps.shape[-2:]
    k = top_k_count(h * w, percent)
    flat = maps.reshape(-1, h * w).astype(jnp.float32)
    peak = jnp.max(jnp.abs(flat), axis=-1, keepdims=True)
    ranked = jnp.round(flat / jnp.where(peak > 0, peak, 1.0) * _RANK_STEPS).astype(jnp.int32)
    # The k-th largest rank by bisection over the integer grid: O(HW) per step, 3-4x faster on
    # CPU than lax.top_k for the k of 1-10% of a frame. Invariant: >= k ranks are >= lo, < k are >= hi.
    steps = int(2 * _RANK_STEPS + 1).bit_length()

    def bisect(_, bounds):
        lo, hi = bounds
        mid = (lo + hi) // 2
        enough = jnp.sum(ranked >= mid[:, None], axis=-1) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    n = flat.shape[0]
    lo, _ = jax.lax.fori_loop(0, steps, bisect, (jnp.full((n,), -int(_RANK_STEPS), jnp.int32),
                                                 jnp.full((n,), int(_RANK_STEPS) + 1, jnp.int32)))
    kth = lo[:, None]
    above = ranked > kth
    tie = ranked == kth
    mask = above | (tie & (jnp.cumsum(tie, axis=-1) <= k - jnp.sum(above, axis=-1, keepdims=True)))
    return mask.reshape(maps.shape)


def sparsify(maps: jax.Array, percent: float | None) -> jax.Array:
    """Keep each map's top ``percent``% pixels and renormalise (None: unchanged)."""
    if percent is None:
        return maps
    kept = jnp.where(top_percent_mask(maps, percent), maps, 0.0)
    return normalize_maps(kept)[0]


def bhattacharyya(p: jax.Array, q: jax.Array, *, top_percent: float | None = None) -> jax.Array:
    """``BC(P, Q) = sum_i sqrt(P_i Q_i)`` over the last two axes. [..., H, W] x2 -> [...]."""
    if p.shape[-2:] != q.shape[-2:]:
        raise ValueError(f"maps must share H, W: {p.shape} vs {q.shape}")
    p, q = sparsify(p, top_percent), sparsify(q, top_percent)
    return jnp.sum(jnp.sqrt(jnp.maximum(p, 0) * jnp.maximum(q, 0)), axis=(-2, -1))


def bc_matrix(maps: jax.Array, *, top_percent: float | None = None) -> jax.Array:
    """All pairwise BCs of N maps as one matmul: [N, H, W] -> [N, N]."""
    roots = jnp.sqrt(jnp.maximum(sparsify(maps, top_percent), 0)).reshape(maps.shape[0], -1)
    return roots @ roots.T


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["mean_same", "mean_diff", "n_same", "n_diff", "same_values", "diff_mask", "same_mask"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class BCSummary:
    """Same-person vs different-person BC over all pairs i < j of valid maps.

    ``same_values`` is the full [N, N] BC matrix; ``same_mask``/``diff_mask``
    select the pairs that enter each mean (for permutation tests downstream).
    """

    mean_same: jax.Array
    mean_diff: jax.Array
    n_same: jax.Array
    n_diff: jax.Array
    same_values: jax.Array
    diff_mask: jax.Array
    same_mask: jax.Array


def same_different(values: jax.Array, person_ids: jax.Array, *, valid: jax.Array | None = None) -> BCSummary:
    """Mean of a pairwise [N, N] matrix (e.g. :func:`bc_matrix`) over same-person pairs i < j
    and over different-person pairs i < j of valid rows."""
    n = values.shape[0]
    if values.shape != (n, n) or person_ids.shape != (n,):
        raise ValueError(f"need values [N, N] and person_ids [N], got {values.shape} and {person_ids.shape}")
    valid = jnp.ones((n,), bool) if valid is None else valid.astype(bool)
    upper = jnp.triu(jnp.ones((n, n), bool), k=1) & valid[:, None] & valid[None, :]
    same = (person_ids[:, None] == person_ids[None, :]) & upper
    diff = (person_ids[:, None] != person_ids[None, :]) & upper

    def mean(mask):
        count = jnp.sum(mask)
        return jnp.where(count > 0, jnp.sum(jnp.where(mask, values, 0.0)) / jnp.maximum(count, 1), jnp.nan), count

    (ms, ns), (md, nd) = mean(same), mean(diff)
    return BCSummary(ms, md, ns, nd, values, diff, same)


def bc_same_different(
    maps: jax.Array, person_ids: jax.Array, *, valid: jax.Array | None = None, top_percent: float | None = None
) -> BCSummary:
    """Mean BC of same-person pairs vs different-person pairs. maps [N, H, W], ids [N]."""
    if person_ids.shape != maps.shape[:1]:
        raise ValueError(f"person_ids must be [{maps.shape[0]}], got {person_ids.shape}")
    return same_different(bc_matrix(maps, top_percent=top_percent), person_ids, valid=valid)


def layer_diversity(per_layer: jax.Array, *, top_percent: float | None = None) -> tuple[jax.Array, jax.Array]:
    """BC between the layer maps of each image.

    Args:
      per_layer: [B, L, H, W].

    Returns:
      (bc [B, L, L], mean_offdiag [B]): the mean off-diagonal BC; diversity is 1 - that.
    """
    b, n = per_layer.shape[:2]
    roots = jnp.sqrt(jnp.maximum(sparsify(per_layer, top_percent), 0)).reshape(b, n, -1)
    bc = jnp.einsum("blp,bmp->blm", roots, roots)
    off = ~jnp.eye(n, dtype=bool)
    return bc, jnp.sum(jnp.where(off, bc, 0.0), axis=(1, 2)) / max(n * (n - 1), 1)


def model_agreement(maps_a: jax.Array, maps_b: jax.Array, *, top_percent: float | None = None) -> jax.Array:
    """BC between two models' overall maps of the same images (same frame). [B, H, W] x2 -> [B]."""
    return bhattacharyya(maps_a, maps_b, top_percent=top_percent)


# ---------------------------------------------------------------------------
# Occlusion.


def random_masks(key: jax.Array, shape: tuple[int, int, int], percent: float) -> jax.Array:
    """Masks of exactly as many uniformly random pixels as ``top_percent_mask``. -> [B, H, W]."""
    return top_percent_mask(jax.random.uniform(key, shape), percent)


def gaussian_blur(images: jax.Array, sigma: float) -> jax.Array:
    """Separable Gaussian blur of [B, H, W, C] images (edges replicated)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    k = jnp.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    c = images.shape[-1]
    img = jnp.pad(images.astype(jnp.float32), ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="edge")
    for shape in ((-1, 1, 1, 1), (1, -1, 1, 1)):  # rows, then columns; depthwise (one group per channel)
        kernel = jnp.tile(k.reshape(shape), (1, 1, 1, c))
        img = jax.lax.conv_general_dilated(img, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           feature_group_count=c)
    return img


def occlude(
    images: jax.Array, masks: jax.Array, *, fill: str = DEFAULT_FILL, key: jax.Array | None = None, blur_sigma: float = 8.0
) -> jax.Array:
    """Replace masked pixels. images [B, H, W, C] (0..255), masks [B, H, W] bool.

    fill: ``zero`` (black), ``mean`` (the image's mean colour), ``blur``
    (a Gaussian-blurred copy, ``blur_sigma`` px), ``noise`` (uniform 0..255, needs ``key``).
    """
    x = images.astype(jnp.float32)
    if masks.shape != x.shape[:3]:
        raise ValueError(f"masks must be [B, H, W] = {x.shape[:3]}, got {masks.shape}")
    if fill == "zero":
        filler = jnp.zeros_like(x)
    elif fill == "mean":
        filler = jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
    elif fill == "blur":
        filler = gaussian_blur(x, blur_sigma)
    elif fill == "noise":
        if key is None:
            raise ValueError("fill='noise' needs a PRNG key")
        filler = jax.random.uniform(key, x.shape, minval=0.0, maxval=255.0)
    else:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    return jnp.where(masks[..., None], filler, x)


def cosine(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.sum(l2_normalize(a) * l2_normalize(b), axis=-1)


def occlusion_delta(
    embed_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    masks: jax.Array,
    references: jax.Array,
    *,
    fill: str = DEFAULT_FILL,
    key: jax.Array | None = None,
    clean_embeddings: jax.Array | None = None,
) -> jax.Array:
    """``Δcos = cos(e(x), r) - cos(e(x_occ), r)`` per image. -> [B]."""
    clean = embed_fn(images) if clean_embeddings is None else clean_embeddings
    occluded = embed_fn(occlude(images, masks, fill=fill, key=key))
    return cosine(clean, references) - cosine(occluded, references)


def occlusion_deltas(
    embed_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    masks: jax.Array,
    references: jax.Array,
    *,
    fill: str = DEFAULT_FILL,
    keys: jax.Array | None = None,
    clean_embeddings: jax.Array | None = None,
) -> jax.Array:
    """:func:`occlusion_delta` of the same B images under V masks [V, B, H, W] (``keys``: [V] fill
    keys for ``noise``) as one compiled loop over the masks: one program and one host transfer
    instead of V. -> [V, B]."""
    clean = embed_fn(images) if clean_embeddings is None else clean_embeddings
    if masks.ndim != 4:
        raise ValueError(f"masks must be [V, B, H, W], got {masks.shape}")
    if keys is None:
        keys = jnp.zeros((masks.shape[0], 2), jnp.uint32)  # unused by every fill but noise

    def one(args):
        m, k = args
        return occlusion_delta(embed_fn, images, m, references, fill=fill, key=k, clean_embeddings=clean)

    return jax.lax.map(one, (masks, keys))


def random_occlusion_masks(keys: jax.Array, shape: tuple[int, int, int], percent: float) -> tuple[jax.Array, jax.Array]:
    """The matched random baseline's draws: each key of ``keys`` [S] split into a mask key and a
    fill key. -> (masks [S, B, H, W] of as many pixels as a top-``percent``% mask, fill keys [S])."""
    masks, fill_keys = [], []
    for k in keys:
        mk, fk = jax.random.split(k)
        masks.append(random_masks(mk, shape, percent))
        fill_keys.append(fk)
    return jnp.stack(masks), jnp.stack(fill_keys)


def random_occlusion_delta(
    embed_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    percent: float,
    references: jax.Array,
    keys: jax.Array,
    *,
    fill: str = DEFAULT_FILL,
    clean_embeddings: jax.Array | None = None,
) -> jax.Array:
    """The matched random baseline: Δcos for random masks of the same pixel count as a
    top-``percent``% mask, averaged over the draws. -> [B].

    ``keys``: one PRNG key per draw ([S] keys, e.g. ``jax.random.split(key, S)``); each
    draw's key is split into its mask key and its fill key.
    """
    masks, fill_keys = random_occlusion_masks(keys, images.shape[:3], percent)
    return jnp.mean(occlusion_deltas(embed_fn, images, masks, references, fill=fill, keys=fill_keys,
                                     clean_embeddings=clean_embeddings), axis=0)


# ---------------------------------------------------------------------------
# Region statistics (maps and a label map in the same frame).


@functools.partial(jax.tree_util.register_dataclass, data_fields=["share", "mass", "area"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class RegionStats:
    """Per-image region statistics for C classes and P top-percent thresholds.

    share: [B, P, C] fraction of each map's top-p% pixels that fall in class c.
    mass:  [B, C] map mass in class c.
    area:  [B, C] fraction of the frame's pixels in class c.
    Enrichment is ``share / area`` (left to the caller: area may be 0).
    """

    share: jax.Array
    mass: jax.Array
    area: jax.Array


def region_stats(maps: jax.Array, labels: jax.Array, *, num_classes: int, percents: tuple[float, ...]) -> RegionStats:
    """Critical-region shares, mass and area per class. maps [B, H, W], labels [B, H, W] ints."""
    if maps.shape != labels.shape or maps.ndim != 3:
        raise ValueError(f"maps and labels must both be [B, H, W], got {maps.shape} and {labels.shape}")
    b, h, w = maps.shape
    flat_labels = labels.reshape(b, -1).astype(jnp.int32)
    per_class = jax.vmap(lambda v, lab: jax.ops.segment_sum(v, lab, num_segments=num_classes))
    mass = per_class(maps.reshape(b, -1).astype(jnp.float32), flat_labels)
    area = per_class(jnp.ones((b, h * w), jnp.float32), flat_labels) / (h * w)
    shares = []
    for p in percents:
        top = top_percent_mask(maps, p).reshape(b, -1).astype(jnp.float32)
        shares.append(per_class(top, flat_labels) / top_k_count(h * w, p))
    return RegionStats(jnp.stack(shares, axis=1), mass, area)


# ---------------------------------------------------------------------------
# Verification: scores of all pairs, ROC AUC, TAR at a FAR.


def pair_scores(emb: jax.Array, person_ids: jax.Array, *, metric: str = "cosine") -> tuple[jax.Array, jax.Array]:
    """Similarity of every pair i < j of [N, D] embeddings and whether it is a same-person pair.

    metric: ``cosine`` (higher = more similar) or ``euclidean`` (negated distance).
    Returns (scores [N(N-1)/2], same [N(N-1)/2] bool), pairs in ``triu_indices`` order.
    """
    emb = jnp.asarray(emb, jnp.float32)
    if metric == "cosine":
        unit = l2_normalize(emb)
        sim = unit @ unit.T
    elif metric == "euclidean":
        sq = jnp.sum(emb * emb, axis=-1)
        sim = -jnp.sqrt(jnp.maximum(sq[:, None] + sq[None, :] - 2 * emb @ emb.T, 0.0))
    else:
        raise ValueError(f"metric must be cosine or euclidean, got {metric!r}")
    i, j = jnp.triu_indices(emb.shape[0], 1)
    ids = jnp.asarray(person_ids)
    return sim[i, j], ids[i] == ids[j]


def roc_auc(scores: jax.Array, positive: jax.Array) -> jax.Array:
    """Area under the ROC curve: P(positive score > negative score), ties counted half
    (the Mann-Whitney U statistic). NaN without positives or negatives."""
    scores, positive = jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool)
    n_pos, n_neg = jnp.sum(positive), jnp.sum(~positive)
    # Negatives sorted, positives' rows pushed past them: counts by binary search, exact in int32.
    neg = jnp.sort(jnp.where(positive, jnp.inf, scores))
    below = jnp.searchsorted(neg, scores, side="left")
    equal = jnp.minimum(jnp.searchsorted(neg, scores, side="right"), n_neg) - below
    per_pos = (below + 0.5 * equal) / jnp.maximum(n_neg, 1)
    auc = jnp.sum(jnp.where(positive, per_pos, 0.0)) / jnp.maximum(n_pos, 1)
    return jnp.where((n_pos > 0) & (n_neg > 0), auc, jnp.nan)


def threshold_at_far(scores: jax.Array, positive: jax.Array, far: float = 0.01) -> jax.Array:
    """The accept threshold at which at most ``far`` of the negatives score strictly above it: the
    ``floor(far * n_neg)``-th best negative score (0-based; -inf when that is past the last)."""
    scores, positive = jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool)
    n_neg = jnp.sum(~positive)
    neg_desc = -jnp.sort(jnp.where(positive, jnp.inf, -scores))  # negatives first, best first
    k = jnp.floor(far * n_neg).astype(jnp.int32)
    return jnp.where(k < n_neg, neg_desc[jnp.minimum(k, scores.shape[0] - 1)], -jnp.inf)


def tar_at_far(scores: jax.Array, positive: jax.Array, far: float = 0.01) -> jax.Array:
    """True-accept rate at :func:`threshold_at_far` (accepted: strictly above it)."""
    scores, positive = jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool)
    threshold = threshold_at_far(scores, positive, far)
    n_pos = jnp.sum(positive)
    tar = jnp.sum(positive & (scores > threshold)) / jnp.maximum(n_pos, 1)
    return jnp.where(n_pos > 0, tar, jnp.nan)


# ---------------------------------------------------------------------------
# Validity (LEAM_SPEC.md section 6): effect sizes with person-bootstrap intervals,
# rank agreement of maps, area under the deletion curve. The array functions are jitted: one
# compiled program per shape instead of dozens of eager ops in the study's per-layer loops.


def _count_dtype(weights: jax.Array) -> jax.Array:
    """Integer/bool weights as int32 (their cumulative sums stay exact), others as float32."""
    w = jnp.asarray(weights)
    return w.astype(jnp.int32 if w.dtype == bool or jnp.issubdtype(w.dtype, jnp.integer) else jnp.float32)


def _tie_bounds(sorted_scores: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each element's tie group ``[left, right)`` in an ascending [M] array (running max / min of
    the group starts and ends: 5x faster on CPU than two binary searches)."""
    k = jnp.arange(sorted_scores.shape[0], dtype=jnp.int32)
    lo, hi = sorted_scores[:-1], sorted_scores[1:]
    differs = (hi != lo) & ~(jnp.isnan(hi) & jnp.isnan(lo))  # NaNs (sorted last) tie, as in a binary search
    start = jnp.concatenate([jnp.ones((1,), bool), differs])
    end = jnp.concatenate([differs, jnp.ones((1,), bool)])
    return (jax.lax.cummax(jnp.where(start, k, 0)),
            jax.lax.cummin(jnp.where(end, k + 1, sorted_scores.shape[0]), reverse=True))


def _sorted_auc(positive: jax.Array, weights: jax.Array, left: jax.Array, right: jax.Array) -> jax.Array:
    """Weighted AUC of [M] scores already sorted ascending, given their tie groups (:func:`_tie_bounds`)."""
    neg = jnp.where(positive, 0, weights)
    cum = jnp.concatenate([jnp.zeros((1,), neg.dtype), jnp.cumsum(neg)])  # cum[k]: negative weight before k
    # Negative weight strictly below plus half the tied: (cum[left] + cum[right]) / 2.
    beaten = cum[left].astype(jnp.float32) + cum[right].astype(jnp.float32)
    w = jnp.where(positive, weights.astype(jnp.float32), 0.0)
    w_pos, w_neg = jnp.sum(w), cum[-1].astype(jnp.float32)
    # One scalar division at the end: XLA turns x / scalar into x * (1 / scalar), which would make
    # a perfect separation 0.99999994.
    auc = 0.5 * jnp.sum(w * beaten) / jnp.where((w_pos > 0) & (w_neg > 0), w_pos * w_neg, 1.0)
    return jnp.where((w_pos > 0) & (w_neg > 0), auc, jnp.nan)


@jax.jit
def weighted_roc_auc(scores: jax.Array, positive: jax.Array, weights: jax.Array) -> jax.Array:
    """ROC AUC with non-negative per-item weights, ties counted half, in O(M log M).

    ``sum_{pos i, neg j} w_i w_j ([s_i > s_j] + [s_i == s_j] / 2) / (W_pos W_neg)``; with unit
    weights this is :func:`roc_auc`, with integer weights it equals repeating the items.

    Args:
      scores: [M] higher = more likely positive.
      positive: [M] bool.
      weights: [M] >= 0, integer ones summed exactly in int32; items of weight 0 are ignored, even if NaN.

    Returns:
      Scalar; NaN when either side has zero total weight.
    """
    scores, positive, weights = jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool), _count_dtype(weights)
    if scores.ndim != 1 or positive.shape != scores.shape or weights.shape != scores.shape:
        raise ValueError(f"need [M] scores, positive and weights, got {scores.shape}, {positive.shape}, {weights.shape}")
    order = jnp.argsort(scores)
    left, right = _tie_bounds(scores[order])
    return _sorted_auc(positive[order], weights[order], left, right)


@jax.jit
def cohens_d(values: jax.Array, positive: jax.Array, weights: jax.Array | None = None) -> jax.Array:
    """Cohen's d of positives vs negatives: ``(mean_1 - mean_0) / pooled SD``.

    ``pooled SD = sqrt(((n1 - 1) s1^2 + (n0 - 1) s0^2) / (n1 + n0 - 2))`` with unbiased variances.
    Weights are frequency weights (counts and sums weighted), so integer weights equal repeating rows.

    Args:
      values: [M].
      positive: [M] bool.
      weights: [M] >= 0, or None for all ones; items of weight 0 are ignored, even if NaN.

    Returns:
      Scalar; NaN when a side has total weight < 2 or the pooled SD is zero (within float32
      rounding of the largest |value|, so constant groups give NaN, not a huge d).
    """
    values, positive = jnp.asarray(values, jnp.float32), jnp.asarray(positive, bool)
    w = jnp.ones_like(values) if weights is None else jnp.asarray(weights, jnp.float32)
    if values.ndim != 1 or positive.shape != values.shape or w.shape != values.shape:
        raise ValueError(f"need [M] values, positive and weights, got {values.shape}, {positive.shape}, {w.shape}")
    values = jnp.where(w > 0, values, 0.0)  # unweighted items (e.g. NaN rows) must not give 0 * NaN

    def moments(side):
        ws = jnp.where(side, w, 0.0)
        n = jnp.sum(ws)
        mean = jnp.sum(ws * values) / jnp.where(n > 0, n, 1.0)
        return n, mean, jnp.sum(ws * (values - mean) ** 2)  # two passes: no cancellation

    (n1, m1, ss1), (n0, m0, ss0) = moments(positive), moments(~positive)
    pooled = jnp.sqrt((ss1 + ss0) / jnp.maximum(n1 + n0 - 2, 1e-30))
    scale = jnp.max(jnp.where(w > 0, jnp.abs(values), 0.0))
    ok = (n1 >= 2) & (n0 >= 2) & (pooled > 8 * jnp.finfo(jnp.float32).eps * scale)
    return jnp.where(ok, (m1 - m0) / jnp.where(ok, pooled, 1.0), jnp.nan)


def _resample_counts(key: jax.Array, num_people: int | jax.Array, capacity: int, num_draws: int) -> jax.Array:
    """[num_draws, capacity] int32: how often each of the first ``num_people`` (may be traced,
    <= capacity) people is drawn when ``num_people`` are drawn with replacement."""
    draws = jax.random.randint(key, (num_draws, capacity), 0, jnp.maximum(num_people, 1))
    used = (jnp.arange(capacity) < num_people).astype(jnp.int32)  # only the first num_people draws count
    return jax.vmap(lambda d: jax.ops.segment_sum(used, d, num_segments=capacity))(draws)


def _pair_weights(counts: jax.Array, person_a: jax.Array, person_b: jax.Array) -> jax.Array:
    """Cluster-bootstrap weight of each pair from person counts: [..., P] -> [..., M]."""
    ca, cb = counts[..., person_a], counts[..., person_b]
    return jnp.where(person_a == person_b, ca, ca * cb)


@functools.partial(jax.jit, static_argnames=("num_people", "num_draws"))
def person_bootstrap_weights(
    key: jax.Array, person_a: jax.Array, person_b: jax.Array, num_people: int, num_draws: int
) -> jax.Array:
    """Cluster (person) bootstrap weights for statistics over pairs.

    Each draw resamples the ``num_people`` people with replacement, as
    ``jax.random.randint(key, (num_draws, num_people), 0, num_people)``, giving counts
    ``c_p ~ Multinomial(P, 1/P)``. A copy of a person brings all of that person's images, so:
    a same-person pair (a == b) is counted once per copy, weight ``c_a`` (an image is not paired
    with its own copy); a different-person pair once per combination of copies, ``c_a * c_b``.

    Args:
      key: PRNG key.
      person_a, person_b: [M] ints in ``[0, num_people)``, the two people of each pair.
      num_people: P (static).
      num_draws: D (static).

    Returns:
      [D, M] int32 weights.
    """
    person_a, person_b = jnp.asarray(person_a, jnp.int32), jnp.asarray(person_b, jnp.int32)
    if person_a.ndim != 1 or person_a.shape != person_b.shape:
        raise ValueError(f"person_a and person_b must both be [M], got {person_a.shape} and {person_b.shape}")
    if num_people < 1 or num_draws < 1:
        raise ValueError(f"need num_people >= 1 and num_draws >= 1, got {num_people} and {num_draws}")
    return _pair_weights(_resample_counts(key, num_people, num_people, num_draws), person_a, person_b)


@functools.partial(jax.jit, static_argnames=("num_people", "num_draws"))
def person_bootstrap_mean(key: jax.Array, values: jax.Array, person_ids: jax.Array, num_people: int,
                          num_draws: int = 2000) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean of per-image ``values`` [N] and its 95% percentile interval under the person bootstrap
    (:func:`person_bootstrap_weights`: a drawn person brings all their images). NaN values are left out.

    Returns (mean, low, high).
    """
    values = jnp.asarray(values, jnp.float32)
    ok = jnp.isfinite(values)
    ids = jnp.asarray(person_ids, jnp.int32)
    w = person_bootstrap_weights(key, ids, ids, num_people, num_draws) * ok  # [D, N]
    v = jnp.where(ok, values, 0.0)
    means = (w @ v) / jnp.maximum(jnp.sum(w, axis=1), 1)
    means = jnp.where(jnp.sum(w, axis=1) > 0, means, jnp.nan)
    mean = jnp.sum(v) / jnp.maximum(jnp.sum(ok), 1)
    low, high = jnp.nanpercentile(means, jnp.array([2.5, 97.5]))
    return jnp.where(jnp.any(ok), mean, jnp.nan), low, high


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["auc", "auc_low", "auc_high", "d", "d_low", "d_high", "mean_same", "mean_diff", "n_same", "n_diff"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class Specificity:
    """Person-specificity of a pairwise score (all fields scalars).

    ``auc``: AUC of the score as a same-person detector (0.5 = no person signal); ``d``: Cohen's
    d of same vs different pairs; ``*_low``/``*_high``: percentile person-bootstrap interval;
    ``mean_same``/``mean_diff``: mean score; ``n_same``/``n_diff``: number of pairs counted.
    """

    auc: jax.Array
    auc_low: jax.Array
    auc_high: jax.Array
    d: jax.Array
    d_low: jax.Array
    d_high: jax.Array
    mean_same: jax.Array
    mean_diff: jax.Array
    n_same: jax.Array
    n_diff: jax.Array


def _dense_people(person_ids: jax.Array, member: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Members' person ids relabelled 0..P-1, non-members P; P is traced. [N] x2 -> ([N] int32, scalar)."""
    order = jnp.lexsort((person_ids, ~member))  # members first, by id
    ids, inside = person_ids[order], member[order]
    new = inside & jnp.concatenate([jnp.ones((1,), bool), ids[1:] != ids[:-1]])
    num_people = jnp.sum(new, dtype=jnp.int32)
    dense = jnp.where(inside, jnp.cumsum(new, dtype=jnp.int32) - 1, num_people)
    return jnp.zeros_like(dense).at[order].set(dense), num_people


# Above this many people the grouped bootstrap's tables (people x person pairs) outgrow the pairs.
GROUPED_MAX_PEOPLE = 256


def _pair_effects(scores, keep, same, a, b, left, right, counts, chunk):
    """AUC and d of every row of ``counts`` [D, n], pair by pair: O(M) per draw."""
    def effect(c):  # AUC and d with each person counted c_p times
        w = jnp.where(keep, _pair_weights(c, a, b), 0)
        return _sorted_auc(same, w, left, right), cohens_d(scores, same, w)

    rows = counts.shape[0]
    chunk = min(chunk, rows)
    num_chunks = -(-rows // chunk)  # chunks of equal size (one compiled body); padded rows give NaN
    counts = jnp.pad(counts, ((0, num_chunks * chunk - rows), (0, 0))).reshape(num_chunks, chunk, -1)
    return tuple(x.reshape(-1)[:rows] for x in jax.lax.map(jax.vmap(effect), counts))


def _group_moments(scores, member, group, num_groups):
    """Pair count, mean, centred sum of squares and largest |score| of each group's member pairs."""
    s = jnp.where(member, scores, 0.0)
    n = jax.ops.segment_sum(member.astype(jnp.float32), group, num_groups)
    mean = jax.ops.segment_sum(s, group, num_groups) / jnp.maximum(n, 1.0)
    m2 = jax.ops.segment_sum(jnp.where(member, (s - mean[group]) ** 2, 0.0), group, num_groups)
    return n, mean, m2, jnp.maximum(jax.ops.segment_max(jnp.abs(s), group, num_groups), 0.0)


def _weighted_side(weights, moments):
    """Total weight, mean, centred sum of squares and largest |score| of one side under group
    weights [D, G]: the groups' moments combined exactly (no one-pass cancellation)."""
    n, mean, m2, big = moments
    wn = weights * n
    total = wn.sum(-1)
    mu = (wn * mean).sum(-1) / jnp.where(total > 0, total, 1.0)
    ss = (weights * (m2 + n * (mean - mu[:, None]) ** 2)).sum(-1)
    return total, mu, ss, jnp.max(jnp.where(wn > 0, big, 0.0), axis=-1)


def _beaten_table(pos, neg, a, left, right, neg_group, num_people, num_groups):
    """[P, G]: for person p and person pair g, the sum over p's same-person pairs (``pos``) and g's
    pairs (``neg``) of [same > different] + [same == different] / 2. A few people at a time, O(P M)."""
    block = max(1, min(8, num_people, (1 << 22) // max(pos.shape[0], 1)))

    def rows(p0):  # above[j, k]: person p0 + k's same-person pairs above pair j, ties half
        mine = pos[:, None] & (a[:, None] == p0 + jnp.arange(block)[None, :])
        cum = jnp.concatenate([jnp.zeros((1, block), jnp.int32), jnp.cumsum(mine, axis=0, dtype=jnp.int32)])
        above = cum[-1][None, :] - 0.5 * (cum[left] + cum[right]).astype(jnp.float32)
        return jax.ops.segment_sum(jnp.where(neg[:, None], above, 0.0), neg_group, num_groups).T

    starts = jnp.arange(0, num_people, block)
    return jax.lax.map(rows, starts).reshape(-1, num_groups)[:num_people]


def _grouped_effects(scores, keep, same, a, b, left, right, counts, num_people):
    """The same AUC and d as :func:`_pair_effects`, from per-group totals. A draw weighs all of a
    person's same-person pairs by c_p and all pairs of people q, r by c_q c_r, so the moments of
    each group and one [P, P^2] table of AUC counts are computed once; a draw then costs O(P^3)."""
    P, G = num_people, num_people * num_people
    pos, neg = keep & same, keep & ~same
    pos_group = jnp.where(pos, jnp.minimum(a, P - 1), 0)
    neg_group = jnp.where(neg, jnp.minimum(a, P - 1) * P + jnp.minimum(b, P - 1), 0)
    table = _beaten_table(pos, neg, a, left, right, neg_group, P, G)
    pos_moments, neg_moments = _group_moments(scores, pos, pos_group, P), _group_moments(scores, neg, neg_group, G)

    def effect(c):  # [D, P] counts -> AUC, d [D]
        w_pos, w_neg = c, (c[:, :, None] * c[:, None, :]).reshape(-1, G)
        n1, m1, ss1, big1 = _weighted_side(w_pos, pos_moments)
        n0, m0, ss0, big0 = _weighted_side(w_neg, neg_moments)
        both = (n1 > 0) & (n0 > 0)
        auc = jnp.where(both, jnp.sum((w_pos @ table) * w_neg, -1) / jnp.where(both, n1 * n0, 1.0), jnp.nan)
        pooled = jnp.sqrt((ss1 + ss0) / jnp.maximum(n1 + n0 - 2, 1e-30))  # as cohens_d
        ok = (n1 >= 2) & (n0 >= 2) & (pooled > 8 * jnp.finfo(jnp.float32).eps * jnp.maximum(big1, big0))
        return auc, jnp.where(ok, (m1 - m0) / jnp.where(ok, pooled, 1.0), jnp.nan)

    rows = counts.shape[0]
    chunk = min(rows, max(1, (1 << 22) // G))  # draws at once: [chunk, G] weights stay ~16 MB
    num_chunks = -(-rows // chunk)
    c = jnp.pad(counts[:, :P].astype(jnp.float32), ((0, num_chunks * chunk - rows), (0, 0)))
    return tuple(x.reshape(-1)[:rows] for x in jax.lax.map(effect, c.reshape(num_chunks, chunk, P)))


def _scope_specificity(scores, i, j, left, right, valid, person_ids, in_scope, key, *, num_draws, level, chunk,
                       max_people) -> Specificity:
    """:func:`person_specificity` of one scope: sorted pair scores [M] with their rows ``i``, ``j`` and
    tie groups, the scope's pairs ``in_scope`` [M]."""
    n = valid.shape[0]
    keep = valid[i] & valid[j] & in_scope
    member = jnp.zeros((n,), jnp.int32).at[i].add(keep).at[j].add(keep) > 0
    people, num_people = _dense_people(person_ids, member)
    a, b = people[i], people[j]
    same = a == b
    # Row 0 counts everyone once (the sample itself: the point estimate), then the draws.
    counts = jnp.concatenate([jnp.ones((1, n), jnp.int32), _resample_counts(key, num_people, n, num_draws)])
    if max_people is None:
        aucs, ds = _pair_effects(scores, keep, same, a, b, left, right, counts, chunk)
    else:
        aucs, ds = _grouped_effects(scores, keep, same, a, b, left, right, counts, min(max_people, n))
        aucs, ds = (jnp.where(num_people <= max_people, x, jnp.nan) for x in (aucs, ds))
    (auc, aucs), (d, ds) = (aucs[0], aucs[1:]), (ds[0], ds[1:])
    q = jnp.array([(1 - level) / 2, (1 + level) / 2], jnp.float32)
    (auc_low, auc_high), (d_low, d_high) = jnp.nanquantile(aucs, q), jnp.nanquantile(ds, q)
    n_same, n_diff = jnp.sum(keep & same), jnp.sum(keep & ~same)

    def mean(mask, count):
        return jnp.where(count > 0, jnp.sum(jnp.where(mask, scores, 0.0)) / jnp.maximum(count, 1), jnp.nan)

    return Specificity(auc, auc_low, auc_high, d, d_low, d_high, mean(keep & same, n_same),
                       mean(keep & ~same, n_diff), n_same, n_diff)


@functools.partial(jax.jit, static_argnames=("num_draws", "level", "chunk", "max_people"))
def person_specificity(
    values: jax.Array,
    person_ids: jax.Array,
    *,
    key: jax.Array,
    num_draws: int = 1000,
    valid: jax.Array | None = None,
    pair_mask: jax.Array | None = None,
    level: float = 0.95,
    chunk: int = 4,
    max_people: int | None = None,
) -> Specificity:
    """AUC and Cohen's d of a pairwise score as a same-person detector, with person-bootstrap intervals.

    Pairs are i < j of valid rows (and ``pair_mask[i, j]``, e.g. only pairs within one source set);
    same-person pairs are the positives. Intervals are percentile intervals at ``level`` over
    ``num_draws`` resamples of the people that have at least one counted pair (weights as in
    :func:`person_bootstrap_weights`; draws with no pair on a side are dropped).

    Two exact ways to evaluate the draws (equal to float32 rounding; tests compare them):
    - pair by pair (default): ``chunk`` draws at a time (memory ~ chunk x M x 24 bytes for
      M = N(N-1)/2 pairs); the results do not depend on ``chunk``. Small chunks keep each draw's
      passes over the pairs in cache: on a 2-core CPU, 466 faces (M = 108k) took 5.4 ms per draw
      at chunk 50 and 1.5-2.2 at 2-8; 1500 faces 19-23.
    - grouped (``max_people`` given, at least the number of distinct ``person_ids``): per-person
      and per-person-pair totals, computed once in O(P M), then O(P^3) per draw. For 466 faces of
      50 people, 1000 draws took 0.09 s instead of 1.0 s. Worth it for many draws over up to a few
      hundred people (:data:`GROUPED_MAX_PEOPLE`); with more people than ``max_people`` every
      result is NaN.

    Compiled once per shape and (static) ``num_draws``, ``level``, ``chunk`` and ``max_people``.

    Args:
      values: [N, N] pairwise score (e.g. :func:`bc_matrix`), read above the diagonal.
      person_ids: [N] ints.
      key: PRNG key of the bootstrap.
      valid: [N] bool, rows to use (default all).
      pair_mask: [N, N] bool, pairs to use (default all); or [S, N, N]: S scopes of pairs (e.g. all
        pairs, and only pairs within one source set) from one sort of the scores, every field of the
        result then [S].
    """
    n = values.shape[0]
    if values.shape != (n, n) or person_ids.shape != (n,):
        raise ValueError(f"need values [N, N] and person_ids [N], got {values.shape} and {person_ids.shape}")
    if pair_mask is not None and (pair_mask.ndim not in (2, 3) or pair_mask.shape[-2:] != (n, n)):
        raise ValueError(f"pair_mask must be [{n}, {n}] or [S, {n}, {n}], got {pair_mask.shape}")
    if not 0 < level < 1 or num_draws < 1 or chunk < 1:
        raise ValueError(f"need 0 < level < 1, num_draws >= 1, chunk >= 1; got {level}, {num_draws}, {chunk}")
    if max_people is not None and max_people < 1:
        raise ValueError(f"max_people must be at least 1, got {max_people}")
    valid = jnp.ones((n,), bool) if valid is None else jnp.asarray(valid, bool)
    person_ids = jnp.asarray(person_ids)
    # Sort the pairs once; every scope and draw only reweights them (static shapes: dropped pairs weigh 0).
    i, j = jnp.triu_indices(n, 1)
    scores = jnp.asarray(values, jnp.float32)[i, j]
    order = jnp.argsort(scores)
    scores, i, j = scores[order], i[order], j[order]
    left, right = _tie_bounds(scores)

    def scope(in_scope):  # [M] bool over the sorted pairs
        return _scope_specificity(scores, i, j, left, right, valid, person_ids, in_scope, key,
                                  num_draws=num_draws, level=level, chunk=chunk, max_people=max_people)

    if pair_mask is None:
        return scope(jnp.ones(scores.shape, bool))
    pair_mask = jnp.asarray(pair_mask, bool)
    if pair_mask.ndim == 2:
        return scope(pair_mask[i, j])
    return jax.vmap(scope)(pair_mask[:, i, j])


def _average_ranks(x: jax.Array) -> jax.Array:
    """Ranks along the last axis, tied values sharing their mean rank, minus 1/2 (offsets cancel
    in a correlation). [K, n] -> [K, n] float32."""
    s = jnp.sort(x, axis=-1)
    bounds = jax.vmap(lambda row, srt: (jnp.searchsorted(srt, row, side="left"), jnp.searchsorted(srt, row, side="right")))
    left, right = bounds(x, s)
    return 0.5 * (left + right).astype(jnp.float32)  # 1-based mean rank is (left + right + 1) / 2


@jax.jit
def spearman(a: jax.Array, b: jax.Array) -> jax.Array:
    """Spearman rank correlation of two maps per leading index: [..., H, W] x2 -> [...].

    Ties share their average rank (maps after a ReLU hold many exact zeros), then Pearson on
    ranks, as ``scipy.stats.spearmanr``. NaN-free: a constant map (no rank spread) gives 0.
    """
    a, b = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)
    if a.shape != b.shape or a.ndim < 2:
        raise ValueError(f"need two maps [..., H, W] of one shape, got {a.shape} and {b.shape}")
    hw = a.shape[-2] * a.shape[-1]
    # Centred by their exact mean, hw / 2: a constant map's ranks become exactly 0.
    ra, rb = (_average_ranks(x.reshape(-1, hw)) - 0.5 * hw for x in (a, b))
    den = jnp.sqrt(jnp.sum(ra * ra, -1) * jnp.sum(rb * rb, -1))
    r = jnp.where(den > 0, jnp.sum(ra * rb, -1) / jnp.where(den > 0, den, 1.0), 0.0)
    return jnp.clip(r, -1.0, 1.0).reshape(a.shape[:-2])


def deletion_area(percents: tuple[float, ...] | jax.Array, deltas: jax.Array) -> jax.Array:
    """Area under a deletion curve ``Δcos(p)`` over the span of ``percents``, per curve.

    Trapezoid rule over the given percents, divided by ``p_max - p_min``: the curve's mean height
    over the span, in Δcos units (independent of whether p is in percent or fraction).

    Args:
      percents: [P] strictly increasing, P >= 2, concrete (a static tuple or array, not traced).
      deltas: [..., P] Δcos at each percent.

    Returns:
      [...].
    """
    if jnp.ndim(percents) != 1:
        raise ValueError(f"percents must be 1-D, got shape {jnp.shape(percents)}")
    try:
        p = tuple(float(x) for x in percents)
    except jax.errors.ConcretizationTypeError as e:
        raise ValueError("percents must be concrete (a static tuple or array), not traced") from e
    if len(p) < 2 or not all(math.isfinite(x) for x in p) or any(hi <= lo for lo, hi in zip(p, p[1:])):
        raise ValueError(f"percents must be >= 2 finite, strictly increasing values, got {p}")
    deltas = jnp.asarray(deltas, jnp.float32)
    if deltas.ndim < 1 or deltas.shape[-1] != len(p):
        raise ValueError(f"deltas must be [..., {len(p)}], got {deltas.shape}")
    widths = jnp.asarray([hi - lo for lo, hi in zip(p, p[1:])], jnp.float32)
    return jnp.sum(widths * 0.5 * (deltas[..., 1:] + deltas[..., :-1]), axis=-1) / (p[-1] - p[0])
