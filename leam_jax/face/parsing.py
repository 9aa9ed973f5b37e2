"""Face parsing with BiSeNet in the analysis frame: logits, 19-class labels, face regions.

The network is :mod:`leam_jax.models.bisenet`; this module runs it on
analysis-frame faces (resized to its 512 training size, logits averaged back
over each frame pixel) and maps its classes onto the face regions.

BiSeNet classes (:data:`leam_jax.models.bisenet.CLASSES`, CelebAMask-HQ order)
and how they map onto the mesh parser's :data:`leam_jax.face.regions.CLASSES`
(:data:`TO_FACE_CLASS`):

==  =========  ================================================================
id  BiSeNet    face_regions class
==  =========  ================================================================
0   background background
1   skin       skin
2   l_brow     l_brow / r_brow by image side (see below)
3   r_brow     l_brow / r_brow by image side
4   l_eye      l_eye / r_eye by image side
5   r_eye      l_eye / r_eye by image side
6   eye_g      (none: eyeglasses) -> background
7   l_ear      (none) -> background
8   r_ear      (none) -> background
9   ear_r      (none: earring) -> background
10  nose       nose
11  mouth      mouth (inside the lips)
12  u_lip      u_lip
13  l_lip      l_lip
14  neck       (none) -> background
15  neck_l     (none: necklace) -> background
16  cloth      (none) -> background
17  hair       (none) -> background
18  hat        (none) -> background
==  =========  ================================================================

"background" in the mesh parser means "outside every face region" (hair,
ears, neck and glasses included), so classes without a counterpart go there;
the 19-class labels stay available (``AlignedFace.labels19``) for statistics
that want them. Sides: the l_/r_ names of CelebAMask-HQ are not checked here
against a subject-left convention, so :func:`to_face_classes` assigns brows
and eyes by position: in the analysis frame the eyes are aligned, and a pixel
left of the eyes' midline (image left) is the subject's right (``r_brow``,
``r_eye``), as in :mod:`leam_jax.face.regions`. The fine mesh classes
(forehead, cheeks, chin, nose bridge/tip) have no BiSeNet counterpart and do
not occur in mapped labels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core
from leam_jax.face import alignment, regions
from leam_jax.models import bisenet

# BiSeNet class -> face_regions class name (None: no counterpart, mapped to background).
# Brows and eyes are re-sided by position (to_face_classes); the names here are their default.
TO_FACE_CLASS: dict[str, str | None] = {
    "background": "background", "skin": "skin", "l_brow": "l_brow", "r_brow": "r_brow",
    "l_eye": "l_eye", "r_eye": "r_eye", "eye_g": None, "l_ear": None, "r_ear": None, "ear_r": None,
    "nose": "nose", "mouth": "mouth", "u_lip": "u_lip", "l_lip": "l_lip",
    "neck": None, "neck_l": None, "cloth": None, "hair": None, "hat": None,
}


def _area_down(x: jax.Array, size: int) -> jax.Array:
    b, h, w, c = x.shape
    if h % size == 0 and w % size == 0:  # the exact footprint of each output pixel
        return x.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))
    return jax.image.resize(x, (b, size, size, c), "linear", antialias=True)


@core.jit(static_argnames=("size",))
def frame_logits(params, frames: jax.Array, size: int = bisenet.INPUT_SIZE) -> jax.Array:
    """Logits [N, S, S, 19] in the analysis frame for frames [N, S, S, 3] (uint8 RGB).

    Each frame is resized bilinearly (half-pixel centres, float, no rounding)
    to ``size`` (512, the parser's training size), parsed, and the logits are
    averaged back over each frame pixel's footprint (2x2 for S = 256).
    """
    n, s = frames.shape[0], frames.shape[1]
    x = jax.image.resize(frames.astype(jnp.float32), (n, size, size, 3), "linear", antialias=True)
    return _area_down(bisenet.apply(params, x), s)


def bisenet_labels(frames_uint8, params, *, size: int = bisenet.INPUT_SIZE) -> np.ndarray:
    """19-class labels (:data:`leam_jax.models.bisenet.CLASSES` ids) of analysis-frame faces.

    Args:
      frames_uint8: [N, S, S, 3] uint8 RGB faces in the analysis frame (S = 256 by default).
      params: converted BiSeNet params (``leam_jax.weights.load_apply("bisenet")[1]``).
      size: the side the parser runs at (512).

    Returns:
      int32 [N, S, S]: argmax of the logits averaged over each frame pixel.
    """
    frames = np.asarray(frames_uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[1] != frames.shape[2]:
        raise ValueError(f"frames must be [N, S, S, 3] RGB, got {frames.shape}")
    return np.asarray(jnp.argmax(frame_logits(params, jnp.asarray(frames), size), axis=-1), np.int32)


def _face_lut() -> np.ndarray:
    bg = regions.CLASS_ID["background"]
    return np.array([bg if TO_FACE_CLASS[c] is None else regions.CLASS_ID[TO_FACE_CLASS[c]] for c in bisenet.CLASSES],
                    np.int32)


def to_face_classes(labels19, *, by_side: bool = True, midline_x: float | None = None) -> np.ndarray:
    """BiSeNet labels [..., S, S] -> :data:`leam_jax.face.regions.CLASSES` ids (see the module table).

    Args:
      labels19: int [..., S, S] BiSeNet class ids in the analysis frame.
      by_side: assign brows and eyes to the subject's left / right by image
        side (pixel centre right of ``midline_x`` -> ``l_``), whatever the
        parser called them; False keeps the parser's own l_/r_ names.
      midline_x: the vertical midline in pixels; default the midpoint of the
        analysis template's eye centres for a frame of this size.

    Returns:
      int32 [..., S, S].
    """
    lab = np.asarray(labels19)
    if lab.ndim < 2 or lab.min(initial=0) < 0 or lab.max(initial=0) >= bisenet.NUM_CLASSES:
        raise ValueError(f"labels19 must be int [..., H, W] with ids in [0, {bisenet.NUM_CLASSES}), got shape {lab.shape}")
    out = _face_lut()[lab]
    if by_side:
        if midline_x is None:
            midline_x = float(alignment.analysis_template(lab.shape[-1])[:2, 0].mean())
        subject_left = (np.arange(lab.shape[-1]) + 0.5) > midline_x  # [W], broadcast over rows
        ids = regions.CLASS_ID
        for part in ("brow", "eye"):
            hit = (lab == bisenet.CLASS_ID[f"l_{part}"]) | (lab == bisenet.CLASS_ID[f"r_{part}"])
            out = np.where(hit, np.where(subject_left, ids[f"l_{part}"], ids[f"r_{part}"]), out).astype(np.int32)
    return out
