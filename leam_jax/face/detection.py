"""BlazeFace post-processing: anchors, decoding, weighted NMS, letterboxing.

numpy, scipy.sparse (a dependency of jax) and JAX, no TF or cv2; what
MediaPipe's ``face_detection_back`` graph does around the network (SsdAnchorsCalculator,
TensorsToDetectionsCalculator, NonMaxSuppressionCalculator with the WEIGHTED
algorithm), written out:

* **anchors**: SSD anchors for a 256x256 input, strides 16 and 32 (2 and 6
  anchors per cell; MediaPipe's four layers with strides 16, 32, 32, 32
  merge into these two maps), centres at ``stride * (cell + 0.5)``, fixed
  size 1 (so regressors are offsets in input pixels);
* **decoding**: regressor ``[dx, dy, w, h, kx0, ky0, ..., kx5, ky5]`` (input
  pixels): box centre = anchor + (dx, dy), box size (w, h), keypoint k =
  anchor + (kxk, kyk); score = sigmoid(logit clipped to +-100);
* **weighted NMS**: take the highest-scoring remaining detection, gather every
  remaining detection whose IoU with it exceeds the threshold (itself
  included), replace box and keypoints by their score-weighted mean, keep the
  top score, drop the gathered ones, repeat;
* **letterbox**: scale the image so its long side is 256 (aspect kept),
  centre it on a black 256x256 canvas; ``x / 127.5 - 1`` maps it to [-1, 1].

Keypoints in MediaPipe order: the subject's right eye, left eye, nose tip,
mouth centre, right ear tragion, left ear tragion (the subject's right eye is
on the image left).

Note: @vladmandic/human 3.0.4 feeds this model ``x / 127.5 - 0.5`` (a range
of [-0.5, 1.5]) and a plain resize without letterbox; we follow MediaPipe's
[-1, 1] and letterbox, the range the model was trained for.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse

from leam_jax import core
from leam_jax.batching import batched, run_bucketed
from leam_jax.face import scratch

INPUT_SIZE = 256
NUM_KEYPOINTS = 6
KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth", "right_ear", "left_ear")
# (stride, anchors per cell) of the two feature maps, in the network's output order.
ANCHOR_SPEC = ((16, 2), (32, 6))
SCORE_CLIP = 100.0
MIN_SCORE = 0.5  # MediaPipe face_detection_back: min_score_thresh
IOU_THRESHOLD = 0.3  # MediaPipe: min_suppression_threshold
MAX_DETECTIONS = 16


def anchors(size: int = INPUT_SIZE, spec: Sequence[tuple[int, int]] = ANCHOR_SPEC) -> np.ndarray:
    """Anchor centres (x, y) in input pixels, [896, 2] for the default spec.

    Cells row-major (y outer, x inner), the anchors of one cell consecutive,
    the 16x16 map before the 8x8 one: the order of the network's outputs.
    """
    out = []
    for stride, per_cell in spec:
        cells = -(-size // stride)
        ys, xs = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
        centres = np.stack([xs, ys], -1).reshape(-1, 1, 2).astype(np.float32) + 0.5
        out.append(np.repeat(centres * stride, per_cell, axis=1).reshape(-1, 2))
    return np.concatenate(out, 0)


def decode(regressors: jax.Array, logits: jax.Array, anchor_xy: jax.Array | None = None):
    """Raw network outputs -> boxes, keypoints and scores in input pixels.

    Args:
      regressors: [..., N, 16]; logits: [..., N, 1] (or [..., N]).
      anchor_xy: [N, 2] anchor centres in pixels (default ``anchors()``).

    Returns:
      boxes [..., N, 4] (x1, y1, x2, y2), keypoints [..., N, 6, 2] (x, y),
      scores [..., N] in (0, 1).
    """
    regressors = jnp.asarray(regressors, jnp.float32)
    if regressors.shape[-1] != 4 + 2 * NUM_KEYPOINTS:
        raise ValueError(f"regressors need {4 + 2 * NUM_KEYPOINTS} values per anchor, got shape {regressors.shape}")
    a = jnp.asarray(anchors() if anchor_xy is None else anchor_xy, jnp.float32)
    if regressors.shape[-2] != a.shape[0]:
        raise ValueError(f"{regressors.shape[-2]} regressor rows for {a.shape[0]} anchors")
    logits = jnp.asarray(logits, jnp.float32)
    if logits.shape[-1:] == (1,) and logits.ndim == regressors.ndim:
        logits = logits[..., 0]
    if logits.shape != regressors.shape[:-1]:
        raise ValueError(f"logits {logits.shape} do not match regressors {regressors.shape}")
    centre = regressors[..., 0:2] + a
    half = regressors[..., 2:4] / 2.0
    boxes = jnp.concatenate([centre - half, centre + half], -1)
    kps = regressors[..., 4:].reshape(*regressors.shape[:-1], NUM_KEYPOINTS, 2) + a[:, None, :]
    scores = jax.nn.sigmoid(jnp.clip(logits, -SCORE_CLIP, SCORE_CLIP))
    return boxes, kps, scores


def iou(box: jax.Array, boxes: jax.Array) -> jax.Array:
    """IoU of one box [4] with boxes [N, 4] (x1, y1, x2, y2); 0 where the union is empty."""
    lo = jnp.maximum(box[:2], boxes[:, :2])
    hi = jnp.minimum(box[2:], boxes[:, 2:])
    inter = jnp.prod(jnp.clip(hi - lo, 0.0), -1)
    area = lambda b: jnp.prod(jnp.clip(b[..., 2:] - b[..., :2], 0.0), -1)
    union = area(box) + area(boxes) - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1.0), 0.0)


def weighted_nms(boxes: jax.Array, keypoints: jax.Array, scores: jax.Array, *, iou_threshold: float = IOU_THRESHOLD,
                 min_score: float = MIN_SCORE, max_detections: int = MAX_DETECTIONS):
    """MediaPipe's weighted non-maximum suppression, with fixed output shapes (jit-friendly).

    Args:
      boxes [N, 4], keypoints [N, K, 2], scores [N]; detections scoring below
      ``min_score`` are dropped first; a detection joins a cluster when its
      IoU with the cluster's top detection is *above* ``iou_threshold``.

    Returns:
      (boxes [M, 4], keypoints [M, K, 2], scores [M], valid [M] bool) with
      M = ``max_detections``, clusters by descending top score; rows past the
      last valid one are zeros.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1] or keypoints.shape[0] != boxes.shape[0]:
        raise ValueError(f"need boxes [N, 4], keypoints [N, K, 2], scores [N]; got {boxes.shape}, {keypoints.shape}, {scores.shape}")
    boxes, keypoints, scores = (jnp.asarray(t, jnp.float32) for t in (boxes, keypoints, scores))
    n = boxes.shape[0]
    locs = jnp.concatenate([boxes, keypoints.reshape(n, -1)], -1)

    def step(active, _):
        top = jnp.argmax(jnp.where(active, scores, -jnp.inf))
        ok = active[top]
        members = active & (iou(boxes[top], boxes) > iou_threshold) & ok
        w = jnp.where(members, scores, 0.0)
        total = jnp.sum(w)
        merged = jnp.where(ok, jnp.sum(w[:, None] * locs, 0) / jnp.where(ok, total, 1.0), 0.0)
        return active & ~members, (merged, jnp.where(ok, scores[top], 0.0), ok)

    # Unrolled: on XLA:CPU 0.5 ms less per call than the loop (detector + NMS 12.5 vs 13.0 ms at batch 1),
    # bit-identical detections on 126 photos.
    _, (merged, top_scores, valid) = jax.lax.scan(step, scores >= min_score, None, length=max_detections, unroll=True)
    return merged[:, :4], merged[:, 4:].reshape(max_detections, *keypoints.shape[1:]), top_scores, valid


