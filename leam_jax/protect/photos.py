"""The face's region of a photo: what the perturbation lives in, how each model sees it, and its masks.

A protected photo keeps its own resolution. For each photo the face pipeline's
alignment gives, per model template, the affine from the model's input to the
photo; the *region* is the box around every model's input footprint and the
analysis frame's footprint, plus the margin the anti-aliasing blur reads. The
perturbation is optimised on the region (zero-padded to a square *bucket* side,
so a few shapes serve every photo) and pasted back into the photo.

Models see the region exactly as the face pipeline shows them the photo
(``FacePipeline.model_input``): a Gaussian pre-blur of sigma ``0.5 x scale``
when the warp shrinks more than 1.5x, then a bilinear warp, here in JAX so the
gradient reaches the photo's pixels (:func:`model_view`).

Masks are sets of region pixels inside the analysis frame's footprint (the
*face pixels*); ``p`` percent of a photo means ``round(p/100 x`` face pixels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import zlib

import cv2
import jax.numpy as jnp
import numpy as np

from leam_jax import core, protection
from leam_jax.face import alignment, decode, regions
from leam_jax.face.pipeline import TEMPLATES, AlignedFace, FacePipeline
from leam_jax.study.inputs import Source

# Square region sides (pixels): each photo's region is zero-padded to the first that holds it, so one
# compiled protection serves all photos of a bucket. Steps of 1.5x: at most 2.25x the pixels.
BUCKETS = (128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
ANTIALIAS_FROM = 1.5  # FacePipeline._warp: shrinking more than this is pre-blurred with sigma 0.5 x scale
MARGIN_PX = 2

MASK_KINDS = ("leam", "random", "parser", "gradcam_last", "full")
# The parser baseline: the paper's critical region (eyes, brows and nose), cut to the mask's pixel count.
PARSER_CLASSES = regions.REGION_GROUPS[regions.CRITICAL_REGION]


def bucket_side(extent: int) -> int:
    """The first bucket that holds ``extent`` pixels (past the last: the next multiple of 1024)."""
    for b in BUCKETS:
        if extent <= b:
            return b
    return int(math.ceil(extent / 1024) * 1024)


def blur_radius(side: int, template: str) -> int:
    """Static kernel half-width of the anti-aliasing blur of ``template``'s view of a ``side`` bucket.

    A model's footprint lies inside the region, so its scale is at most side / S and sigma at most
    0.5 side / S: three sigmas of that bound. No blur below the pipeline's shrink threshold.
    """
    s = TEMPLATES[template][0]
    return 0 if side <= ANTIALIAS_FROM * s else int(math.ceil(1.5 * side / s))


def model_view(template: str, side: int):
    """``to_model(regions [B, side, side, 3], out_to_in [B, 2, 3]) -> [B, S, S, 3]`` of ``template``:
    the face pipeline's anti-aliased warp, differentiable in the regions."""
    s, radius = TEMPLATES[template][0], blur_radius(side, template)

    def to_model(photos, out_to_in):
        if radius:
            scale = jnp.sqrt(jnp.abs(jnp.linalg.det(out_to_in[:, :, :2])))
            sigma = jnp.where(scale > ANTIALIAS_FROM, 0.5 * scale, 0.0)
            photos = protection.gaussian_blur_batch(photos, sigma, radius)
        return protection.warp_affine_batch(photos, out_to_in, (s, s))

    return to_model


