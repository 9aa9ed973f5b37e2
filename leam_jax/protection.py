"""LEAM-guided privacy protection (LEAM_SPEC section 7): masked, bounded dodging perturbations.

Pure core (``jax``, ``optax`` and the library's own pure modules). For each
photo, an additive perturbation ``δ`` of the photo's own pixels (the face's
region of the original image at its resolution, [B, H, W, 3] on 0..255) is
restricted to a mask and to ``|δ|_inf <= ε`` and optimised to lower the
person's score on one source model or the sum over an ensemble. Every model sees
the protected photo through a differentiable warp into its input template
(:func:`warp_affine_batch`, one ``out_to_in`` affine per image and model, given
as data so one compiled program serves every batch).

Optimisers: signed-gradient PGD (``δ <- Π(δ - α sign ∇)``) or Adam (optax),
a fixed number of steps, the projection ``Π`` after every step. Optional
expectation over transformation (EOT): each step averages the gradient over
``eot`` random differentiable views of the photo (0.5x down-up resize, Gaussian
blur, small shift and scale of the alignment). Untargeted dodging only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from leam_jax import core
from leam_jax.batching import Placement

OPTIMIZERS = ("pgd", "adam")
SCORES = ("cosine", "identification")
DEFAULT_STEPS = 50
# Madry et al. (ICLR 2018): step = 2.5 ε / steps lets the iterate travel 2.5 ε over the run, enough to
# reach any corner of the ε-box from 0 and still turn back; it is ε/4 at 10 steps, ε/20 at 50. The same
# value is Adam's learning rate (Adam's early per-pixel steps are about the learning rate).
STEP_SIZE_FACTOR = 2.5
PIXEL_MAX = 255.0


# ---------------------------------------------------------------------------
# Source models and the photo-to-model warp.


@functools.partial(jax.tree_util.register_dataclass, data_fields=["params"],
                   meta_fields=["apply", "input_size", "to_model"])
@dataclasses.dataclass(frozen=True)
class SourceModel:
    """A model the perturbation is optimised against.

    Attributes:
      apply: ``apply(params, images [B, S, S, 3] RGB 0..255) -> (embeddings [B, D], activations)``.
      params: its params pytree (traced: other weights of one structure reuse the compiled program).
      input_size: S, the side of the model's square input.
      to_model: ``to_model(photos [B, H, W, 3], out_to_in [B, 2, 3]) -> [B, S, S, 3]``, differentiable in
        the photos; ``out_to_in`` maps model-input pixel (x, y) to photo pixel coordinates. Default
        (None): :func:`warp_affine_batch` to S x S. ``apply`` and ``to_model`` are static: build a
        SourceModel once and reuse it, or every call compiles anew.
    """

    apply: Callable
    params: Any
    input_size: int
    to_model: Callable | None = None

    def inputs(self, photos: jax.Array, out_to_in: jax.Array) -> jax.Array:
        if self.to_model is None:
            return warp_affine_batch(photos, out_to_in, (self.input_size, self.input_size))
        return self.to_model(photos, out_to_in)


def _float(x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def warp_affine_batch(images: jax.Array, out_to_in: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Bilinear warp of each image: ``out[b, y, x] = images[b](out_to_in[b] @ [x, y, 1])``.

    Zero where a sample's 2x2 neighbourhood is not wholly inside the image (as
    ``leam_jax.face.alignment.warp_affine``, so a model sees what the face pipeline shows it).
    Linear, hence exactly differentiable, in the images.

    Args:
      images: [B, H, W, C] (integers become float32; a float dtype is kept).
      out_to_in: [B, 2, 3] affine from output pixel (x, y) to input pixel coordinates.
      out_shape: static (h, w) of the output.

    Returns:
      [B, h, w, C].
    """
    images = _float(images)
    if images.ndim != 4 or min(images.shape[1:3]) < 2:
        raise ValueError(f"images must be [B, H >= 2, W >= 2, C], got {images.shape}")
    if out_to_in.shape != (images.shape[0], 2, 3):
        raise ValueError(f"out_to_in must be [B={images.shape[0]}, 2, 3], got {out_to_in.shape}")
    warp = functools.partial(core.warp_affine, out_shape=(int(out_shape[0]), int(out_shape[1])))
    return jax.vmap(warp)(images, jnp.asarray(out_to_in, images.dtype))