# --- letterbox: any image <-> the 256x256 network input -----------------------


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """Where the image lies on the canvas: canvas = image * scale + offset (per axis, x then y)."""

    scale: tuple[float, float]
    offset: tuple[float, float]
    image_size: tuple[int, int]  # (width, height)

    def to_image(self, points: np.ndarray) -> np.ndarray:
        """Canvas pixel coordinates [..., 2] (x, y) -> image pixel coordinates."""
        return (np.asarray(points, np.float64) - np.asarray(self.offset)) / np.asarray(self.scale)


def letterbox(image: np.ndarray, size: int = INPUT_SIZE, *, border: int = 0) -> tuple[np.ndarray, Letterbox]:
    """Scale ``image`` [H, W, 3] (uint8 RGB) so its long side is ``size`` and centre it on black.

    ``border``: letterbox the image as if it had a black border of that many pixels on each
    side (the detector's padded retry), without building the larger image; the Letterbox then
    maps to the bordered image's pixels. Returns (canvas [size, size, 3] float32 in 0..255, the
    Letterbox). Resampling is ``jax.image.resize(..., "linear", antialias=True)`` (a triangle
    kernel widened when shrinking), computed on the host (:func:`_resize_matrix`).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f"letterbox needs an RGB image [H, W, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    hp, wp = h + 2 * border, w + 2 * border
    s = size / max(hp, wp)
    nw, nh = max(1, round(wp * s)), max(1, round(hp * s))
    ox, oy = (size - nw) // 2, (size - nh) // 2
    rows = _resize_matrix(h, nh, border) @ _as_float32(image.reshape(h, w * 3))  # [nh, w * 3]
    # cv2.transpose swaps the axes of a 3-channel array 3x faster than numpy's strided copy (same values).
    cols = _resize_matrix(w, nw, border) @ cv2.transpose(rows.reshape(nh, w, 3)).reshape(w, nh * 3)
    canvas = np.zeros((size, size, 3), np.float32)
    canvas[oy:oy + nh, ox:ox + nw] = np.clip(cv2.transpose(cols.reshape(nw, nh, 3)), 0.0, 255.0)
    return canvas, Letterbox(scale=(nw / wp, nh / hp), offset=(float(ox), float(oy)), image_size=(wp, hp))


def _as_float32(x: np.ndarray) -> np.ndarray:
    """``x.astype(np.float32)``, into the thread's reused buffer for photos up to 4 MP
    (:mod:`~leam_jax.face.scratch`); valid until the thread's next call (letterbox reads it at once)."""
    out = scratch.array("float32_cast", x.shape, np.float32)
    if out is None:
        return x.astype(np.float32)
    np.copyto(out, x)
    return out


