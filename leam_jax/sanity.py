"""Model-parameter randomisation (Adebayo et al. 2018), cascading from the embedding end.

LEAM_SPEC.md section 6: replace the weights of the top k layers with random
weights of the same per-tensor scale, k = 1 .. all, and compare the maps with
the trained model's. A "layer" here is a tap: :func:`tap_levels` assigns every
params leaf to the first tap whose activation depends on it, :func:`cascade_steps`
picks the k values and :func:`randomize_top` draws the randomised params.

Pure JAX (``jax``, ``jax.numpy`` and the standard library only); params are any
pytree (Flax NNX ``State``, Linen and Haiku dicts), never modified in place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from leam_jax import core


def _is_float(x: Any) -> bool:
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def _tap_order(apply_fn: Callable, params: Any, images: jax.Array, taps: Sequence[str] | None):
    """(taps in the model's forward order, their activation shapes), checked against the model."""
    order: list[str] = []

    def probe(p, x):
        acts = apply_fn(p, x)[1]
        order.extend(acts)  # the model's own order; pytrees would sort the keys
        return acts

    shapes = jax.eval_shape(probe, params, images)
    if taps is None:
        return tuple(order), shapes
    taps = tuple(taps)
    missing = [t for t in taps if t not in shapes]
    if missing or not taps:
        raise ValueError(f"unknown or no taps {missing or taps}; the model has {order}")
    return tuple(t for t in order if t in taps), shapes  # forward order, whatever order was asked


def tap_levels(
    apply_fn: Callable,
    params: Any,
    images: jax.Array,
    taps: Sequence[str] | None = None,
    *,
    key: jax.Array | None = None,
) -> Any:
    """The layer (tap index) every params leaf belongs to, for cascading randomisation.

    A float leaf's level is the index (0-based, taps in forward order) of the
    first tap whose activation depends on it. Leaves no tap depends on (the
    head after the last tap, e.g. the final dense layer, and any leaf the
    forward pass does not use) get ``len(taps) - 1``: the head counts with the
    last tap. Non-float leaves get -1 (never
    randomised). A tap without params of its own (a pooling, or a tap nothing
    reaches, such as a constant) is the level of no leaf.

    Dependence is read from gradients rather than from the jaxpr: a gradient
    works the same on NNX ``State``, Linen and Haiku params and through any
    primitive, where a dependence walk would need rules for control flow, custom
    derivatives and pytree closures. For each tap the VJP of its activation with
    a standard-normal cotangent is taken with respect to the params, on
    ``images``; a leaf depends on the tap when any element of its gradient is
    nonzero. That gradient is a sum over the batch and the activation's
    elements, weighted by continuous random draws, so for a connected leaf an
    exact zero in every element would need the draws to fall on a measure-zero
    set; only a disconnected leaf gives exact zeros (or one whose every path to
    the tap is cut on this batch, e.g. by ReLUs that are off for every image:
    pass real images, or noise in the model's input range). Runs once per
    model: one compilation, one backward pass per tap.

    Args:
      apply_fn: the model contract ``apply_fn(params, images, perturbations=None)``.
      params: its params pytree.
      images: [B, ...] a batch of model inputs (real images or noise).
      taps: tap names (default: every tap ``apply_fn`` returns); used in the
        model's forward order.
      key: PRNG key for the cotangents (default ``PRNGKey(0)``).

    Returns:
      A pytree shaped like ``params`` with Python ``int`` leaves in
      ``[-1, len(taps) - 1]``.
    """
    taps, shapes = _tap_order(apply_fn, params, images, taps)
    key = jax.random.PRNGKey(0) if key is None else key
    leaves, treedef = jax.tree_util.tree_flatten(params)
    floats = [i for i, x in enumerate(leaves) if _is_float(x)]

    def touched(float_leaves, images, key, index):
        def acts(fl):
            full = list(leaves)
            for i, v in zip(floats, fl):
                full[i] = v
            out = apply_fn(jax.tree_util.tree_unflatten(treedef, full), images)[1]
            return {t: out[t] for t in taps}

        # Random cotangent at tap `index`, zeros elsewhere; drawn flat (XLA:CPU compiles n-d draws slowly).
        cot = {t: jnp.where(index == j, jax.random.normal(jax.random.fold_in(key, j), (math.prod(shapes[t].shape),)),
                            0.0).reshape(shapes[t].shape).astype(shapes[t].dtype) for j, t in enumerate(taps)}
        _, vjp_fn = jax.vjp(acts, float_leaves)
        return [jnp.any(g != 0) for g in vjp_fn(cot)[0]]

    run = core.jit(touched)  # compiled once; the tap index is an argument
    level = {i: len(taps) - 1 for i in floats}
    pending = set(floats)
    for t_index in range(len(taps)):
        hit = run([leaves[i] for i in floats], images, key, t_index)
        for i, h in zip(floats, hit):
            if i in pending and bool(h):
                level[i] = t_index
                pending.discard(i)
        if not pending:
            break
    return jax.tree_util.tree_unflatten(treedef, [level.get(i, -1) for i in range(len(leaves))])


def cascade_steps(num_taps: int, max_steps: int | None = None) -> tuple[int, ...]:
    """The k values of the cascade: how many top levels are randomised at each step.

    All of ``1 .. num_taps``, or, when ``max_steps < num_taps``, ``max_steps``
    values spread evenly over that range that always hold 1 (the last layer),
    the middle ``ceil(num_taps / 2)`` (half the network) and ``num_taps`` (all).
    E.g. ``cascade_steps(16, 5) == (1, 5, 8, 12, 16)``.

    Raises:
      ValueError: ``num_taps < 1``, or ``max_steps`` too small to hold those three.
    """
    if num_taps < 1:
        raise ValueError(f"num_taps must be at least 1, got {num_taps}")
    if max_steps is None or max_steps >= num_taps:
        return tuple(range(1, num_taps + 1))
    if max_steps < 3:
        raise ValueError(f"max_steps must be at least 3 (1, the middle and all {num_taps}) or None, got {max_steps}")
    spacing = (num_taps - 1) / (max_steps - 1)  # > 1, so rounding keeps the values distinct
    steps = [int(math.floor(1 + i * spacing + 0.5)) for i in range(max_steps)]
    middle = (num_taps + 1) // 2
    # The value nearest the middle becomes the middle; it lies between its neighbours, so order holds.
    nearest = min(range(1, max_steps - 1), key=lambda i: abs(steps[i] - middle))
    steps[nearest] = middle
    return tuple(steps)


@jax.jit  # one small program per leaf shape instead of a handful of eager ops
def _redraw(x: jax.Array, key: jax.Array) -> jax.Array:
    """Normal(mean, std) of the tensor's own values, same shape and dtype (stats in float32)."""
    # Flat: XLA:CPU compiled the 4-d version 5-10x slower, for the same draws.
    x32 = jnp.asarray(x, jnp.float32).reshape(-1)
    draw = jax.random.normal(key, x32.shape, jnp.float32) * jnp.std(x32) + jnp.mean(x32)
    return draw.reshape(x.shape).astype(x.dtype)


def randomize_top(params: Any, levels: Any, k: int, key: jax.Array, *, num_taps: int) -> Any:
    """Params with the top ``k`` levels' float leaves redrawn at their trained per-tensor scale.

    Every float leaf with level ``>= num_taps - k`` becomes a draw from
    Normal(mean, std) of its own trained values (per tensor; same shape and
    dtype; a constant tensor, such as a zero bias, stays that constant). Leaf
    ``i`` in flattening order draws with ``fold_in(key, i)``, whatever ``k``:
    step ``k + 1`` keeps step ``k``'s random values and adds one more level, as
    a cascade should. Every other leaf is returned as the same array; ``params``
    itself is never modified (NNX ``State`` included: the output is new
    containers). Works under ``jax.jit`` with ``levels``, ``k`` and ``num_taps``
    static.

    Args:
      params: the trained params pytree.
      levels: :func:`tap_levels` of it (same structure, int leaves).
      k: number of top levels to randomise, ``0 .. num_taps`` (0: nothing).
      key: PRNG key of the random weights.
      num_taps: the number of taps ``levels`` was computed with.

    Returns:
      A new params pytree of the same structure.
    """
    if not 0 <= k <= num_taps:
        raise ValueError(f"k must be in [0, num_taps={num_taps}], got {k}")
    leaves, treedef = jax.tree_util.tree_flatten(params)
    level_leaves, level_def = jax.tree_util.tree_flatten(levels)
    if level_def != treedef:
        raise ValueError(f"levels must have the structure of params: {level_def} vs {treedef}")
    bad = [lv for lv in level_leaves if not (isinstance(lv, int) and -1 <= lv < num_taps)]
    if bad:
        raise ValueError(f"levels must be ints in [-1, {num_taps - 1}] (tap_levels with {num_taps} taps), got {bad[:5]}")
    cutoff = num_taps - k
    # cutoff >= 0, so level -1 (non-float) leaves and k = 0 select nothing.
    out = [_redraw(x, jax.random.fold_in(key, i)) if _is_float(x) and lv >= cutoff else x
           for i, (x, lv) in enumerate(zip(leaves, level_leaves))]
    return jax.tree_util.tree_unflatten(treedef, out)


def randomized_params(params: Any, levels: Any, steps: Sequence[int], key: jax.Array, *, num_taps: int) -> list:
    """:func:`randomize_top` for every k in ``steps`` (e.g. :func:`cascade_steps`), one params each."""
    return [randomize_top(params, levels, k, key, num_taps=num_taps) for k in steps]
