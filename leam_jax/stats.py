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
    clean = embed_fn(images) if clean_embeddings is None else clean_embeddings
    b, h, w = images.shape[:3]
    deltas = []
    for k in keys:
        mk, fk = jax.random.split(k)
        masks = random_masks(mk, (b, h, w), percent)
        deltas.append(occlusion_delta(embed_fn, images, masks, references, fill=fill, key=fk, clean_embeddings=clean))
    return jnp.mean(jnp.stack(deltas), axis=0)


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


def tar_at_far(scores: jax.Array, positive: jax.Array, far: float = 0.01) -> jax.Array:
    """True-accept rate at the threshold where at most ``far`` of negative pairs are accepted
    (scores strictly above the ``floor(far * n_neg)``-th best negative)."""
    scores, positive = jnp.asarray(scores, jnp.float32), jnp.asarray(positive, bool)
    n_neg = jnp.sum(~positive)
    neg_desc = -jnp.sort(jnp.where(positive, jnp.inf, -scores))  # negatives first, best first
    k = jnp.floor(far * n_neg).astype(jnp.int32)
    threshold = jnp.where(k < n_neg, neg_desc[jnp.minimum(k, scores.shape[0] - 1)], -jnp.inf)
    n_pos = jnp.sum(positive)
    tar = jnp.sum(positive & (scores > threshold)) / jnp.maximum(n_pos, 1)
    return jnp.where(n_pos > 0, tar, jnp.nan)