@functools.lru_cache(maxsize=512)
def _resize_matrix(n_in: int, n_out: int, border: int = 0) -> scipy.sparse.csr_array:
    """[n_out, n_in] sparse weights of ``jax.image.resize(..., "linear", antialias=True)`` along one axis.

    The triangle kernel (widened by the shrink factor) over the axis with ``border`` black pixels
    added at both ends; those pixels' columns are dropped (they add exact zeros). Computed in numpy,
    as every photo has its own size and an op-by-op JAX resize compiles anew for each; as a sparse
    matrix, since each output reads only a band of ~2x the shrink factor inputs (the per-tap numpy
    loop it replaced took 14 ms for a 1-2 MP photo, this 4 ms). Each row's weights are summed and applied in input order,
    as a dense [n_in, n_out] column would be, so the result does not depend on the band's width.
    """
    n_pad = n_in + 2 * border
    inv_scale = n_pad / n_out
    kernel_scale = max(inv_scale, 1.0)
    sample = (np.arange(n_out) + 0.5) * inv_scale - 0.5
    idx = np.floor(sample - kernel_scale).astype(np.int64)[:, None] + np.arange(int(np.ceil(2 * kernel_scale)) + 2)
    weights = np.where((idx >= 0) & (idx < n_pad), np.maximum(0.0, 1.0 - np.abs(sample[:, None] - idx) / kernel_scale), 0.0)
    total = functools.reduce(np.add, weights.T)  # left to right: numpy's pairwise sum would round otherwise
    ok = (np.abs(total) > 1000 * np.finfo(np.float32).eps) & (sample >= -0.5) & (sample <= n_pad - 0.5)
    weights = np.where(ok[:, None], weights / np.where(total != 0, total, 1)[:, None], 0.0).astype(np.float32)
    idx = idx - border
    keep = (idx >= 0) & (idx < n_in) & (weights != 0)
    indptr = np.concatenate([[0], np.cumsum(keep.sum(1))])
    return scipy.sparse.csr_array((weights[keep], idx[keep], indptr), shape=(n_out, n_in))


def preprocess(canvas: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """Pixels 0..255 -> the network's [-1, 1] input (``x / 127.5 - 1``), any leading shape.

    A numpy array is computed on the host, for one photo two eager device ops cost more than the
    arithmetic. It multiplies by the float32 reciprocal as XLA:CPU does for this divide (a true
    divide differs by 1 ulp in 62% of values): the same float32 values, checked on 5M values.
    """
    if isinstance(canvas, np.ndarray):
        return np.asarray(canvas, np.float32) * np.float32(1 / 127.5) - np.float32(1.0)
    return jnp.asarray(canvas, jnp.float32) / 127.5 - 1.0


# --- detection -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Detection:
    """One face in image pixels: box [4] (x1, y1, x2, y2), keypoints [6, 2] (x, y), score."""

    box: np.ndarray
    keypoints: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))


@core.jit(static_argnames=("apply",))
def _network(apply, params, x):
    return apply(params, x)


def _nms_all(regressors, logits, *, min_score, iou_threshold, max_detections):
    boxes, kps, scores = decode(regressors, logits)
    nms = functools.partial(weighted_nms, iou_threshold=iou_threshold, min_score=min_score, max_detections=max_detections)
    return jax.vmap(nms)(boxes, kps, scores)


