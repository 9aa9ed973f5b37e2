"""Orbax checkpoints of converted weights and their content digests.

Params travel as flat ``{"a/b/c": array}`` dicts (:mod:`leam_jax.models.params`).
The content digest (sha256 over keys, dtypes, shapes and bytes, in key order)
is compared with the one the manifest recorded, so an altered checkpoint never
loads as a silently different model; the strict merge into the model's
``eval_shape`` target then names any missing, extra or mis-shaped key.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import numpy as np

from leam_jax.models.params import ParamsError, flatten, unflatten
from leam_jax.weights.errors import WeightsError


class CheckpointError(ParamsError, WeightsError):
    """A checkpoint is missing, damaged, or holds other params than the manifest recorded."""


def params_digest(flat: Mapping[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for key in sorted(flat):
        a = np.ascontiguousarray(np.asarray(flat[key]))
        h.update(f"{key}|{a.dtype.str}|{a.shape}\n".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(path: str | os.PathLike, flat: Mapping[str, np.ndarray]) -> str:
    """Write an Orbax checkpoint atomically; returns the params digest."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        _rmtree(tmp)
    tree = unflatten({k: np.asarray(v) for k, v in flat.items()})
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp, tree)
        ckptr.wait_until_finished()
    if path.exists():
        _rmtree(path)
    os.replace(tmp, path)
    return params_digest(flat)


def restore(path: str | os.PathLike, *, expected_digest: str | None = None) -> dict[str, np.ndarray]:
    """Read a checkpoint back as flat numpy params, verifying its digest."""
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            meta = ckptr.metadata(path)
            tree_meta = getattr(meta, "item_metadata", meta)
            # Restore onto host numpy arrays, whatever devices exist here.
            target = jax.tree_util.tree_map(
                lambda m: np.zeros(m.shape, m.dtype), _as_tree(tree_meta)
            )
            tree = ckptr.restore(path, target)
    except Exception as e:  # Orbax raises many types for damaged files.
        raise CheckpointError(f"{path}: cannot read checkpoint ({type(e).__name__}: {e})") from e
    flat = {k: np.asarray(v) for k, v in flatten(tree).items()}
    if expected_digest is not None:
        got = params_digest(flat)
        if got != expected_digest:
            raise CheckpointError(
                f"{path}: params digest {got[:16]}... differs from the manifest's {expected_digest[:16]}... "
                "(the checkpoint was altered or damaged; rebuild it: python -m converters NAME --force)"
            )
    return flat


def _as_tree(meta):
    tree = getattr(meta, "tree", meta)
    return dict(tree) if isinstance(tree, Mapping) else tree


def _rmtree(p: Path) -> None:
    import shutil

    shutil.rmtree(p)
