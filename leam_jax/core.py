"""LEAM core: all-layer relevance maps from one forward and one backward pass.

Pure JAX (``jax``, ``jax.numpy`` and the standard library only), so it
composes into any JAX code. A model is any ``apply_fn(params, images,
perturbations=None) -> (embeddings [B, D], activations {tap: [B, H, W, C]})``
where ``perturbations`` (any subset of taps) is added at each tap. Flax NNX,
Flax Linen (``Module.perturb``) and Haiku models all fit (see
``leam_jax.adapters``).

Definitions follow LEAM_SPEC.md section 1:

* target score ``s`` per image (``identity``, ``self``, ``pair``, ``contrast``,
  and the person-contrastive ``population`` and ``identification``, which take a
  gallery of every person's reference);
* ``G_l = ds/dA_l`` for every tap at once: one ``jax.vjp`` with respect to
  zero perturbations at all taps;
* layer map ``M_l`` by ``gradcam``, ``layercam`` or ``gradxact`` (defaults:
  :data:`DEFAULT_TARGET`, :data:`DEFAULT_WEIGHTING`, chosen by measurement),
  resized bilinearly to the model input, normalised to sum to 1; an all-zero
  map stays zero and is flagged (never NaN);
* overall map = (weighted) mean of the normalised layer maps, renormalised.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from leam_jax.batching import Placement, batch_mesh  # noqa: F401 (batch_mesh: public API)

TARGETS = ("identity", "self", "pair", "contrast", "population", "identification")
GALLERY_TARGETS = ("population", "identification")  # scored against every person's reference
# identification's softmax temperature. Cosines between a face and the people of a gallery
# spread over roughly 0.1-0.5 for a trained model; at 0.05 the softmax weights the few most
# confusable people (e^(0.1/0.05) = 7.4x per 0.1 of cosine) instead of averaging everyone
# (a large tau tends to 'population') or only the single nearest (tau -> 0).
DEFAULT_TEMPERATURE = 0.05
WEIGHTINGS = ("gradcam", "layercam", "gradxact")
# The defaults of the API and the study, chosen by benchmarks/method_validity.py under the rule of
# BUILD.md ("Defaults by evidence"); every other target and weighting stays available and reported.
DEFAULT_TARGET = "population"
DEFAULT_WEIGHTING = "gradcam"
_EPS = 1e-12

# ---------------------------------------------------------------------------
# Compilation: jax.jit plus the XLA options the library's own functions need.

# jaxlib 0.10's CPU backend hands every f32 convolution to YNNPACK. On CPUs with
# avx512_bf16 that path is not float32-exact: IResNet-18's input gradient came out
# 2e-3 (relative L2) from float64 against 1e-6 with XLA's own convolutions, which
# were also faster for LEAM. The list is XLA's default (individual dots, reductions,
# individual convolutions) without individual convolutions, as
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution. A reduction's
# YNNPACK fusion can still take in the convolutions around it (dlib's average-pool skips:
# two fusions of 6-7 convolutions each); dlib's LEAM maps are as close to float64 either
# way (median 1.1e-6 of each map's maximum), and its LEAM passes were no faster without.
CPU_COMPILER_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
# Forward-only programs (the study's embedding pass, occlusion and transfer; the protection's
# evaluation) also keep reductions off YNNPACK, and with them the convolutions those fusions took in:
# dlib's forward at batch 32 took 89-94 instead of 131 ms, faceres 261 instead of 280, mobileface the
# same; embeddings within 5.4e-7 (relative). The LEAM pass keeps the options above: side by side its
# time was within 5% either way (dlib's LEAM set 370 vs 376 ms), and its gradients are the published maps.
FORWARD_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}


def compiler_options(cpu_options: dict | None = None) -> dict | None:
    """The XLA options :func:`jit` compiles with on the default backend (None off CPU):
    :data:`CPU_COMPILER_OPTIONS`, updated by ``cpu_options`` (a function's own choice).

    Pass them to your own ``jax.jit(..., compiler_options=...)`` when you wrap the
    core in an outer jit: the outermost jit's options are the ones XLA uses.
    """
    return {**CPU_COMPILER_OPTIONS, **(cpu_options or {})} if jax.default_backend() == "cpu" else None


def _tracing(args, kwargs) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))


class _Jit:
    """``jax.jit`` built on first call, so importing the library never initialises a backend."""

    def __init__(self, fn: Callable, kwargs: dict, cpu_options: dict | None = None):
        self._fn, self._kwargs, self._jitted, self._nested = fn, kwargs, None, None
        self._cpu_options = cpu_options
        functools.update_wrapper(self, fn)

    def __call__(self, *args, **kwargs):
        if _tracing(args, kwargs):
            # Inside the caller's own jit (or grad/vmap): XLA refuses options on a nested jit,
            # and the outermost jit's options are the ones that apply anyway.
            if self._nested is None:
                self._nested = jax.jit(self._fn, **self._kwargs)
            return self._nested(*args, **kwargs)
        if self._jitted is None:
            options = compiler_options(self._cpu_options)
            jitted = jax.jit(self._fn, compiler_options=options, **self._kwargs)
            try:
                out = jitted(*args, **kwargs)
            except jax.errors.JaxRuntimeError as e:
                if not options or not any(k in str(e) for k in options):
                    raise
                # A jaxlib that does not know the option: XLA's defaults, as plain jax.jit.
                jitted = jax.jit(self._fn, **self._kwargs)
                out = jitted(*args, **kwargs)
            self._jitted = jitted
            return out
        return self._jitted(*args, **kwargs)

    def lower(self, *args, **kwargs):
        """``jax.jit(...).lower`` with the library's options (memory and cost analysis)."""
        return jax.jit(self._fn, compiler_options=compiler_options(self._cpu_options), **self._kwargs).lower(*args, **kwargs)


def jit(fn: Callable | None = None, *, cpu_options: dict | None = None, **kwargs) -> Callable:
    """``jax.jit(fn, **kwargs)`` compiled with :func:`compiler_options` (also as a decorator);
    ``cpu_options`` updates the CPU options for this function alone."""
    if fn is None:
        return functools.partial(jit, cpu_options=cpu_options, **kwargs)
    return _Jit(fn, kwargs, cpu_options)


# ---------------------------------------------------------------------------
# Target scores: [B, D] embeddings (and references) -> [B] scores.


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / |x| along ``axis``; a zero vector stays zero (no NaN, finite gradient)."""
    sq = jnp.sum(x * x, axis=axis, keepdims=True)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, x * jax.lax.rsqrt(safe), 0.0)


def identity_score(emb: jax.Array, reference: jax.Array) -> jax.Array:
    """``<ê, r̂>``: cosine to the person's reference (a constant). [B, D], [B, D] -> [B]."""
    return jnp.sum(l2_normalize(emb) * jax.lax.stop_gradient(l2_normalize(reference)), axis=-1)


def self_score(emb: jax.Array) -> jax.Array:
    """``<e, sg(ê)>``: the embedding's length along its own direction. [B, D] -> [B]."""
    return jnp.sum(emb * jax.lax.stop_gradient(l2_normalize(emb)), axis=-1)


def pair_score(emb: jax.Array, other: jax.Array) -> jax.Array:
    """``<ê, sg(ê')>`` for a second image's embedding ``other``. [B, D], [B, D] -> [B]."""
    return identity_score(emb, other)


def contrast_score(emb: jax.Array, reference: jax.Array, negative: jax.Array) -> jax.Array:
    """``<ê, r̂_p> - <ê, r̂_q>``: what separates person p from person q. -> [B]."""
    return identity_score(emb, reference) - identity_score(emb, negative)


def _masked_gallery(gallery: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Unit gallery rows (a constant) and which rows exist (a zero row: no such person)."""
    g = jax.lax.stop_gradient(l2_normalize(gallery))
    return g, jnp.sum(g * g, axis=-1) > 0


def population_score(emb: jax.Array, reference: jax.Array, gallery: jax.Array, person_ids: jax.Array) -> jax.Array:
    """``<ê, r̂_p> - <ê, r̂_¬p>``: r_¬p is the mean of the other people's gallery references
    (each person once), renormalised. emb, reference [B, D]; gallery [P, D]; person_ids [B] -> [B]."""
    g, present = _masked_gallery(gallery)
    total = jnp.sum(jnp.where(present[:, None], g, 0.0), axis=0)
    others = total[None, :] - g[person_ids] * present[person_ids][:, None]
    return identity_score(emb, reference) - identity_score(emb, others)


def identification_score(emb: jax.Array, reference: jax.Array, gallery: jax.Array, person_ids: jax.Array,
                         temperature: float = DEFAULT_TEMPERATURE) -> jax.Array:
    """``log softmax_q(<ê, r̂_q> / τ)`` at q = p over the gallery [P, D], the own entry replaced by
    the leave-one-out ``reference`` [B, D]; absent (zero) gallery rows take no part. -> [B]."""
    g, present = _masked_gallery(gallery)
    own = identity_score(emb, reference) / temperature
    logits = (l2_normalize(emb) @ g.T) / temperature  # [B, P]
    mine = jnp.arange(g.shape[0])[None, :] == person_ids[:, None]
    logits = jnp.where(mine, own[:, None], jnp.where(present[None, :], logits, -jnp.inf))
    return own - jax.nn.logsumexp(logits, axis=-1)


def person_gallery(
    emb: jax.Array, person_ids: jax.Array, *, num_people: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Every person's reference: the mean of ``ê`` over their valid images, renormalised.

    Args:
      emb: [N, D] embeddings; person_ids: [N] ids in ``[0, num_people)``; valid: optional [N] bool.

    Returns:
      (gallery [num_people, D] unit rows, zero for a person without a valid image; counts [num_people]).
    """
    if emb.ndim != 2 or person_ids.shape != emb.shape[:1]:
        raise ValueError(f"need emb [N, D] and person_ids [N], got {emb.shape} and {person_ids.shape}")
    check_person_ids(person_ids, num_people)
    valid = jnp.ones(emb.shape[:1], bool) if valid is None else valid.astype(bool)
    valid = valid & _ids_in_range(person_ids, num_people)
    sums = jax.ops.segment_sum(l2_normalize(emb) * valid[:, None], person_ids, num_segments=num_people)
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), person_ids, num_segments=num_people)
    return l2_normalize(sums), counts