@dataclasses.dataclass
class PhotoFace:
    """One photo to protect: its largest face and the geometry of its region."""

    source: Source
    photo: np.ndarray  # [H, W, 3] uint8, the decoded original
    face: AlignedFace
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 of the region in photo pixels (x1, y1 exclusive)
    side: int  # bucket side the region is padded to
    model_affines: dict[str, np.ndarray]  # template -> [2, 3] model input px -> region px
    frame_affine: np.ndarray  # [2, 3] region px -> analysis frame px
    crops: dict[str, np.ndarray]  # template -> [S, S, 3] uint8 clean model input (FacePipeline.model_input)
    frame_to_model: dict[str, np.ndarray]  # template -> [2, 3]

    @property
    def path(self) -> str:
        return self.source.path

    @property
    def person(self) -> str:
        return self.source.person

    @property
    def face_index(self) -> int:
        return self.face.face_index

    @property
    def labels(self) -> np.ndarray:
        return self.face.labels.astype(np.uint8)

    def region(self) -> np.ndarray:
        """[side, side, 3] uint8: the region of the photo, zero-padded at the bottom and right."""
        x0, y0, x1, y1 = self.box
        out = np.zeros((self.side, self.side, 3), np.uint8)
        out[: y1 - y0, : x1 - x0] = self.photo[y0:y1, x0:x1]
        return out

    @functools.cached_property
    def _footprint(self) -> np.ndarray:
        x0, y0, x1, y1 = self.box
        ys, xs = np.mgrid[0: self.side, 0: self.side].astype(np.float64)
        fx, fy = apply_affine(self.frame_affine, xs, ys)
        f = alignment.ANALYSIS_SIZE
        return (fx >= 0) & (fy >= 0) & (fx <= f - 1) & (fy <= f - 1) & (xs < x1 - x0) & (ys < y1 - y0)

    def footprint(self) -> np.ndarray:
        """[side, side] bool: the region pixels inside the analysis frame (the face pixels); computed once
        per photo, not per mask (a copy: callers may change it)."""
        return self._footprint.copy()

    def paste(self, region: np.ndarray) -> np.ndarray:
        """A copy of the photo with ``region`` [side, side, 3] uint8 written back into its box."""
        x0, y0, x1, y1 = self.box
        out = self.photo.copy()
        out[y0:y1, x0:x1] = region[: y1 - y0, : x1 - x0]
        return out


def apply_affine(a: np.ndarray, xs, ys):
    return a[0, 0] * xs + a[0, 1] * ys + a[0, 2], a[1, 0] * xs + a[1, 1] * ys + a[1, 2]


def _corners(out_to_in: np.ndarray, side: float) -> np.ndarray:
    xs, ys = np.array([0.0, side, 0.0, side]), np.array([0.0, 0.0, side, side])
    return np.stack(apply_affine(out_to_in, xs, ys), axis=1)


def _scale(out_to_in: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(out_to_in[:, :2]))))


def photo_face(source: Source, photo: np.ndarray, face: AlignedFace, templates,
               pipeline: FacePipeline) -> PhotoFace:
    """The region of ``face`` in ``photo``, its affines and clean model inputs for ``templates``."""
    to_image = {t: alignment.invert_affine(FacePipeline.image_to_model(face, t)) for t in templates}
    frame_to_image = alignment.invert_affine(face.image_to_frame)
    pts = [_corners(a, TEMPLATES[t][0]) for t, a in to_image.items()]
    pts.append(_corners(frame_to_image, alignment.ANALYSIS_SIZE))
    pts = np.concatenate(pts)
    sigma = max([0.5 * _scale(a) for a in to_image.values() if _scale(a) > ANTIALIAS_FROM], default=0.0)
    margin = int(math.ceil(3 * sigma)) + MARGIN_PX
    h, w = photo.shape[:2]
    x0, y0 = (int(max(0, math.floor(v) - margin)) for v in pts.min(0))
    x1, y1 = int(min(w, math.ceil(pts[:, 0].max()) + margin + 1)), int(min(h, math.ceil(pts[:, 1].max()) + margin + 1))
    side = bucket_side(max(x1 - x0, y1 - y0))
    shift = np.array([[0.0, 0.0, -x0], [0.0, 0.0, -y0]])
    affines = {t: (a + shift).astype(np.float32) for t, a in to_image.items()}
    frame_affine = alignment.compose_affine(face.image_to_frame, np.array([[1.0, 0.0, x0], [0.0, 1.0, y0]]))
    crops, f2m = {}, {}
    for t in templates:
        crops[t], f2m[t] = pipeline.model_input(photo, face, t)
    return PhotoFace(source, photo, face, (x0, y0, x1, y1), side, affines, frame_affine.astype(np.float32), crops, f2m)


