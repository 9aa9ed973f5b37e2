"""The study's model-parameter randomisation check (LEAM_SPEC section 6; Adebayo et al. 2018).

On a seeded subset of whole people, each model's maps are recomputed after
the weights of its top k layers are redrawn (:mod:`leam_jax.sanity`, cascading
from the embedding end), with the same compiled functions as the sweep
(:func:`leam_jax.study.compute.explain_set_all`): references and the gallery
come from the (randomised) model's own embeddings of the subset, as they would
for a run over just those faces. Per face and step: Spearman rank correlation
and Bhattacharyya coefficient of the overall map to the trained model's
(:func:`leam_jax.stats.spearman`, :func:`leam_jax.stats.bhattacharyya`).
The result is one named file of the run, ``shards/sanity.npz``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import sanity, stats
from leam_jax.study import schema
from leam_jax.study.compute import ModelWorker, explain_set_all
from leam_jax.study.inputs import Source

FIGURE_FACES = 1  # faces whose maps at every step are stored for the report's figure
LEVEL_IMAGES = 4  # faces the tap levels are found on (any real inputs do)


def choose_sources(sources: Sequence[Source], n_faces: int, seed: int) -> list[Source]:
    """Up to ``n_faces`` images of whole people, people in a seeded order, those with two or more
    images first (the identity targets need a reference), kept in input order."""
    people: dict[str, list[int]] = {}
    for i, s in enumerate(sources):
        people.setdefault(s.person, []).append(i)
    names = sorted(people)
    order = np.random.default_rng(seed).permutation(len(names))
    ranked = sorted(order, key=lambda k: len(people[names[k]]) < 2)  # stable: seeded order within each kind
    keep: list[int] = []
    for k in ranked:
        rows = people[names[k]]
        if len(keep) + len(rows) <= n_faces:
            keep += rows
    return [sources[i] for i in sorted(keep)]


def distinct_steps(levels, steps: Sequence[int], num_taps: int) -> tuple[int, ...]:
    """The cascade steps that randomise more params than the step kept before: a tap without params
    of its own (a pooling) would repeat the previous step. The last step (every layer) is always kept."""
    leaves = [lv for lv in jax.tree_util.tree_leaves(levels) if lv >= 0]
    count = lambda k: sum(lv >= num_taps - k for lv in leaves)  # noqa: E731
    kept: list[int] = []
    for k in steps:
        if kept and count(k) == count(kept[-1]):
            if k == num_taps:
                kept[-1] = k
            continue
        kept.append(k)
    return tuple(kept)


def _figure_maps(maps: np.ndarray, size: int) -> np.ndarray:
    """[K, S, S] maps -> [K, size, size] (for the figure only)."""
    return np.asarray(jax.image.resize(jnp.asarray(maps, jnp.float32), (maps.shape[0], size, size), "linear"))


def cascade_arrays(worker: ModelWorker, images: np.ndarray, persons: Sequence[str], *, seed: int,
                   max_steps: int, figure_size: int = 64) -> dict[str, np.ndarray]:
    """One model's cascade over the subset: the arrays to store (schema keys)."""
    model, m = worker.model, worker.name
    num_taps = len(model.taps)
    levels = sanity.tap_levels(model.apply, model.params, jnp.asarray(images[:LEVEL_IMAGES], jnp.float32),
                               model.taps)
    steps = distinct_steps(levels, sanity.cascade_steps(num_taps, max_steps), num_taps)
    trained = explain_set_all(worker, images, persons)
    key = jax.random.PRNGKey(seed)
    per_step = {w: {"spearman": [], "bc": [], "maps": [trained[w].overall[:FIGURE_FACES]]} for w in trained}
    for k in steps:
        params = sanity.randomize_top(model.params, levels, k, key, num_taps=num_taps)
        rand = explain_set_all(worker, images, persons, params=params)
        for w, out in per_step.items():
            a, b = jnp.asarray(trained[w].overall), jnp.asarray(rand[w].overall)
            out["spearman"].append(np.asarray(stats.spearman(a, b)))
            out["bc"].append(np.asarray(stats.bhattacharyya(a, b)))
            out["maps"].append(rand[w].overall[:FIGURE_FACES])
    arrays = {schema.sanity_steps(m): np.array(steps, np.int32),
              schema.sanity_taps(m): np.array(model.taps, dtype=str)}
    for w, out in per_step.items():
        arrays[schema.sanity(m, w, "spearman")] = np.stack(out["spearman"]).astype(np.float32)
        arrays[schema.sanity(m, w, "bc")] = np.stack(out["bc"]).astype(np.float32)
        maps = np.stack(out["maps"], axis=1)  # [faces, 1 + K, S, S]
        arrays[schema.sanity(m, w, "maps")] = np.stack([_figure_maps(f, figure_size) for f in maps]).astype(np.float16)
    return arrays


def sanity_arrays(workers: Sequence[ModelWorker], faces, *, seed: int, max_steps: int) -> dict[str, np.ndarray]:
    """Every model's cascade over the loaded subset ``faces`` (:class:`~leam_jax.study.loader.FaceInput`)."""
    persons = [f.person for f in faces]
    out: dict[str, np.ndarray] = {schema.meta("path"): np.array([f.source.path for f in faces], dtype=str),
                                  schema.meta("person"): np.array(persons, dtype=str)}
    for wk in workers:
        images = np.stack([f.crops[wk.template] for f in faces]).astype(np.float32)
        out.update(cascade_arrays(wk, images, persons, seed=seed, max_steps=max_steps))
    return out
