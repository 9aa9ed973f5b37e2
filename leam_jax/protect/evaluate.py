"""Measuring a protected photo: what each model sees of it, after which transforms, against which thresholds.

A model sees a photo exactly as in the study: ``FacePipeline.model_input``
warps the photo into the model's template with the clean photo's alignment
(the transforms below keep the geometry), or, for ``redetect``, with the
alignment the face pipeline finds on the protected photo from scratch.

Thresholds (LEAM_SPEC section 7) are fitted on the clean photos of the run: a
photo against another person's reference (the unit mean of that person's
photos) is an impostor comparison; the threshold at FAR f accepts at most f of
them (:func:`leam_jax.stats.threshold_at_far`). A protected photo is protected
at f when its cosine to its own person's reference (the unit mean of the
person's *other* clean photos) is not above the threshold.
"""

from __future__ import annotations

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.batching import batched
from leam_jax.face import decode
from leam_jax.face.pipeline import FacePipeline

FARS = (1e-2, 1e-3)
JPEG_QUALITY = {"jpeg90": 90, "jpeg75": 75}


def transform(photo: np.ndarray, name: str) -> np.ndarray:
    """The photo after one of ``config.TRANSFORMS`` but ``redetect`` (uint8 RGB in, uint8 RGB out)."""
    if name in JPEG_QUALITY:
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY,
                                                                                 JPEG_QUALITY[name]])
        return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if name == "resize0.5":
        h, w = photo.shape[:2]
        small = cv2.resize(photo, (max(1, round(w / 2)), max(1, round(h / 2))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if name == "blur1":
        return cv2.GaussianBlur(photo, (0, 0), 1.0)
    raise ValueError(f"unknown transform {name!r}")


class Embedder:
    """A model's embeddings of model inputs, in fixed-shape batches (one compilation)."""

    def __init__(self, model, template: str, batch_size: int = 16):
        self.name, self.template, self.batch_size = model.name, template, batch_size
        self.params = model.params
        apply = model.apply
        self._fn = core.jit(lambda params, x: core.l2_normalize(apply(params, x)[0]),
                            cpu_options=core.FORWARD_CPU_OPTIONS)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """[N, S, S, 3] uint8 -> [N, D] unit embeddings (float32)."""
        if len(crops) == 0:
            return np.zeros((0, 0), np.float32)
        x = jnp.asarray(np.asarray(crops), jnp.float32)
        return np.asarray(batched(lambda b: self._fn(self.params, b), x, self.batch_size), np.float32)


def crops_of(pipeline: FacePipeline, photo: np.ndarray, face, templates) -> dict[str, np.ndarray]:
    return {t: pipeline.model_input(photo, face, t)[0] for t in templates}


def redetected_face(pipeline: FacePipeline, photo: np.ndarray, path: str):
    """The largest face the pipeline finds in a protected photo from scratch, or None."""
    try:
        return pipeline.faces(photo, path)[0]
    except decode.ImageError:
        return None


def read_back(path) -> np.ndarray:
    """A written protected photo, decoded as any input photo is."""
    return decode.read_rgb(path)


def _reference_scores(emb: np.ndarray, persons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of clean photos [N, D] (unit) to every person's reference [N, P], and own-person [N, P]."""
    uniq, ids = np.unique(persons, return_inverse=True)
    g, _ = core.person_gallery(jnp.asarray(emb), jnp.asarray(ids), num_people=len(uniq))
    return np.asarray(jnp.asarray(emb) @ g.T), ids[:, None] == np.arange(len(uniq))[None, :]


def thresholds(emb: np.ndarray, persons: np.ndarray, fars=FARS) -> dict[float, float]:
    """Each FAR's threshold from the impostor comparisons of clean photos against the other people's
    references."""
    scores, own = _reference_scores(emb, persons)
    return {f: float(stats.threshold_at_far(scores.reshape(-1), own.reshape(-1), f)) for f in fars}


def impostor_spread(emb: np.ndarray, persons: np.ndarray) -> float:
    """Standard deviation of the clean impostor cosines (photo against another person's reference)."""
    scores, own = _reference_scores(emb, persons)
    return float(np.std(scores[~own]))


def pair_thresholds(emb: np.ndarray, persons: np.ndarray, fars=FARS) -> dict[float, float]:
    """Each FAR's threshold over clean photo-to-photo pairs of different people."""
    uniq, ids = np.unique(persons, return_inverse=True)
    scores, same = stats.pair_scores(jnp.asarray(emb), jnp.asarray(ids))
    return {f: float(stats.threshold_at_far(scores, same, f)) for f in fars}


def bootstrap(values: np.ndarray, persons: np.ndarray, seed: int) -> tuple[float, float, float]:
    """(mean, 95% low, high) over photos, people resampled (:func:`leam_jax.stats.person_bootstrap_mean`)."""
    uniq, ids = np.unique(np.asarray(persons), return_inverse=True)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    m, lo, hi = stats.person_bootstrap_mean(jax.random.PRNGKey(seed), np.asarray(values, np.float32), ids,
                                            num_people=len(uniq))
    return float(m), float(lo), float(hi)