def prepare_photo(pipeline: FacePipeline, source: Source, templates, *, aligned: bool, all_faces: bool,
                  max_pixels: int, budget=None, crops: bool = False) -> list[PhotoFace]:
    """One photo -> its largest face as a :class:`PhotoFace` (the study loader's ``prepare``; raises
    :class:`~leam_jax.face.decode.ImageError` with the reason)."""
    w, h = decode.probe(source.path, max_pixels)
    with budget.hold(w * h) if budget is not None else contextlib.nullcontext():
        image = decode.decode_rgb(decode.read_checked(source.path, max_pixels, (w, h)), source.path)
        face = pipeline.faces(image, source.path, aligned=aligned, crop=crops)[0]
        return [photo_face(source, image, face, templates, pipeline)]


# ---------------------------------------------------------------------------
# Masks: exactly k face pixels per photo.


def mask_count(footprint: np.ndarray, percent: float) -> int:
    """``round(percent / 100 x`` face pixels), at least one."""
    return max(1, int(round(percent / 100.0 * int(footprint.sum()))))


def _rng(seed: int, *parts) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(str(p).encode()) for p in parts)])


def top_k(score: np.ndarray, footprint: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The k face pixels of highest ``score`` (ties in random order): [side, side] bool."""
    idx = np.flatnonzero(footprint)
    order = np.lexsort((rng.random(idx.size), -score.reshape(-1)[idx]))
    out = np.zeros(footprint.size, bool)
    out[idx[order[:k]]] = True
    return out.reshape(footprint.shape)


def frame_to_region(pf: PhotoFace, frame_map: np.ndarray) -> np.ndarray:
    """An analysis-frame map [F, F] sampled at the region's pixels (bilinear): [side, side]."""
    m = jnp.asarray(frame_map, jnp.float32)[..., None]
    return np.asarray(core.warp_affine(m, jnp.asarray(pf.frame_affine), (pf.side, pf.side)))[..., 0]


def parser_region(pf: PhotoFace) -> np.ndarray:
    """[side, side] bool: region pixels of the parser's eyes, brows and nose."""
    ids = [regions.CLASS_ID[c] for c in PARSER_CLASSES]
    return frame_to_region(pf, np.isin(pf.face.labels, ids).astype(np.float32)) > 0.5


def mask(kind: str, pf: PhotoFace, percent: float, *, seed: int, leam_map=None, gradcam_map=None) -> np.ndarray:
    """One kind of mask (:data:`MASK_KINDS`) of ``percent`` of the face pixels: [side, side] bool.

    ``leam`` / ``gradcam_last``: the top pixels of the frame map given (the source models' mean);
    ``random``: uniform; ``parser``: eyes, brows and nose, a uniform subset when the region is larger
    than k, grown by distance to it when smaller; ``full``: every face pixel (``percent`` ignored).
    """
    foot = pf.footprint()
    if kind == "full":
        return foot
    k = mask_count(foot, percent)
    rng = _rng(seed, pf.path, kind, percent)
    if kind == "random":
        return top_k(np.zeros(foot.shape), foot, k, rng)
    if kind == "parser":
        inside = parser_region(pf)
        dist = cv2.distanceTransform((~inside).astype(np.uint8), cv2.DIST_L2, 5)
        return top_k(-dist, foot, k, rng)
    if kind in ("leam", "gradcam_last"):
        frame_map = leam_map if kind == "leam" else gradcam_map
        return top_k(frame_to_region(pf, frame_map), foot, k, rng)
    raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