def identity_affines(batch: int) -> jax.Array:
    """[B, 2, 3] identity ``out_to_in``: for photos that already are the model input."""
    return jnp.tile(jnp.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], jnp.float32), (batch, 1, 1))


# ---------------------------------------------------------------------------
# Expectation over transformation: random differentiable views of the photo.


@dataclasses.dataclass(frozen=True)
class EotConfig:
    """Ranges of the random views (a static, hashable value).

    Attributes:
      max_shift: shift of the alignment, uniform in ±max_shift of the model input side per axis
        (re-detection and re-alignment of the protected photo never lands on the same pixels).
      max_scale: zoom of the alignment about the input centre, uniform in [1 - s, 1 + s].
      max_blur: Gaussian blur of the photo, sigma uniform in [0, max_blur] photo pixels.
      resize_prob: share of views that go through 0.5x down- and up-scaling of the photo.
    """

    max_shift: float = 0.03
    max_scale: float = 0.05
    max_blur: float = 1.0
    resize_prob: float = 0.5


def _draw(key: jax.Array, batch: int, cfg: EotConfig, dtype) -> dict[str, jax.Array]:
    k_shift, k_scale, k_blur, k_resize = jax.random.split(key, 4)
    return dict(
        shift=jax.random.uniform(k_shift, (batch, 2), dtype, -cfg.max_shift, cfg.max_shift),
        scale=jax.random.uniform(k_scale, (batch,), dtype, 1.0 - cfg.max_scale, 1.0 + cfg.max_scale),
        sigma=jax.random.uniform(k_blur, (batch,), dtype, 0.0, cfg.max_blur),
        resize=jax.random.bernoulli(k_resize, cfg.resize_prob, (batch,)),
    )