def dense_person_ids(person_ids) -> tuple[jax.Array, int]:
    """Any [N] integer ids (say 1001, 1002, 1001) -> (ids in ``[0, P)`` in sorted order of
    the raw ids, P). Eager only: P must be known to build the segment sums."""
    uniq, dense = jnp.unique(jnp.asarray(person_ids), return_inverse=True)
    return dense.reshape(-1).astype(jnp.int32), int(uniq.shape[0])


def check_person_ids(person_ids, num_people: int) -> None:
    """A clear error for concrete ids outside ``[0, num_people)``: segment sums would drop them
    and every reference would silently be wrong. (Traced ids cannot be checked here; out-of-range
    rows then get NaN scores, see :func:`target_scores`.)"""
    if person_ids is None or isinstance(person_ids, jax.core.Tracer):
        return
    ids = jnp.asarray(person_ids)
    if ids.size and (int(jnp.min(ids)) < 0 or int(jnp.max(ids)) >= num_people):
        raise ValueError(f"person_ids must be dense ids in [0, num_people={num_people}), got values from "
                         f"{int(jnp.min(ids))} to {int(jnp.max(ids))}; map raw ids with dense_person_ids()")


def _ids_in_range(person_ids: jax.Array, num_people: int) -> jax.Array:
    return (person_ids >= 0) & (person_ids < num_people)


