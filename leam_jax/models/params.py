"""Flat params and strict merging into a model's abstract shapes.

Params travel as flat ``{"a/b/c": array}`` dicts (the converters' mapping
tables use the same keys). Weights are merged into the model's ``eval_shape``
target: any missing, extra or mis-shaped key is an error that names the key.
Pure tree helpers, no file I/O: converters and checkpoints both build on them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax
import numpy as np
from flax import nnx


class ParamsError(ValueError):
    """Params do not fit the model: a missing, extra or mis-shaped key (named in the message)."""


def flatten(tree: Mapping) -> dict[str, np.ndarray]:
    """Nested dict/list/State -> {"a/0/b": array}."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    out = {}
    for path, leaf in leaves:
        parts = []
        for k in path:
            for attr in ("key", "idx", "name"):
                if hasattr(k, attr):
                    parts.append(str(getattr(k, attr)))
                    break
        out["/".join(parts)] = leaf
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    """{"a/0/b": x} -> {"a": {"0": {"b": x}}} (string keys, as Orbax stores them)."""
    root: dict = {}
    for key, value in flat.items():
        node = root
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return root


def _first(keys: list[str]) -> str:
    return repr(keys[0]) + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")


def strict_merge(target: Mapping[str, object], loaded: Mapping[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Check loaded params key by key against the target's shapes and dtypes."""
    missing = sorted(set(target) - set(loaded))
    extra = sorted(set(loaded) - set(target))
    if missing:
        raise ParamsError(f"{source}: missing key {_first(missing)}")
    if extra:
        raise ParamsError(f"{source}: unexpected key {_first(extra)}")
    out = {}
    for key, want in target.items():
        got = np.asarray(loaded[key])
        if tuple(got.shape) != tuple(want.shape):  # type: ignore[attr-defined]
            raise ParamsError(f"{source}: key {key!r} has shape {got.shape}, model expects {tuple(want.shape)}")  # type: ignore[attr-defined]
        if got.dtype != want.dtype:  # type: ignore[attr-defined]
            raise ParamsError(f"{source}: key {key!r} has dtype {got.dtype}, model expects {want.dtype}")  # type: ignore[attr-defined]
        out[key] = got
    return out


def abstract_flat(ctor: Callable[[], nnx.Module]) -> dict[str, jax.ShapeDtypeStruct]:
    """Flat shapes/dtypes of a module's params, without allocating them."""
    abstract = nnx.eval_shape(ctor)
    return flatten(nnx.state(abstract, nnx.Param).to_pure_dict())


def abstract_shapes(ctor: Callable[[], nnx.Module]) -> dict[str, tuple[int, ...]]:
    """{"a/b/c": shape} of a module's params (what a converter's mapping table must fill)."""
    return {k: tuple(v.shape) for k, v in abstract_flat(ctor).items()}


def params_from_flat(ctor: Callable[[], nnx.Module], flat: Mapping[str, np.ndarray], source: str) -> nnx.State:
    """The module's params with ``flat`` weights merged strictly (missing, extra or mis-shaped keys
    are errors naming the key), on an abstract module: its random initialisers never run (eagerly
    they cost seconds per model)."""
    merged = strict_merge(abstract_flat(ctor), flat, source)
    params = nnx.state(nnx.eval_shape(ctor), nnx.Param)
    pure_dict = params.to_pure_dict()
    nested = unflatten(merged)

    def fill(target, src):
        for k in list(target.keys()):
            sk = str(k)
            if isinstance(target[k], Mapping):
                fill(target[k], src[sk])
            else:
                target[k] = jax.numpy.asarray(src[sk])

    fill(pure_dict, nested)
    nnx.replace_by_pure_dict(params, pure_dict)
    return params