def _down_up(photos: jax.Array) -> jax.Array:
    b, h, w, c = photos.shape
    small = jax.image.resize(photos, (b, max(1, h // 2), max(1, w // 2), c), method="bilinear")
    return jax.image.resize(small, photos.shape, method="bilinear")


def gaussian_blur_batch(photos: jax.Array, sigma: jax.Array, radius: int) -> jax.Array:
    """Separable Gaussian blur with one sigma per image (edges replicated). [B, H, W, C], [B] -> same.

    ``radius`` (static) is the half-width of the kernel; sigma 0 leaves the image as it is.
    """
    k = jnp.arange(-radius, radius + 1, dtype=photos.dtype)
    # A floor on sigma instead of a branch: at 1e-3 the off-centre weights underflow to exactly 0.
    w = jnp.exp(-0.5 * (k[None, :] / jnp.maximum(sigma, 1e-3)[:, None]) ** 2)
    w = w / jnp.sum(w, axis=1, keepdims=True)  # [B, K]
    h, wd = photos.shape[1:3]
    x = jnp.pad(photos, ((0, 0), (radius, radius), (0, 0), (0, 0)), mode="edge")
    x = sum(w[:, i, None, None, None] * x[:, i:i + h] for i in range(2 * radius + 1))
    x = jnp.pad(x, ((0, 0), (0, 0), (radius, radius), (0, 0)), mode="edge")
    return sum(w[:, i, None, None, None] * x[:, :, i:i + wd] for i in range(2 * radius + 1))


def _jitter(out_to_in: jax.Array, draws: dict[str, jax.Array], size: int) -> jax.Array:
    """``out_to_in`` composed with a zoom about the input centre and a shift: [B, 2, 3]."""
    z = draws["scale"][:, None]
    c = (size - 1) / 2.0
    t = c * (1.0 - z) + draws["shift"] * size  # [B, 2]
    lin = out_to_in[:, :, :2]
    return jnp.concatenate([lin * z[:, :, None], (lin @ t[:, :, None]) + out_to_in[:, :, 2:]], axis=2)


def _view_photos(photos: jax.Array, draws: dict[str, jax.Array], cfg: EotConfig) -> jax.Array:
    x = jnp.where(draws["resize"][:, None, None, None], _down_up(photos), photos) if cfg.resize_prob > 0 else photos
    radius = int(math.ceil(3 * cfg.max_blur))
    return gaussian_blur_batch(x, draws["sigma"], radius) if radius > 0 else x


# ---------------------------------------------------------------------------
# Scores and the dodging loss.


def model_scores(
    models: Sequence[SourceModel],
    photos: jax.Array,
    affines: Sequence[jax.Array],
    references: Sequence[jax.Array],
    *,
    view_key: jax.Array | None = None,
    eot_config: EotConfig = EotConfig(),
    score: str = "cosine",
    galleries: Sequence[jax.Array] | None = None,
    person_ids: jax.Array | None = None,
    temperature: float = core.DEFAULT_TEMPERATURE,
    active: jax.Array | None = None,
) -> jax.Array:
    """The person's score on each source model, of the photos as given. -> [B, M].

    Args:
      models: M source models.
      photos: [B, H, W, 3] (protected) photos, 0..255.
      affines: M arrays [B, 2, 3], each model's ``out_to_in`` into the photo.
      references: M arrays [B, D_m], the person's clean reference on each model (a constant).
      view_key: a key draws one random view (:class:`EotConfig`) per image, shared by the models;
        None: the photo as it is.
      score: ``cosine`` (``<ê, r̂>``) or ``identification`` (``log softmax`` over ``galleries[m]``
        [P, D_m] at ``person_ids`` [B], the own row replaced by the reference; see
        :func:`leam_jax.core.identification_score`).
      active: [M] bool (data, not static): the members to score; an inactive member scores 0 and costs
        nothing (one compiled program serves every sub-ensemble).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    photos = _float(photos)
    draws = None if view_key is None else _draw(view_key, photos.shape[0], eot_config, photos.dtype)
    viewed = photos if draws is None else _view_photos(photos, draws, eot_config)

    def one(m, model):
        a = jnp.asarray(affines[m], photos.dtype)
        a = a if draws is None else _jitter(a, draws, model.input_size)
        emb = model.apply(model.params, model.inputs(viewed, a))[0]
        if score == "cosine":
            return core.identity_score(emb, references[m])
        return core.identification_score(emb, references[m], galleries[m], person_ids, temperature)

    out = []
    for m, model in enumerate(models):
        if active is None:
            out.append(one(m, model))
        else:  # a scalar predicate: an inactive member's forward and backward pass are skipped, not masked
            out.append(jax.lax.cond(active[m], lambda m=m, model=model: one(m, model).astype(photos.dtype),
                                    lambda: jnp.zeros(photos.shape[:1], photos.dtype)))
    return jnp.stack(out, axis=1)


def dodging_loss(models: Sequence[SourceModel], photos: jax.Array, affines: Sequence[jax.Array],
                 references: Sequence[jax.Array], *, weights: jax.Array | None = None,
                 floors: jax.Array | None = None, **kwargs) -> jax.Array:
    """The ensemble's score to lower: the sum over source models of :func:`model_scores`, each times its
    ``weights`` entry ([M], data; default 1; a member of weight 0 is skipped). -> [B].

    ``floors`` ([M] or [B, M], data; default none): a member's score counts as ``max(score, floor)``. A
    member already at or below its floor has no gradient, so the steps go to the members not yet there
    (a hinge, as the confidence margin of Carlini and Wagner's loss).
    """
    scores = model_scores(models, photos, affines, references,
                          active=None if weights is None else weights != 0, **kwargs)
    if floors is not None:
        scores = jnp.maximum(scores, jnp.asarray(floors, scores.dtype))
    if weights is None:
        return jnp.sum(scores, axis=1)
    return jnp.sum(scores * weights.astype(scores.dtype), axis=1)


# ---------------------------------------------------------------------------
# The optimisation.


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["delta", "losses", "scores_before", "scores_after", "iterates"], meta_fields=[])
@dataclasses.dataclass(frozen=True)
class ProtectionResult:
    """Result of :func:`protect` for B photos, M source models and T steps (batch axis first).

    Attributes:
      delta: [B, H, W, 3] float perturbation; 0 outside the mask, ``|δ| <= ε``, ``photo + δ`` in 0..255.
      losses: [B, T] the ensemble loss (floors applied) of the iterate each step started from (the mean
        over its EOT views).
      scores_before: [B, M] each model's score of the clean photo (no random view).
      scores_after: [B, M] each model's score of ``photo + δ`` (no random view).
      iterates: [B, T + 1, H, W, 3] every iterate from 0 to ``delta`` (``keep_iterates``), else None.
    """

    delta: jax.Array
    losses: jax.Array
    scores_before: jax.Array
    scores_after: jax.Array
    iterates: jax.Array | None = None


def _optimizer(name: str, step_size: jax.Array) -> optax.GradientTransformation:
    if name == "pgd":
        return optax.stateless(lambda g, _: -step_size * jnp.sign(g))
    return optax.adam(step_size)


def _bounds(photos: jax.Array, masks: jax.Array, epsilon: jax.Array) -> Callable[[jax.Array], jax.Array]:
    """The projection onto {0 outside the mask, |δ| <= ε, photo + δ in [0, 255]}.

    Bounds, not clip(photo + δ) - photo: |δ| <= ε and the zeros then hold exactly in floating point, and
    for integer photos (any uint8 photo) photo + δ stays exactly in range (rounding is monotone).
    """
    eps = epsilon[:, None, None, None]
    lo, hi = jnp.maximum(-eps, -photos), jnp.minimum(eps, PIXEL_MAX - photos)
    inside = masks[..., None]
    return lambda delta: jnp.where(inside, jnp.clip(delta, lo, hi), jnp.zeros_like(delta))


def _protect(models, photos, masks, affines, references, galleries, person_ids, valid, epsilon, step_size, key,
             weights, floors, *, steps, optimizer, eot, eot_config, score, temperature, keep_iterates):
    photos = _float(photos)
    inside = jnp.asarray(masks) > 0.5
    project = _bounds(photos, inside, epsilon)
    common = dict(eot_config=eot_config, score=score, galleries=galleries, person_ids=person_ids,
                  temperature=temperature)

    def total(delta, view_key):
        per = dodging_loss(models, photos + delta, affines, references, view_key=view_key, weights=weights,
                           floors=floors, **common)
        return jnp.sum(jnp.where(valid, per, 0.0)), per

    grad_fn = jax.value_and_grad(total, has_aux=True)

    def loss_and_grad(delta, step_key):
        if eot == 0:
            (_, per), g = grad_fn(delta, None)
            return per, g

        def view(acc, view_key):  # one view at a time: memory of one forward-backward pass
            (_, per), g = grad_fn(delta, view_key)
            return (acc[0] + per, acc[1] + g), None

        zero = (jnp.zeros(photos.shape[:1], photos.dtype), jnp.zeros_like(delta))
        (per, g), _ = jax.lax.scan(view, zero, jax.random.split(step_key, eot))
        return per / eot, g / eot

    tx = _optimizer(optimizer, step_size[:, None, None, None].astype(photos.dtype))

    def step(carry, t):
        delta, state = carry
        per, g = loss_and_grad(delta, jax.random.fold_in(key, t))
        updates, state = tx.update(jnp.where(inside[..., None], g, 0.0), state, delta)
        delta = project(delta + updates)
        return (delta, state), (per, delta if keep_iterates else None)

    delta0 = jnp.zeros_like(photos)
    (delta, _), (losses, iterates) = jax.lax.scan(step, (delta0, tx.init(delta0)), jnp.arange(steps))
    scores = functools.partial(model_scores, models, affines=affines, references=references, **common)
    keep = valid[:, None]
    return ProtectionResult(
        delta=delta,
        losses=jnp.where(valid[:, None], losses.T, 0.0),
        scores_before=jnp.where(keep, scores(photos), 0.0),
        scores_after=jnp.where(keep, scores(photos + delta), 0.0),
        iterates=None if iterates is None else jnp.moveaxis(jnp.concatenate([delta0[None], iterates]), 0, 1),
    )


_STATIC = ("steps", "optimizer", "eot", "eot_config", "score", "temperature", "keep_iterates")
_protect_jit = core.jit(_protect, static_argnames=_STATIC)


def _check(models, photos, masks, affines, references, galleries, person_ids, *, steps, optimizer, eot, score):
    """Clear errors at the boundary; returns the models, affines, references and galleries as tuples."""
    if photos.ndim != 4 or photos.shape[-1] != 3:
        raise ValueError(f"photos must be [B, H, W, 3], got {photos.shape}")
    b = photos.shape[0]
    if masks.shape != photos.shape[:3]:
        raise ValueError(f"masks must be [B, H, W] = {photos.shape[:3]}, got {masks.shape}")
    models = tuple(models)
    if not models or not all(isinstance(m, SourceModel) for m in models):
        raise ValueError("models must be a non-empty sequence of SourceModel")
    affines, references = tuple(affines), tuple(references)
    if len(affines) != len(models) or len(references) != len(models):
        raise ValueError(f"need one affine array and one reference array per model ({len(models)}), "
                         f"got {len(affines)} and {len(references)}")
    for m, (a, r) in enumerate(zip(affines, references)):
        if a.shape != (b, 2, 3) or r.ndim != 2 or r.shape[0] != b:
            raise ValueError(f"model {m}: affines must be [B={b}, 2, 3] and references [B, D], "
                             f"got {a.shape} and {r.shape}")
    if optimizer not in OPTIMIZERS or score not in SCORES:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS} and score one of {SCORES}, "
                         f"got {optimizer!r} and {score!r}")
    if steps < 1 or eot < 0:
        raise ValueError(f"need steps >= 1 and eot >= 0, got {steps} and {eot}")
    if score == "identification":
        if galleries is None or person_ids is None or len(tuple(galleries)) != len(models):
            raise ValueError("score='identification' needs one gallery [P, D_m] per model and person_ids [B]")
        galleries = tuple(galleries)
        core.check_person_ids(person_ids, galleries[0].shape[0])
    else:
        galleries = None
    return models, affines, references, galleries


def _per_image(value, b: int, name: str) -> jax.Array:
    """A scalar or [B] budget as a float32 [B] (a concrete negative value is an error)."""
    v = jnp.broadcast_to(jnp.asarray(value, jnp.float32), (b,))
    if not isinstance(v, jax.core.Tracer) and bool(jnp.any(v < 0)):
        raise ValueError(f"{name} must be >= 0 (0..255 pixel scale), got {value}")
    return v


def _weights(weights, m: int) -> jax.Array:
    """[M] float32 member weights (default: all 1); finite, >= 0, at least one positive."""
    w = jnp.ones((m,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    if w.shape != (m,) or not bool(jnp.all(jnp.isfinite(w) & (w >= 0))) or not bool(jnp.any(w > 0)):
        raise ValueError(f"weights must be [M={m}] finite, >= 0, with one positive at least, got {weights}")
    return w


def _floors(floors, b: int, m: int) -> jax.Array:
    """[B, M] float32 score floors from None (none: -inf), a scalar, [M] or [B, M]."""
    if floors is None:
        return jnp.full((b, m), -jnp.inf, jnp.float32)
    f = jnp.asarray(floors, jnp.float32)
    if f.ndim > 2 or (f.ndim >= 1 and f.shape[-1] not in (1, m)) or (f.ndim == 2 and f.shape[0] not in (1, b)):
        raise ValueError(f"floors must be a scalar, [M={m}] or [B={b}, M], got shape {f.shape}")
    if not isinstance(f, jax.core.Tracer) and bool(jnp.any(jnp.isnan(f))):
        raise ValueError("floors must not be NaN (-inf: no floor)")
    return jnp.broadcast_to(f, (b, m))


def default_step_size(epsilon, steps: int):
    """``2.5 ε / steps`` (see :data:`STEP_SIZE_FACTOR`)."""
    return STEP_SIZE_FACTOR * jnp.asarray(epsilon, jnp.float32) / steps


def protect(
    models: Sequence[SourceModel],
    photos: jax.Array,
    masks: jax.Array,
    affines: Sequence[jax.Array],
    references: Sequence[jax.Array],
    *,
    epsilon,
    steps: int = DEFAULT_STEPS,
    optimizer: str = "pgd",
    step_size=None,
    eot: int = 0,
    eot_config: EotConfig = EotConfig(),
    key: jax.Array | None = None,
    score: str = "cosine",
    galleries: Sequence[jax.Array] | None = None,
    person_ids: jax.Array | None = None,
    temperature: float = core.DEFAULT_TEMPERATURE,
    keep_iterates: bool = False,
    weights=None,
    floors=None,
) -> ProtectionResult:
    """Optimise a masked, ε-bounded perturbation of each photo that lowers the person's score (jit-compiled).

    Args:
      models: M :class:`SourceModel`; the loss is the sum of their scores (an ensemble when M > 1).
      photos: [B, H, W, 3] original photos (the face's region at the photo's resolution), 0..255;
        integer-valued (decoded uint8) for the in-range guarantee to be exact.
      masks: [B, H, W] where the perturbation may live (bool, or values > 0.5 inside).
      affines: M arrays [B, 2, 3], model-input pixel -> photo pixel (``out_to_in``) per image.
      references: M arrays [B, D_m], the person's clean reference embedding on each model.
      epsilon: L_inf budget on the 0..255 scale, a scalar or [B] (traced: a sweep does not recompile).
      steps: number of optimisation steps (static).
      optimizer: ``pgd`` (signed gradient) or ``adam`` (optax).
      step_size: PGD's step or Adam's learning rate, scalar or [B] (default :func:`default_step_size`).
      eot: random views averaged per step (0: none, the photo as it is).
      eot_config: the views' ranges (static).
      key: the views' random key (default ``PRNGKey(0)``); equal keys give byte-identical results.
      score: ``cosine`` or ``identification`` (needs ``galleries`` and ``person_ids``; see :func:`model_scores`).
      keep_iterates: also return every iterate (memory: T + 1 photos per image).
      weights: [M] the members' weights in the loss (data: default all 1; 0 leaves a member out, its
        passes skipped: one compiled program serves every sub-ensemble); ``scores_*`` report every member.
      floors: the members' score floors (:func:`dodging_loss`), scalar, [M] or [B, M] (data; default none).

    Returns:
      :class:`ProtectionResult`.
    """
    photos = _float(photos)
    masks = jnp.asarray(masks)
    models, affines, references, galleries = _check(
        models, photos, masks, affines, references, galleries, person_ids,
        steps=steps, optimizer=optimizer, eot=eot, score=score)
    b = photos.shape[0]
    epsilon = _per_image(epsilon, b, "epsilon")
    step_size = default_step_size(epsilon, steps) if step_size is None else _per_image(step_size, b, "step_size")
    key = jax.random.PRNGKey(0) if key is None else key
    return _protect_jit(models, photos, masks, affines, references, galleries, person_ids, jnp.ones((b,), bool),
                        epsilon, step_size, key, _weights(weights, len(models)), _floors(floors, b, len(models)),
                        steps=steps, optimizer=optimizer, eot=eot, eot_config=eot_config,
                        score=score, temperature=float(temperature), keep_iterates=keep_iterates)


def quantise(photos: jax.Array, delta: jax.Array, *, masks: jax.Array, epsilon) -> jax.Array:
    """The protected photo as uint8: ``round(photo + δ)``, then re-clipped against the original integers.

    Rounding may push a pixel past the budget (ε = 8, δ = 7.6 over a photo value that rounds the other
    way is fine; ε = 8.5 and δ = 8.5 rounds to 9 > 8.5), so the written pixel is clipped to
    ``[photo - floor(ε), photo + floor(ε)]`` and to 0..255, and set back to the photo outside the mask.

    Args:
      photos: [B, H, W, 3] the original (integer-valued, 0..255) photos; delta: same shape.
      masks: [B, H, W]; epsilon: scalar or [B].

    Returns:
      [B, H, W, 3] uint8.
    """
    x = jnp.round(_float(photos))
    eps = jnp.floor(_per_image(epsilon, x.shape[0], "epsilon"))[:, None, None, None]
    q = jnp.clip(jnp.round(x + delta), x - eps, x + eps)
    q = jnp.where(jnp.asarray(masks)[..., None] > 0.5, q, x)
    return jnp.clip(q, 0, PIXEL_MAX).astype(jnp.uint8)


# ---------------------------------------------------------------------------
# Data parallel execution with a fixed batch shape.


class ProtectionRunner:
    """:func:`protect` over fixed-shape batches: one compilation for a whole sweep.

    Every call runs the one compiled program for ``[batch_size, H, W, 3]``: a ragged batch is
    zero-padded (padded rows have an empty mask and ε = 0, so they stay untouched) and cut back.
    The batch axis is sharded over the devices of ``mesh``; the models' params (and galleries) are
    replicated once. ``epsilon``, ``step_size``, the key and the masks are data, so a (p, ε) sweep
    never recompiles. With EOT, a row's random views depend on the padded batch (a ragged batch's
    rows get other views than the same photos in a full batch); without EOT they do not.
    """

    def __init__(
        self,
        models: Sequence[SourceModel],
        *,
        batch_size: int,
        steps: int = DEFAULT_STEPS,
        optimizer: str = "pgd",
        eot: int = 0,
        eot_config: EotConfig = EotConfig(),
        score: str = "cosine",
        temperature: float = core.DEFAULT_TEMPERATURE,
        keep_iterates: bool = False,
        mesh: jax.sharding.Mesh | None = None,
    ):
        if optimizer not in OPTIMIZERS or score not in SCORES or steps < 1 or eot < 0:
            raise ValueError(f"bad optimizer {optimizer!r}, score {score!r}, steps {steps} or eot {eot}")
        self.placement = Placement(batch_size, mesh)
        self.mesh = self.placement.mesh
        self.batch_size = batch_size
        self.models = self.placement.replicate(tuple(models))
        self.steps, self.optimizer, self.eot, self.score = steps, optimizer, eot, score
        self.trace_count = 0
        static = dict(steps=steps, optimizer=optimizer, eot=eot, eot_config=eot_config, score=score,
                      temperature=float(temperature), keep_iterates=keep_iterates)

        def run(*args):
            self.trace_count += 1  # Python side effect: runs once per compilation
            return _protect(*args, **static)

        self._fn = core.jit(run)

    def __call__(
        self,
        photos: jax.Array,
        masks: jax.Array,
        affines: Sequence[jax.Array],
        references: Sequence[jax.Array],
        *,
        epsilon,
        step_size=None,
        key: jax.Array | None = None,
        galleries: Sequence[jax.Array] | None = None,
        person_ids: jax.Array | None = None,
        weights=None,
        floors=None,
    ) -> ProtectionResult:
        """Protect up to ``batch_size`` photos (arguments as :func:`protect`); results cut to their count."""
        photos = _float(photos)
        n = photos.shape[0]
        models, affines, references, galleries = _check(
            self.models, photos, jnp.asarray(masks), affines, references, galleries, person_ids,
            steps=self.steps, optimizer=self.optimizer, eot=self.eot, score=self.score)
        epsilon = _per_image(epsilon, n, "epsilon")
        step_size = (default_step_size(epsilon, self.steps) if step_size is None
                     else _per_image(step_size, n, "step_size"))
        put = self.placement.put
        key = jax.random.PRNGKey(0) if key is None else key
        out = self._fn(models, put(photos), put(masks), tuple(put(a) for a in affines),
                       tuple(put(r) for r in references), None if galleries is None else self.placement.replicate(galleries),
                       put(person_ids), self.placement.valid(n), put(epsilon), put(step_size),
                       self.placement.replicate(key), self.placement.replicate(_weights(weights, len(models))),
                       put(_floors(floors, n, len(models))))
        return out if n == self.batch_size else jax.tree_util.tree_map(lambda a: a[:n], out)