def loo_references(
    emb: jax.Array, person_ids: jax.Array, *, num_people: int, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Leave-one-out identity references with segment sums (no loop over people).

    Args:
      emb: [N, D] embeddings.
      person_ids: [N] int ids in ``[0, num_people)`` (see :func:`dense_person_ids`).
      num_people: static number of segments.
      valid: optional [N] bool; invalid rows neither contribute nor get a reference.

    Returns:
      (references [N, D] unit vectors: the mean of ``ê`` over the person's
      *other* valid images, renormalised; has_reference [N] bool, False where
      the person has no other valid image, whose reference row is zero).
    """
    if emb.ndim != 2 or person_ids.shape != emb.shape[:1]:
        raise ValueError(f"need emb [N, D] and person_ids [N], got {emb.shape} and {person_ids.shape}")
    check_person_ids(person_ids, num_people)
    valid = jnp.ones(emb.shape[:1], bool) if valid is None else valid.astype(bool)
    valid = valid & _ids_in_range(person_ids, num_people)
    e_hat = l2_normalize(emb) * valid[:, None]
    sums = jax.ops.segment_sum(e_hat, person_ids, num_segments=num_people)
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), person_ids, num_segments=num_people)
    others = sums[person_ids] - e_hat
    has_ref = valid & (counts[person_ids] >= 2)
    return jnp.where(has_ref[:, None], l2_normalize(others), 0.0), has_ref


# ---------------------------------------------------------------------------
# Maps.


def layer_map(grad: jax.Array, act: jax.Array, weighting: str = DEFAULT_WEIGHTING) -> jax.Array:
    """One layer's map from its gradient and activation. [B, H, W, C] x2 -> [B, H, W]."""
    if grad.shape != act.shape or grad.ndim != 4:
        raise ValueError(f"grad and act must both be [B, H, W, C], got {grad.shape} and {act.shape}")
    if weighting == "gradcam":
        w = jnp.mean(grad, axis=(1, 2), keepdims=True)
        return jax.nn.relu(jnp.sum(w * act, axis=-1))
    if weighting == "layercam":
        return jnp.sum(jax.nn.relu(grad) * act, axis=-1)
    if weighting == "gradxact":
        return jnp.abs(jnp.sum(grad * act, axis=-1))
    raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")


def resize_maps(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize (half-pixel centres) of [B, H, W] maps to [B, *size], clipped at 0."""
    out = jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")
    # A layercam map over a signed activation can be negative; a distribution cannot.
    return jnp.maximum(out, 0.0)


def warp_affine(image: jax.Array, out_to_in: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Bilinear warp ``out[y, x] = image(out_to_in @ [x, y, 1])`` of one [H, W, C] image, in its dtype.

    As dlib's ``interpolate_bilinear``: a sample whose 2x2 neighbourhood is not wholly inside the image
    is 0 (no blending with the border). Linear in the image, so exactly differentiable; one gather of
    all C channels per corner (a per-channel gather under vmap was 4x slower on CPU for stacks of maps).
    The face pipeline's maps and the protection's photo-to-model views both warp with it.
    """
    h, w = out_shape
    ys, xs = jnp.meshgrid(jnp.arange(h, dtype=image.dtype), jnp.arange(w, dtype=image.dtype), indexing="ij")
    m = out_to_in
    src_x = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    src_y = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    h_in, w_in = image.shape[0], image.shape[1]
    inside = (src_x >= 0) & (src_y >= 0) & (src_x < w_in - 1) & (src_y < h_in - 1)
    x0, y0 = jnp.floor(src_x), jnp.floor(src_y)
    fx, fy = (src_x - x0)[..., None], (src_y - y0)[..., None]
    corner = jnp.clip(y0.astype(jnp.int32), 0, h_in - 2) * w_in + jnp.clip(x0.astype(jnp.int32), 0, w_in - 2)
    flat = image.reshape(h_in * w_in, -1)
    at = lambda offset: jnp.take(flat, corner + offset, axis=0)
    top = at(0) * (1.0 - fx) + at(1) * fx
    bottom = at(w_in) * (1.0 - fx) + at(w_in + 1) * fx
    return (top * (1.0 - fy) + bottom * fy) * inside[..., None]


def normalize_maps(maps: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each [..., H, W] map divided by its sum; all-zero (or non-finite) maps -> zeros, flagged.

    Returns (normalised maps, flags [...] True where the map was degenerate).
    """
    total = jnp.sum(maps, axis=(-2, -1), keepdims=True)
    bad = ~(total > _EPS) | ~jnp.isfinite(total)
    safe = jnp.where(bad, 1.0, total)
    return jnp.where(bad, 0.0, maps / safe), bad[..., 0, 0]


def overall_map(per_layer: jax.Array, layer_weights: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Weighted mean over layers of normalised maps, renormalised. [B, L, H, W] -> ([B, H, W], [B])."""
    n = per_layer.shape[1]
    w = jnp.ones((n,), per_layer.dtype) if layer_weights is None else jnp.asarray(layer_weights, per_layer.dtype)
    if w.shape != (n,):
        raise ValueError(f"layer_weights must have shape ({n},), got {w.shape}")
    mean = jnp.tensordot(per_layer, w, axes=([1], [0])) / jnp.maximum(jnp.sum(w), _EPS)
    return normalize_maps(mean)


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["per_layer", "overall", "flags", "overall_flags", "scores", "embeddings", "used_self"],
    meta_fields=["taps"],
)
@dataclasses.dataclass(frozen=True)
class LeamMaps:
    """Result of :func:`leam_maps` for a batch of B images and L taps.

    Attributes:
      per_layer: [B, L, S, S] normalised layer maps at the model input size.
      overall: [B, S, S] normalised overall map.
      flags: [B, L] True where a layer map was all zero (left zero, not NaN).
      overall_flags: [B] True where the overall map is all zero.
      scores: [B] the target score that was explained.
      embeddings: [B, D] the model's embeddings.
      used_self: [B] True where ``identity`` fell back to ``self`` (no other image).
      taps: the L tap names, in the order of ``per_layer``.
    """

    per_layer: jax.Array
    overall: jax.Array
    flags: jax.Array
    overall_flags: jax.Array
    scores: jax.Array
    embeddings: jax.Array
    used_self: jax.Array
    taps: tuple[str, ...]


def _has_reference(*, references, person_ids, num_people, valid):
    """[B] True where ``identity`` has a reference (else it explains ``self``)."""
    if references is not None:
        return jnp.sum(references * references, axis=-1) > 0
    counts = jax.ops.segment_sum(valid.astype(jnp.int32), person_ids, num_segments=num_people)
    return valid & (counts[person_ids] >= 2)


def _batch_references(emb, references, person_ids, num_people, valid):
    """(references [B, D], ids in range [B] or True): the given ones, or leave-one-out over the batch."""
    if references is not None:
        return references, True
    if person_ids is None:
        raise ValueError("this target needs references or person_ids")
    references, _ = loo_references(jax.lax.stop_gradient(emb), person_ids, num_people=num_people, valid=valid)
    return references, _ids_in_range(person_ids, num_people)


def _batch_gallery(emb, gallery, person_ids, num_people, valid):
    """(gallery [P, D], ids in range [B]): the given one, or every person's mean over the batch."""
    if person_ids is None:
        raise ValueError("targets 'population' and 'identification' need person_ids (rows of the gallery)")
    if gallery is None:
        gallery, _ = person_gallery(jax.lax.stop_gradient(emb), person_ids, num_people=num_people, valid=valid)
    return gallery, _ids_in_range(person_ids, gallery.shape[0])


def _person_scores(emb, target, references, gallery, person_ids, temperature):
    if target == "identity":
        return identity_score(emb, references)
    ids = jnp.clip(person_ids, 0, gallery.shape[0] - 1)  # out-of-range rows are NaN-ed by the caller
    if target == "population":
        return population_score(emb, references, gallery, ids)
    return identification_score(emb, references, gallery, ids, temperature)


def target_scores(
    emb: jax.Array,
    *,
    target: str = DEFAULT_TARGET,
    references: jax.Array | None = None,
    negatives: jax.Array | None = None,
    person_ids: jax.Array | None = None,
    num_people: int | None = None,
    valid: jax.Array | None = None,
    gallery: jax.Array | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> jax.Array:
    """The target score ``s`` of each image (LEAM_SPEC section 1). [B, D] -> [B].

    ``identity`` uses ``references`` [B, D] (a zero row: no reference, explain
    ``self``) or, without them, leave-one-out references over this batch from
    ``person_ids`` [B] in ``[0, num_people)``. ``population`` and ``identification``
    also need ``person_ids`` as rows of ``gallery`` [P, D] (every person's reference,
    see :func:`person_gallery`; without it, the gallery of this batch), the own row
    replaced by the leave-one-out ``references``. ``pair`` takes the partner's
    embedding as ``references``; ``contrast`` also needs ``negatives`` [B, D].
    """
    if target == "self":
        return self_score(emb)
    if target == "identity" or target in GALLERY_TARGETS:
        num_people = num_people or emb.shape[0]
        if target in GALLERY_TARGETS and gallery is not None and references is None:
            raise ValueError(f"target={target!r} with a gallery needs the leave-one-out references too")
        references, in_range = _batch_references(emb, references, person_ids, num_people, valid)
        if target in GALLERY_TARGETS:
            gallery, in_range = _batch_gallery(emb, gallery, person_ids, num_people, valid)
        has_ref = jnp.sum(references * references, axis=-1) > 0
        # A person with a single image has no reference: explain 'self' instead. An id outside
        # [0, num_people) under tracing gets a NaN score (flagged zero maps), never a wrong one.
        scores = jnp.where(has_ref, _person_scores(emb, target, references, gallery, person_ids, temperature),
                           self_score(emb))
        return jnp.where(in_range, scores, jnp.nan)
    if references is None:
        raise ValueError(f"target={target!r} needs references [B, D]")
    if target == "pair":
        return pair_score(emb, references)
    if target == "contrast":
        if negatives is None:
            raise ValueError("target='contrast' needs negatives [B, D]")
        return contrast_score(emb, references, negatives)
    raise ValueError(f"target must be one of {TARGETS}, got {target!r}")


def tap_gradients(
    apply_fn: Callable,
    params: Any,
    images: jax.Array,
    score_fn: Callable[[jax.Array], jax.Array],
    taps: Sequence[str] | None = None,
) -> tuple[jax.Array, jax.Array, dict[str, jax.Array], dict[str, jax.Array]]:
    """Scores and ``ds/dA_l`` for every tap from one forward and one backward pass.

    Args:
      apply_fn: the model contract.
      params: its params pytree.
      images: [B, ...] model inputs.
      score_fn: [B, D] embeddings -> [B] scores (each row depends on its own image only).
      taps: tap names (default: every activation ``apply_fn`` returns, in its order).

    Returns:
      (scores [B], embeddings [B, D], activations {tap: [B, H, W, C]}, gradients {tap: same}).
    """
    scores, emb, acts, grads, _ = _vjp_all(apply_fn, params, images, score_fn, taps, with_input=False)
    return scores, emb, acts, grads


def _vjp_all(apply_fn, params, images, score_fn, taps, *, with_input: bool):
    """:func:`tap_gradients`, plus ``ds/dx`` [B, H, W, C] from the same backward pass (or None)."""
    order: list[str] = []

    def probe(p, x):
        acts = apply_fn(p, x)[1]
        order.extend(acts)  # the model's own (forward) order; pytrees would sort the keys
        return acts

    act_shapes = jax.eval_shape(probe, params, images)
    taps = tuple(order) if taps is None else tuple(taps)
    missing = [t for t in taps if t not in act_shapes]
    if missing:
        raise ValueError(f"unknown taps {missing}; the model has {list(act_shapes)}")
    zeros = {t: jnp.zeros(act_shapes[t].shape, act_shapes[t].dtype) for t in taps}

    def forward(perturbations, x):
        emb, acts = apply_fn(params, x, perturbations)
        return score_fn(emb), (emb, {t: acts[t] for t in taps})

    # Rows are independent, so a cotangent of ones gives every image its own gradient.
    if with_input:
        scores, vjp_fn, (emb, acts) = jax.vjp(forward, zeros, images.astype(jnp.float32), has_aux=True)
        grads, dx = vjp_fn(jnp.ones_like(scores))
    else:
        scores, vjp_fn, (emb, acts) = jax.vjp(lambda z: forward(z, images), zeros, has_aux=True)
        (grads,), dx = vjp_fn(jnp.ones_like(scores)), None
    # Pytree round trips sort dict keys; hand back the taps' order.
    return scores, emb, {t: acts[t] for t in taps}, {t: grads[t] for t in taps}, dx


def _leam_maps(
    apply_fn, params, images, references, negatives, person_ids, valid, layer_weights, gallery=None,
    *, target, weighting, taps, output_size, num_people, temperature=DEFAULT_TEMPERATURE,
):
    maps, _ = _leam_set(apply_fn, params, images, references, negatives, person_ids, valid, layer_weights, gallery,
                        target=target, weightings=(weighting,), taps=taps, output_size=output_size,
                        num_people=num_people, temperature=temperature, baselines=False)
    return maps[weighting]


def _leam_set(
    apply_fn, params, images, references, negatives, person_ids, valid, layer_weights, gallery=None,
    *, target, weightings, taps, output_size, num_people, temperature=DEFAULT_TEMPERATURE, baselines: bool,
):
    """Every weighting's :class:`LeamMaps` (and the two baselines) from one forward and one backward pass:
    the weightings differ only in how they combine the same gradients and activations."""
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got {images.shape}")
    b = images.shape[0]
    valid_mask = jnp.ones((b,), bool) if valid is None else valid.astype(bool)
    for name, arr in (("references", references), ("negatives", negatives)):
        if arr is not None and (arr.ndim != 2 or arr.shape[0] != b):
            raise ValueError(f"{name} must be [B={b}, D], got {arr.shape}")
    if person_ids is not None and person_ids.shape != (b,):
        raise ValueError(f"person_ids must be [B={b}], got {person_ids.shape}")
    size = output_size or images.shape[1:3]
    num_people = num_people or b
    if target == "identity" or target in GALLERY_TARGETS:
        if references is None and person_ids is None:
            raise ValueError(f"target={target!r} needs references or person_ids")
        used_self = ~_has_reference(references=references, person_ids=person_ids, num_people=num_people,
                                    valid=valid_mask)
    else:
        used_self = jnp.zeros((b,), bool)

    def score_fn(emb):
        return target_scores(emb, target=target, references=references, negatives=negatives,
                             person_ids=person_ids, num_people=num_people, valid=valid_mask, gallery=gallery,
                             temperature=temperature)

    scores, emb, acts, grads, dx = _vjp_all(apply_fn, params, images, score_fn, taps, with_input=baselines)
    names, keep = tuple(grads), valid_mask
    out = {}
    for weighting in weightings:
        raw = jnp.stack([resize_maps(layer_map(grads[t], acts[t], weighting), size) for t in names], axis=1)
        per_layer, flags = normalize_maps(raw)
        overall, overall_flags = overall_map(per_layer, layer_weights)
        out[weighting] = LeamMaps(
            per_layer=jnp.where(keep[:, None, None, None], per_layer, 0.0),
            overall=jnp.where(keep[:, None, None], overall, 0.0),
            flags=flags | ~keep[:, None],
            overall_flags=overall_flags | ~keep,
            scores=jnp.where(keep, scores, 0.0),
            embeddings=emb,
            used_self=used_self & keep,
            taps=names,
        )
    if not baselines:
        return out, None
    last = names[-1]
    last_map = normalize_maps(resize_maps(layer_map(grads[last], acts[last], "gradcam"), size))[0]
    input_map = _gradient_saliency(dx)[0]
    return out, {"input_gradient": jnp.where(keep[:, None, None], input_map, 0.0),
                 "last_layer": jnp.where(keep[:, None, None], last_map, 0.0)}


_leam_maps_jit = jit(
    _leam_maps,
    static_argnames=("apply_fn", "target", "weighting", "taps", "output_size", "num_people", "temperature")
)


def leam_maps(
    apply_fn: Callable,
    params: Any,
    images: jax.Array,
    *,
    target: str = DEFAULT_TARGET,
    references: jax.Array | None = None,
    negatives: jax.Array | None = None,
    person_ids: jax.Array | None = None,
    num_people: int | None = None,
    valid: jax.Array | None = None,
    weighting: str = DEFAULT_WEIGHTING,
    taps: Sequence[str] | None = None,
    layer_weights: jax.Array | None = None,
    output_size: tuple[int, int] | None = None,
    gallery: jax.Array | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> LeamMaps:
    """LEAM maps for a batch: one forward and one backward pass for all taps (jit-compiled).

    Args:
      apply_fn: ``apply_fn(params, images, perturbations=None) -> (emb [B, D], {tap: [B, H, W, C]})``.
        Must be hashable and stable (it is a static argument of the compiled function).
      params: the model's params pytree.
      images: [B, S, S, C] model inputs.
      target: ``identity``, ``self``, ``pair``, ``contrast``, ``population`` or ``identification``
        (LEAM_SPEC section 1; default :data:`DEFAULT_TARGET`).
      references: [B, D] reference embeddings: the person's (identity, contrast) or
        the partner image's (pair). For ``identity`` they may be omitted; then
        leave-one-out references come from this batch via ``person_ids``. A zero
        row means "no reference": that image is explained with ``self``.
      negatives: [B, D] the other person's references (``contrast``).
      person_ids: [B] ints in ``[0, num_people)`` (batch-local ids suffice; raw ids are an error:
        map them with :func:`dense_person_ids`).
      num_people: static segment count for ``person_ids`` (default B).
      valid: [B] bool; padded rows are False, get zero flagged maps and take no
        part in references.
      weighting: ``gradcam``, ``layercam`` or ``gradxact`` (default :data:`DEFAULT_WEIGHTING`).
      taps: which taps, in order (default: all the model returns).
      layer_weights: [L] weights of the layers in the overall map (default equal).
      output_size: (H, W) of the maps (default: the input size S x S).
      gallery: [P, D] every person's reference (:func:`person_gallery`) for ``population`` and
        ``identification``; ``person_ids`` then index its rows and ``references`` must be the
        leave-one-out ones. Without it, the gallery of this batch.
      temperature: ``identification``'s softmax temperature (default :data:`DEFAULT_TEMPERATURE`).

    Returns:
      :class:`LeamMaps` with per_layer [B, L, H, W], overall [B, H, W], flags.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if person_ids is not None:
        check_person_ids(person_ids, gallery.shape[0] if gallery is not None else num_people or images.shape[0])
    return _leam_maps_jit(
        apply_fn, params, images, references, negatives, person_ids, valid, layer_weights, gallery,
        target=target, weighting=weighting, taps=None if taps is None else tuple(taps),
        output_size=None if output_size is None else tuple(output_size), num_people=num_people,
        temperature=float(temperature),
    )


def input_gradient_saliency(
    apply_fn: Callable, params: Any, images: jax.Array, score_fn: Callable[[jax.Array], jax.Array]
) -> tuple[jax.Array, jax.Array]:
    """Baseline: plain input-gradient saliency ``max_c |ds/dx|``, normalised.

    Returns (maps [B, S, S], flags [B]).
    """
    def total(x):
        return jnp.sum(score_fn(apply_fn(params, x)[0]))

    return _gradient_saliency(jax.grad(total)(images.astype(jnp.float32)))


def _gradient_saliency(g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``max_c |g|`` of an input gradient [B, H, W, C], normalised -> (maps [B, H, W], flags [B])."""
    return normalize_maps(jnp.max(jnp.abs(g), axis=-1))


# ---------------------------------------------------------------------------
# Data parallel execution with a fixed batch shape.


class LeamRunner:
    """Jit-compiled, data-parallel LEAM over fixed-shape batches.

    Every call runs the one compiled program for ``[batch_size, ...]``: a
    shorter (ragged) batch is zero-padded and masked, so a sweep never
    recompiles. The batch axis is sharded over all devices of ``mesh``;
    params are replicated once (params already replicated on the mesh are
    used as they are, without a copy).
    """

    _baselines = False

    def __init__(
        self,
        apply_fn: Callable,
        params: Any,
        *,
        batch_size: int,
        target: str = DEFAULT_TARGET,
        weighting: str = DEFAULT_WEIGHTING,
        taps: Sequence[str] | None = None,
        output_size: tuple[int, int] | None = None,
        layer_weights: jax.Array | None = None,
        mesh: jax.sharding.Mesh | None = None,
        temperature: float = DEFAULT_TEMPERATURE,
    ):
        # LeamRunner takes one weighting; LeamSetRunner a sequence of them.
        weightings = tuple(weighting) if self._baselines and not isinstance(weighting, str) else (weighting,)
        if target not in TARGETS or not weightings or any(w not in WEIGHTINGS for w in weightings):
            raise ValueError(f"bad target {target!r} or weighting {weighting!r}")
        self.placement = Placement(batch_size, mesh)
        self.mesh = self.placement.mesh
        self.batch_size = batch_size
        self.target = target
        self.params = self.placement.replicate(params)
        self.layer_weights = layer_weights
        self.trace_count = 0
        static = dict(target=target, weightings=weightings, taps=None if taps is None else tuple(taps),
                      output_size=None if output_size is None else tuple(output_size), num_people=batch_size,
                      temperature=float(temperature), baselines=self._baselines)
        single = not self._baselines

        def run(params, images, references, negatives, person_ids, valid, layer_weights, gallery):
            self.trace_count += 1  # Python side effect: runs once per compilation
            maps, base = _leam_set(apply_fn, params, images, references, negatives, person_ids, valid,
                                   layer_weights, gallery, **static)
            return maps[weighting] if single else (maps, base)

        self._fn = jit(run)

    def __call__(
        self,
        images: jax.Array,
        *,
        person_ids: jax.Array | None = None,
        references: jax.Array | None = None,
        negatives: jax.Array | None = None,
        gallery: jax.Array | None = None,
        params: Any = None,
    ) -> LeamMaps:
        """Maps for up to ``batch_size`` images; results are cut back to their count.

        ``params`` (default: the runner's) runs the same compiled program with other weights of
        the same structure, e.g. randomised ones for a sanity check.

        With a ``gallery`` [P, D] (``population``, ``identification``), ``person_ids`` are its
        rows and ``references`` the leave-one-out ones; place the gallery once with
        ``runner.placement.replicate`` to avoid a copy per call.
        """
        n = images.shape[0]
        if gallery is not None:
            check_person_ids(person_ids, gallery.shape[0])
            gallery = self.placement.replicate(gallery)
        elif person_ids is not None:
            # Batch-local dense ids; padded rows get an id of their own and valid=False.
            _, dense = jnp.unique(jnp.asarray(person_ids), return_inverse=True, size=n)
            person_ids = dense.reshape(-1).astype(jnp.int32)
        elif (self.target == "identity" or self.target in GALLERY_TARGETS) and references is None:
            raise ValueError(f"target={self.target!r} needs person_ids or references")
        put = self.placement.put
        params = self.params if params is None else self.placement.replicate(params)
        out = self._fn(params, put(images), put(references), put(negatives), put(person_ids),
                       self.placement.valid(n), self.layer_weights, gallery)
        return out if n == self.batch_size else jax.tree_util.tree_map(lambda a: a[:n], out)


class LeamSetRunner(LeamRunner):
    """A :class:`LeamRunner` for several weightings and the two baselines at once, all from the same
    forward and backward pass (the weightings only combine the same gradients differently).

    ``weighting``: a sequence of weightings. A call returns ``({weighting: LeamMaps},
    {"input_gradient": [B, S, S], "last_layer": [B, S, S]})``: the normalised ``max_c |ds/dx|``
    (:func:`input_gradient_saliency`) and Grad-CAM of the last tap alone.
    """

    _baselines = True


def top_k_count(num_pixels: int, percent: float) -> int:
    """Pixels in the top ``percent``% of a map (at least one)."""
    return max(1, int(math.floor(num_pixels * percent / 100.0 + 0.5)))
