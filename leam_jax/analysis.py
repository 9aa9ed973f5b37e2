"""Dataset-level LEAM analysis for one model: references, maps, BC, occlusion.

Glue between a :class:`~leam_jax.models.FaceModel`, the core and the
statistics; the study tool (``leam_jax.main``) and the tests use it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.batching import batched


@dataclasses.dataclass
class SetMaps:
    """LEAM over a set of N images of one model (numpy arrays)."""

    overall: np.ndarray  # [N, S, S]
    per_layer: np.ndarray  # [N, L, S, S]
    flags: np.ndarray  # [N, L]
    overall_flags: np.ndarray  # [N]
    embeddings: np.ndarray  # [N, D]
    references: np.ndarray  # [N, D] leave-one-out references (zero: none)
    used_self: np.ndarray  # [N]
    taps: tuple[str, ...]


def dense_ids(persons: list[str]) -> np.ndarray:
    """Person names -> ints 0..P-1 in order of first appearance."""
    index: dict[str, int] = {}
    return np.array([index.setdefault(p, len(index)) for p in persons], np.int32)


def embed_all(model, images: np.ndarray, batch_size: int) -> np.ndarray:
    fn = core.jit(lambda x: model.apply(model.params, x)[0])
    return batched(fn, images, batch_size)


def explain_set(
    model, images: np.ndarray, persons: list[str], *, weighting: str = "gradcam", batch_size: int = 32,
    taps=None, runner: core.LeamRunner | None = None,
) -> SetMaps:
    """Identity-target LEAM for every image, references leave-one-out over the whole set."""
    ids = dense_ids(persons)
    emb = embed_all(model, images, batch_size)
    refs, _ = core.loo_references(jnp.asarray(emb), jnp.asarray(ids), num_people=int(ids.max()) + 1)
    refs = np.asarray(refs)
    runner = runner or core.LeamRunner(model.apply, model.params, batch_size=batch_size, weighting=weighting,
                                       taps=taps or model.taps)
    parts = [runner(jnp.asarray(images[i : i + batch_size]), references=jnp.asarray(refs[i : i + batch_size]))
             for i in range(0, len(images), batch_size)]
    cat = lambda name: np.concatenate([np.asarray(getattr(p, name)) for p in parts])
    return SetMaps(cat("overall"), cat("per_layer"), cat("flags"), cat("overall_flags"), emb, refs,
                   cat("used_self"), parts[0].taps)


def occlusion_comparison(
    model, images: np.ndarray, maps: np.ndarray, references: np.ndarray, *, percent: float = 1.0,
    fill: str = stats.DEFAULT_FILL, seeds: int = 5, batch_size: int = 32, key: int = 0,
) -> dict[str, np.ndarray]:
    """Δcos per image when the top ``percent``% pixels of ``maps`` are occluded, and
    for as many random pixels (mean over ``seeds``)."""
    embed = core.jit(lambda x: model.apply(model.params, x)[0])
    out = {"leam": [], "random": []}
    prng = jax.random.PRNGKey(key)
    for i in range(0, len(images), batch_size):
        x = jnp.asarray(images[i : i + batch_size], jnp.float32)
        r = jnp.asarray(references[i : i + batch_size])
        m = stats.top_percent_mask(jnp.asarray(maps[i : i + batch_size]), percent)
        prng, k1, k2 = jax.random.split(prng, 3)
        clean = embed(x)
        out["leam"].append(stats.occlusion_delta(embed, x, m, r, fill=fill, key=k1, clean_embeddings=clean))
        out["random"].append(stats.random_occlusion_delta(embed, x, percent, r, k2, seeds=seeds, fill=fill,
                                                          clean_embeddings=clean))
    return {k: np.concatenate([np.asarray(v) for v in vals]) for k, vals in out.items()}