# Network, decoding and NMS as one compiled call, so only the [B, 16] detections leave the device.
# NMS side, measured on this CPU at batch 1 (benchmarks/face_pipeline_throughput.py): decoding +
# NMS alone 1.2 ms per photo compiled (dispatch included) vs 0.05 ms for the NMS in numpy over the candidates;
# inside the detector's call they add about 1.5 ms to the network's 11.2. Kept here all the same: one
# implementation for CPU and accelerator hosts (where the device side wins and no raw [B, 896, 17] outputs
# cross to the host), and detections unchanged; on this CPU the host side would save ~3% of a photo's CPU.
# ``x`` is preprocessed outside (:func:`preprocess`, on the host): compiled together, XLA rounds
# x / 127.5 - 1 differently (1 ulp), which moved boxes by up to 3e-4 px.
@core.jit(static_argnames=("apply", "min_score", "iou_threshold", "max_detections"))
def _detect_fn(apply, params, x, *, min_score, iou_threshold, max_detections):
    regressors, logits = apply(params, x)
    return _nms_all(regressors, logits, min_score=min_score, iou_threshold=iou_threshold, max_detections=max_detections)


def prepare(images: Sequence[np.ndarray]) -> tuple[jax.Array, list[Letterbox]]:
    """Letterbox and preprocess images (uint8 RGB [H, W, 3], any sizes) -> ([N, 256, 256, 3] in [-1, 1], letterboxes)."""
    canvases, boxes = zip(*(letterbox(im) for im in images))
    return preprocess(jnp.asarray(np.stack(canvases))), list(boxes)


def run_network(apply: Callable, params, x: jax.Array, *, batch_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Raw outputs (regressors [N, 896, 16], logits [N, 896, 1]) in fixed-size batches (one compile)."""
    return batched(lambda chunk: _network(apply, params, chunk), x, batch_size)


def detect_letterboxed(apply: Callable, params, canvases: np.ndarray, letterboxes: Sequence[Letterbox], *,
                       min_score: float = MIN_SCORE, iou: float = IOU_THRESHOLD, max_detections: int = MAX_DETECTIONS,
                       batch_size: int = 16) -> list[list[Detection]]:
    """Faces in letterboxed canvases [N, 256, 256, 3] (float32 0..255, :func:`letterbox`), in the pixels
    of each canvas's image, largest first; one compiled call per chunk (:func:`leam_jax.batching.run_bucketed`)."""
    if len(canvases) == 0:
        return []
    kw = dict(min_score=float(min_score), iou_threshold=float(iou), max_detections=int(max_detections))
    out = run_bucketed(lambda x: _detect_fn(apply, params, x, **kw), preprocess(np.asarray(canvases, np.float32)),
                       batch_size)
    results = []
    for i, lb in enumerate(letterboxes):
        b, k, s, v = (t[i] for t in out)
        dets = [Detection(box=lb.to_image(b[j].reshape(2, 2)).reshape(4), keypoints=lb.to_image(k[j]), score=float(s[j]))
                for j in np.flatnonzero(v)]
        results.append(sorted(dets, key=lambda d: -d.area))
    return results


def detect_many(apply: Callable, params, images: Sequence[np.ndarray], *, min_score: float = MIN_SCORE,
                iou: float = IOU_THRESHOLD, max_detections: int = MAX_DETECTIONS,
                batch_size: int = 16) -> list[list[Detection]]:
    """Faces in each image (any size, uint8 RGB [H, W, 3]), largest first.

    ``apply(params, x [B, 256, 256, 3] in [-1, 1]) -> (regressors, logits)``
    (e.g. from ``leam_jax.weights.load_apply("blazeface")``). Batches have a few fixed
    sizes (:func:`leam_jax.batching.run_bucketed`), so the network compiles once per size.
    """
    if len(images) == 0:
        return []
    canvases, boxes = zip(*(letterbox(im) for im in images))
    return detect_letterboxed(apply, params, np.stack(canvases), boxes, min_score=min_score, iou=iou,
                              max_detections=max_detections, batch_size=batch_size)


def detect(apply: Callable, params, image: np.ndarray, *, min_score: float = MIN_SCORE, iou: float = IOU_THRESHOLD,
           max_detections: int = MAX_DETECTIONS) -> list[Detection]:
    """Faces in one uint8 RGB image [H, W, 3] (any size), largest first. See ``detect_many``."""
    return detect_many(apply, params, [image], min_score=min_score, iou=iou, max_detections=max_detections, batch_size=1)[0]
