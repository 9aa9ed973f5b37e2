"""From a photo to faces in the analysis frame: detect, mesh, align, parse.

``FacePipeline.read(path)`` decodes an image, finds faces with BlazeFace,
fits the 468-point mesh (two passes: the detector's box, then the box of the
first mesh), and returns :class:`AlignedFace` records: the mesh in image
pixels, the similarity into the 256x256 analysis frame (5 points: eye
centres, nose tip, mouth corners, least squares), the face in that frame and
its label map. ``model_input`` warps the original photo straight into a
model's template (dlib's 150 chip from dlib's own 5-point geometry, or the
ArcFace 5-point template at 112 / 224), and gives the frame->model affine
that carries maps back. Rejections raise :class:`~leam_jax.face.decode.ImageError`
with the file and the reason.

Batches: ``read_many(paths)`` / ``faces_many(images)`` give each photo's faces or its
ImageError in input order (a bad photo does not stop the others). Decoding and
letterboxing run on host threads; BlazeFace with its NMS and the BiSeNet parser run as
one compiled call per batch, padded to a power of two (``batching.run_bucketed``); the
mesh network runs one crop per call, so landmarks never depend on the batch; the crop warps and the mesh label maps stay on the host
(cv2, whose pixels the results were built on). ``faces``/``read`` are the batch of one,
with the same results as before batching; batches of other sizes differ only by XLA's
rounding at that shape (tests/face/test_face_pipeline.py states the tolerance).

Tight crops (the face filling the frame, as LFW-style crop sets ship them):
when the detector finds no usable face, it runs once more on the image with a
black border (``PAD_RETRY_FRACTION``), where the face fills less of the frame;
boxes and keypoints come back in the original image's pixels and the mesh is
fitted on the original (its crop beyond the image is black, the same pixels as
the border). For folders of pre-cropped faces, ``crop=True`` skips the
detector and starts the mesh from the whole image (no margin, no roll
assumed), unlike ``aligned=True``, which assumes dlib's chip geometry.
Measurements behind both: ``benchmarks/tight_crops.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import jax
import numpy as np

from leam_jax import batching, core
from leam_jax.batching import chunks
from leam_jax.face import alignment, decode, detection, parsing, regions, scratch
from leam_jax.models import facemesh
from leam_jax.weights import load_apply

# Mesh vertices behind the 5 analysis points, image-left first for an upright
# face (the subject's right eye is on the image left).
MESH_NOSE_TIP = 1
MESH_MOUTH_CORNERS = (61, 291)
# dlib's 5-point order (get_face_chip_details): image-right eye outer, inner;
# image-left eye outer, inner; nose base (subnasale).
MESH_DLIB5 = (263, 362, 33, 133, 2)

MIN_FACE_PX = 24  # a face box below this side (pixels) is rejected: too little detail to align
MESH_CROP_SCALE = 1.5  # mesh crop side / face size (MediaPipe-style margin)
# Padded retry: black border on each side, as a fraction of the image's long side. Tight 100 px crops of
# ../shared/faces (benchmarks/tight_crops.py --sweep_pad): one detector pass finds 85.7%; with the retry, a black
# border of 0.25 / 0.5 / 0.75 / 1.0 / 1.25 / 1.5 finds 97.4 / 98.5 / 99.1 / 98.9 / 99.4 / 99.1% (112 px alike).
# 0.75 is the smallest reaching 99% (the steps past it are 1-2 images of 463) and keeps the face largest in the
# detector's input. Black rather than replicated (98.5% at 0.75) or reflected (97.6%) edges: the detector knows
# black letterbox bars, and black is what the mesh's warp puts beyond the image, so the mesh is fitted on the
# original image with the same pixels around it.
PAD_RETRY_FRACTION = 0.75
# Below this face probability of the mesh network, the fitted mesh is doubted and the padded detector
# tried (benchmarks/tight_crops.py: 53 of 68 fits over 5% IOD off scored below it, 1 of 391 good ones).
MIN_MESH_SCORE = 0.5
# crop=True: pass-1 mesh crop side / the image's long side. On tight crops (the face's extent filling the frame),
# eye error median / p90 in % of the inter-ocular distance at 100 px, scale 1.0 / 1.25 / 1.5 / 1.75 / 2.0:
# 1.21/2.49, 0.85/1.88, 0.83/1.89, 0.98/2.52, 1.46/3.88 (benchmarks/tight_crops.py --sweep_crop_scale): 1.25-1.5
# is flat; 1.5 is also the mesh's own margin (MESH_CROP_SCALE), so a crop that is the face's extent gets the
# pass-2 geometry from the start.
CROP_MODE_SCALE = 1.5

# Rows per compiled call of the detector and the parser (the mesh: one, see _mesh_many) (smaller batches padded to a power of two),
# on CPU and on accelerators (default_batch_size). On this CPU (2 cores) BlazeFace with its NMS costs 13.6 / 14.1 /
# 14.7 / 16.2 ms per photo at batch 1 / 2 / 4 / 16 (one thread, median of 3): larger batches fall out of cache, and
# the cores are used by read_many's concurrent batches instead. Accelerators want large batches (unmeasured).
CPU_BATCH_SIZE = 1
ACCELERATOR_BATCH_SIZE = 16
# Batches read_many works on at once: one batch's host work (decode, warps, label maps) overlaps another's compiled
# calls. wild_small on this CPU at batch 1: 35.3 / 41.4 / 42.2 photos/s with 2 / 3 / 4 workers (side by side,
# benchmarks/face_pipeline_throughput.py; 4 at batch 2 were no faster). Each worker holds one batch of photos.
WORKERS = 4

# Face parsers behind AlignedFace.labels (FacePipeline(parser=...)).
PARSERS = ("mesh", "bisenet")

# Model input templates: name -> (side, kind, padding).
TEMPLATES = {
    "dlib150": (150, "dlib", 0.25),
    "arcface112": (112, "arcface", 0.0),
    "square224": (224, "arcface", 0.1),
    # FaceNet (facenet-pytorch) 160x160: the ArcFace template scaled to 160 (eyes 0.31 of the side apart, close
    # to the ~0.34 of FaceNet's MTCNN crops with a 32 px margin; facenet-pytorch itself crops boxes, unaligned).
    "facenet160": (160, "arcface", 0.0),
}


@dataclasses.dataclass
class AlignedFace:
    """One face of one image. Coordinates are (x, y) pixels of the original image."""

    path: str
    face_index: int
    score: float
    box: np.ndarray  # [4] x1, y1, x2, y2 (detector)
    mesh: np.ndarray  # [468, 3] (x, y, z), z in the same pixel scale
    points5: np.ndarray  # [5, 2] eye centres, nose tip, mouth corners
    image_to_frame: np.ndarray  # [2, 3]
    frame: np.ndarray  # [S, S, 3] uint8, the face in the analysis frame
    labels: np.ndarray  # [S, S] int, regions.CLASSES ids
    # parser="bisenet" only: [S, S] int, the 19 BiSeNet (CelebAMask-HQ) class ids
    # (leam_jax.models.bisenet.CLASSES); ``labels`` is then their mapping to regions.CLASSES (leam_jax.face.parsing).
    labels19: np.ndarray | None = None
    # The mesh network's face probability on its last crop: low when the crop held no whole face (a detector
    # false positive on part of a face; measured in benchmarks/tight_crops.py).
    mesh_score: float = float("nan")

    @property
    def frame_mesh(self) -> np.ndarray:
        """Mesh (x, y) in analysis-frame pixels. [468, 2]."""
        return _apply(self.image_to_frame, self.mesh[:, :2])


def _apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ a[:, :2].T + a[:, 2]


def mesh_points5(mesh: np.ndarray) -> np.ndarray:
    """The 5 analysis points from a mesh [468, >=2]: eye centres, nose tip, mouth corners."""
    xy = np.asarray(mesh)[:, :2]
    return np.stack([
        xy[list(regions.R_EYE)].mean(0),
        xy[list(regions.L_EYE)].mean(0),
        xy[MESH_NOSE_TIP],
        xy[MESH_MOUTH_CORNERS[0]],
        xy[MESH_MOUTH_CORNERS[1]],
    ])


def mesh_dlib5(mesh: np.ndarray) -> np.ndarray:
    """dlib's 5 shape-predictor points (eye corners, nose base) from a mesh. [5, 2]."""
    return np.asarray(mesh)[list(MESH_DLIB5), :2]


def _crop_to_image(center: np.ndarray, side: float, angle: float, size: int) -> np.ndarray:
    """[2, 3] map from crop pixel (x, y) of a size x size crop to image pixels."""
    c, s = np.cos(angle), np.sin(angle)
    k = side / size
    lin = np.array([[c, -s], [s, c]]) * k
    return np.concatenate([lin, (center - lin @ np.array([size / 2.0, size / 2.0]))[:, None]], axis=1)


def _warp(image: np.ndarray, out_to_in: np.ndarray, size: tuple[int, int], *, antialias: bool = True) -> np.ndarray:
    """cv2 bilinear warp (output pixel -> input pixel map), Gaussian pre-blur when shrinking.

    Only the region the warp reads is blurred (:func:`_blur_region`): the same pixels as blurring
    the whole photo, at a fraction of the cost for a face in a large photo.
    """
    out_to_in = np.asarray(out_to_in, np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(out_to_in[:, :2]))))
    if not (antialias and scale > 1.5):
        return cv2.warpAffine(image, out_to_in, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    zeros = _zeros_like(image)
    blurred, region = _blur_region(image, out_to_in, size, 0.5 * scale, out=zeros)  # against aliasing when shrinking
    try:
        return cv2.warpAffine(blurred, out_to_in, size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    finally:
        if zeros is not None:
            blurred[region] = 0  # the thread's buffer is all zeros again


BLUR_CANVAS = "blur_canvas"  # the thread's all-zero uint8 canvas the region blur writes into


def _zeros_like(image: np.ndarray) -> np.ndarray | None:
    """An all-zero uint8 array of ``image``'s shape from the thread's reused canvas, or None (not
    uint8, or above 4 MP: the blur then maps fresh zeros lazily). The caller zeroes what it wrote."""
    if image.dtype != np.uint8:
        return None
    return scratch.array(BLUR_CANVAS, image.shape, np.uint8, zeroed=True)


def _blur_region(image: np.ndarray, out_to_in: np.ndarray, size: tuple[int, int], sigma: float,
                 out: np.ndarray | None = None) -> tuple[np.ndarray, tuple[slice, slice]]:
    """``image`` Gaussian-blurred where a warp of ``size`` reads it, zeros elsewhere (never read),
    and that region (rows, columns). ``out``: an all-zero array of ``image``'s shape to write into.

    The region is the output's source bounding box (+1 px for bilinear neighbours) plus a margin of
    ceil(4 sigma) + 2 px, wider than cv2's kernel radius (3 sigma for uint8, 4 sigma otherwise),
    clamped to the image: every pixel the warp reads is blurred from the same neighbours as in the
    whole image, reflected borders falling on the image's own border or in the unread margin (cv2
    blurs a numpy slice as an image of its own). The result keeps the image's size so that the warp
    keeps its map: with the map translated into the region, cv2 rounded some source coordinates
    differently (a few pixels one level off in 66 of 280 test warps). Without ``out``, ``np.zeros``
    maps untouched pages lazily: only the region costs time and memory.
    """
    w, h = size
    corners = np.array([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]]) @ out_to_in[:, :2].T + out_to_in[:, 2]
    margin = int(np.ceil(4 * sigma)) + 2
    x0, y0 = (int(v) for v in np.maximum(np.floor(corners.min(0)) - 1 - margin, 0))
    x1, y1 = (int(v) for v in np.minimum(np.ceil(corners.max(0)) + 2 + margin, [image.shape[1], image.shape[0]]))
    out = np.zeros(image.shape, image.dtype) if out is None else out
    region = (slice(y0, max(y0, y1)), slice(x0, max(x0, x1)))
    if x1 > x0 and y1 > y0:
        src = image[region] if image.flags.c_contiguous else np.ascontiguousarray(image[region])
        blurred = cv2.GaussianBlur(src, (0, 0), sigma, dst=out[region])
        if not np.may_share_memory(blurred, out):  # cv2 allocated its own result: copy it in
            out[region] = blurred
    return out, region


def default_batch_size() -> int:
    """:data:`CPU_BATCH_SIZE` on a CPU backend, else :data:`ACCELERATOR_BATCH_SIZE`."""
    return CPU_BATCH_SIZE if jax.default_backend() == "cpu" else ACCELERATOR_BATCH_SIZE


def _check_image(image, path: str, min_face_px: int) -> decode.ImageError | None:
    """Why an array cannot hold a face (not RGB [H, W, 3], or smaller than a face), or None."""
    shape = np.shape(image)
    if len(shape) != 3 or shape[2] != 3:
        return decode.ImageError(path, f"not an RGB image [H, W, 3] (shape {shape})")
    if min(shape[:2]) < min_face_px:
        return decode.ImageError(path, f"image too small for a face ({shape[1]}x{shape[0]}, minimum {min_face_px} px)")
    return None


def _load(path: str, max_pixels: int, boxed: bool) -> tuple[np.ndarray | decode.ImageError, tuple | None]:
    """(the decoded photo or why not, its letterbox for the detector if ``boxed``): one host thread's work."""
    try:
        image = decode.read_rgb(path, max_pixels)
        return image, detection.letterbox(image) if boxed else None
    except decode.ImageError as e:
        return e, None
    except Exception as e:  # noqa: BLE001 - a bad file must not stop its batch; the reason is kept
        return decode.ImageError(path, f"could not process ({type(e).__name__}: {e})"), None


def _as_leaves(model: tuple) -> tuple[Callable, list]:
    """``(apply, params)`` -> the same model taking its params as a flat list of arrays.

    A compiled call flattens its arguments in Python on every call: an nnx.State of ~110 arrays
    takes about 0.15 ms, a list 0.005 (three calls per photo). Same computation, same results.
    """
    apply, params = model
    leaves, treedef = jax.tree_util.tree_flatten(params)
    return functools.partial(_apply_leaves, apply, treedef), leaves


def _apply_leaves(apply, treedef, leaves, x):
    return apply(jax.tree_util.tree_unflatten(treedef, leaves), x)


@core.jit(static_argnames=("apply",))
def _mesh_net(apply, params, crops):
    mesh, flag = apply(params, facemesh.preprocess(crops))
    return mesh, flag


def _pass1_crop(box: np.ndarray, eyes: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre, side, angle) of the first mesh crop: the detector's box, rolled by its eye keypoints."""
    d = eyes[1] - eyes[0]
    return (box[:2] + box[2:]) / 2.0, MESH_CROP_SCALE * max(box[2] - box[0], box[3] - box[1]), float(np.arctan2(d[1], d[0]))


def _pass2_crop(mesh: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(centre, side, angle) of the second crop: the first mesh's own extent and eye line (as MediaPipe tracks)."""
    p5 = mesh_points5(mesh)
    d = p5[1] - p5[0]
    angle = float(np.arctan2(d[1], d[0]))
    rot = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
    upright = (mesh[:, :2] - mesh[:, :2].mean(0)) @ rot.T
    extent = upright.max(0) - upright.min(0)
    return mesh[:, :2].mean(0), MESH_CROP_SCALE * float(extent.max()), angle


def _scaled_box(box: np.ndarray, side_scale: float) -> np.ndarray:
    if side_scale == 1.0:
        return box
    c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * side_scale
    return np.concatenate([c - half, c + half])


# One photo's fit: (its detection, mesh [468, 3] in image pixels, the mesh network's face probability).
Fit = tuple[detection.Detection, np.ndarray, float]
# What a batch gives back per photo: its faces, or why it has none.
Result = list[AlignedFace] | decode.ImageError


class FacePipeline:
    """Detector + mesh with converted weights; one instance serves a whole sweep.

    Photos go through in batches (:meth:`faces_many`, :meth:`read_many`): BlazeFace with its
    NMS and the parser run as one compiled call per batch of up to ``batch_size`` rows (the mesh
    network one crop per call), padded to a power of two so a few shapes serve every batch; letterboxing, the crop warps
    and the label maps run on the host. :meth:`faces` is the batch of one.

    ``parser`` chooses the face parser behind ``AlignedFace.labels``: ``"mesh"``
    (default) rasterises the mesh polygons (:mod:`leam_jax.face.regions`);
    ``"bisenet"`` runs the 19-class BiSeNet on the analysis frame
    (:func:`leam_jax.face.parsing.bisenet_labels`) with ``parser_params``
    (default: the user's converted checkpoint, ``python -m converters bisenet
    --source 79999_iter.pth``), keeps its labels in ``AlignedFace.labels19`` and
    maps them to ``regions.CLASSES`` (:func:`~leam_jax.face.parsing.to_face_classes`).
    """

    def __init__(self, *, min_face_px: int = MIN_FACE_PX, min_score: float = detection.MIN_SCORE,
                 all_faces: bool = False, frame_size: int = alignment.ANALYSIS_SIZE,
                 parser: str = "mesh", parser_params=None, pad_retry: bool = True, batch_size: int = 0,
                 detector: tuple | None = None, mesh: tuple | None = None):
        """``batch_size``: rows per compiled call (0: :func:`default_batch_size`). ``detector``, ``mesh``:
        ``(apply, params)`` of BlazeFace and the face mesh (default: the converted weights)."""
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
        if batch_size < 0:
            raise ValueError(f"batch_size must be >= 1 (0: the default), got {batch_size}")
        self.parser = parser
        self.parser_params = parser_params
        if parser == "bisenet" and parser_params is None:
            self.parser_params = load_apply("bisenet")[1]
        self.det_apply, self.det_params = _as_leaves(detector or load_apply("blazeface"))
        self.mesh_apply, self.mesh_params = _as_leaves(mesh or load_apply("facemesh"))
        self.min_face_px = min_face_px
        self.min_score = min_score
        self.all_faces = all_faces
        self.pad_retry = pad_retry  # False: the old behaviour (one detector pass), for comparisons
        self.frame_size = frame_size
        self.template = alignment.analysis_template(frame_size)
        self.batch_size = batch_size or default_batch_size()

    # -- mesh ------------------------------------------------------------------
    def _mesh_many(self, crops: list[tuple[np.ndarray, np.ndarray, float, float]]) -> list[tuple[np.ndarray, float]]:
        """Meshes of (image, centre, side, angle) crops, one compiled call per crop: [(mesh [468, 3]
        in image pixels, the mesh network's face probability)]."""
        size = facemesh.INPUT_SIZE
        maps = [_crop_to_image(center, side, angle, size) for _, center, side, angle in crops]
        pixels = np.stack([_warp(image, m, (size, size)) for (image, *_), m in zip(crops, maps)])
        # One crop per call: XLA rounds a batch of several differently (up to 0.01 px on the landmarks of the
        # built-in sample photos), and those sub-pixel shifts moved the study's Grad-CAM tables. At batch 1
        # every face gets the landmarks it had before batching, whatever photo or batch it comes in, for
        # about 1 ms more per crop (3.7 vs 2.7 ms at batch 2).
        mesh, flag = batching.run_bucketed(lambda x: _mesh_net(self.mesh_apply, self.mesh_params, x), pixels, 1)
        out = []
        for k, ((_, _, side, _), m) in enumerate(zip(crops, maps)):
            pts = mesh[k].astype(np.float64)
            out.append((np.concatenate([_apply(m, pts[:, :2]), pts[:, 2:3] * side / size], axis=1), float(flag[k])))
        return out

    def _fit_many(self, jobs: list[tuple[np.ndarray, detection.Detection, float]]) -> list[Fit]:
        """Fits of (image, detection, side scale) jobs: mesh pass 1 on the detector's box for all, then pass 2."""
        if not jobs:
            return []
        first = self._mesh_many([(image, *_pass1_crop(_scaled_box(d.box, scale), d.keypoints[:2]))
                                 for image, d, scale in jobs])
        second = self._mesh_many([(image, *_pass2_crop(mesh)) for (image, _, _), (mesh, _) in zip(jobs, first)])
        return [(d, mesh, score) for (_, d, _), (mesh, score) in zip(jobs, second)]

    # -- detection -----------------------------------------------------------------
    def _usable(self, found: list[detection.Detection]) -> list[detection.Detection]:
        return [d for d in found if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face_px]

    def _detect_letterboxed(self, boxed: list[tuple[np.ndarray, detection.Letterbox]]) -> list[list[detection.Detection]]:
        if not boxed:
            return []
        return detection.detect_letterboxed(self.det_apply, self.det_params, np.stack([c for c, _ in boxed]),
                                            [lb for _, lb in boxed], min_score=self.min_score,
                                            batch_size=self.batch_size)

    def _detect_padded_many(self, images: list[np.ndarray]) -> list[list[detection.Detection]]:
        """Detections on each image with a black border, in the original image's pixels.

        A tight crop's face fills the frame, larger than the faces the detector saw in training;
        with the border it fills less of the (letterboxed) input. The letterbox adds the border
        itself (no larger image is built).
        """
        borders = [int(round(PAD_RETRY_FRACTION * max(image.shape[:2]))) for image in images]
        found = self._detect_letterboxed([detection.letterbox(im, border=k) for im, k in zip(images, borders)])
        return [[dataclasses.replace(d, box=d.box - k, keypoints=d.keypoints - k) for d in f] for f, k in zip(found, borders)]

    def _detect_many(self, images: list[np.ndarray], paths: list[str],
                     boxed: list[tuple[np.ndarray, detection.Letterbox]]) -> list[tuple[list[detection.Detection], bool] | decode.ImageError]:
        """Per image: (usable faces, largest first; whether they come from the padded retry), or why none.

        One padded retry when there is no usable face (``pad_retry``), also when every face is too
        small: on a tight crop such a box is part of the face.
        """
        found = self._detect_letterboxed(boxed)
        retry = [k for k, f in enumerate(found) if self.pad_retry and not self._usable(f)]
        padded = dict(zip(retry, self._detect_padded_many([images[k] for k in retry])))
        out: list = []
        for k, f in enumerate(found):
            big = self._usable(f)
            if k in padded:
                big, f = self._usable(padded[k]), f or padded[k]
            if not f:
                out.append(decode.ImageError(paths[k], "no face found"))
            elif not big:
                s = f[0].box
                out.append(decode.ImageError(paths[k], f"face too small ({s[2] - s[0]:.0f}x{s[3] - s[1]:.0f} px, "
                                                       f"minimum {self.min_face_px})"))
            else:
                out.append((big, k in padded))
        return out

    @staticmethod
    def _whole_image(w: int, h: int) -> detection.Detection:
        """The whole image as the face box, upright (eye keypoints on a horizontal line)."""
        eyes = np.array([[0.0, 0.0], [1.0, 0.0]])
        return detection.Detection(box=np.array([0.0, 0.0, w, h]), keypoints=np.concatenate([eyes, np.zeros((4, 2))]),
                                   score=1.0)

    def _refit_padded(self, images: list[np.ndarray], fits: list[Fit]) -> list[Fit]:
        """Per image, the better of its fit and the padded detector's largest face, by the mesh's face probability.

        A detector box on part of a face (an eye region of a tight crop or a small grey frame) passes
        the size check, and the mesh fitted there is far off; the mesh network knows (its face
        probability falls below ``MIN_MESH_SCORE``), and the padded image shows the whole face.
        """
        padded = [self._usable(f) for f in self._detect_padded_many(images)]
        jobs = [k for k, p in enumerate(padded) if p]
        alts = dict(zip(jobs, self._fit_many([(images[k], padded[k][0], 1.0) for k in jobs])))
        return [alts[k] if k in alts and alts[k][2] > fit[2] else fit for k, fit in enumerate(fits)]

    # -- faces -------------------------------------------------------------------
    def faces(self, image: np.ndarray, path: str = "<array>", *, aligned: bool = False,
              crop: bool = False) -> list[AlignedFace]:
        """Faces of a decoded uint8 RGB image, largest first (all, or only the largest).

        ``aligned``: a dlib-style pre-aligned chip (margin included, eyes level); ``crop``: a pre-cropped
        face filling the frame, any roll. Both skip the detector and give one face. Raises
        :class:`~leam_jax.face.decode.ImageError` when the image has none. The batch of one of
        :meth:`faces_many`.
        """
        result = self.faces_many([image], [path], aligned=aligned, crop=crop)[0]
        if isinstance(result, decode.ImageError):
            raise result
        return result

    def faces_many(self, images: Sequence[np.ndarray | decode.ImageError], paths: Sequence[str] | None = None, *,
                   aligned: bool = False, crop: bool = False) -> list[Result]:
        """:meth:`faces` of many images at once: per image its faces or its ImageError (an error
        passed in stays in its place), in input order; a bad image does not stop the others."""
        return self._faces_many(list(images), paths, aligned=aligned, crop=crop)

    def read(self, path: str | Path, *, aligned: bool = False, crop: bool = False) -> list[AlignedFace]:
        return self.faces(decode.read_rgb(path), str(path), aligned=aligned, crop=crop)

    def read_many(self, paths: Sequence[str | Path], *, aligned: bool = False, crop: bool = False, threads: int = 0,
                  workers: int = WORKERS, max_pixels: int = decode.DEFAULT_MAX_PIXELS) -> list[Result]:
        """:meth:`read` of many files: per file its faces or its ImageError, in input order.

        The files go in batches of ``batch_size``; ``workers`` batches at a time, each decoded (and
        letterboxed for the detector) on ``threads`` host threads (0: one per core) and then run
        through :meth:`faces_many`, so one batch's host work overlaps another's compiled calls.
        At most ``workers`` batches of decoded photos are held at once.
        """
        paths = [str(p) for p in paths]
        boxed = not (aligned or crop)
        with ThreadPoolExecutor(threads if threads > 0 else (os.cpu_count() or 1), thread_name_prefix="leam-decode") as pool, \
                ThreadPoolExecutor(max(1, workers), thread_name_prefix="leam-faces") as runners:
            def run(span: slice) -> list[Result]:
                loaded = [f.result() for f in [pool.submit(_load, p, max_pixels, boxed) for p in paths[span]]]
                return self._faces_many([image for image, _ in loaded], paths[span], aligned=aligned, crop=crop,
                                        letterboxes=[lb for _, lb in loaded] if boxed else None)

            return [r for batch in runners.map(run, chunks(len(paths), self.batch_size)) for r in batch]

    def _faces_many(self, images: list, paths: Sequence[str] | None, *, aligned: bool, crop: bool,
                    letterboxes: list | None = None) -> list[Result]:
        if aligned and crop:
            raise ValueError("aligned and crop are exclusive: a dlib-aligned chip or a plain face crop")
        paths = [str(p) for p in paths] if paths is not None else ["<array>"] * len(images)
        if len(paths) != len(images):
            raise ValueError(f"{len(images)} images but {len(paths)} paths")
        out: list = [im if isinstance(im, decode.ImageError) else _check_image(im, p, self.min_face_px)
                     for im, p in zip(images, paths)]
        live = [k for k, r in enumerate(out) if r is None]
        side_scale, from_padded = 1.0, {}
        if aligned or crop:
            chosen = {k: [self._whole_image(images[k].shape[1], images[k].shape[0])] for k in live}
            # pass-1 side = MESH_CROP_SCALE * box side * side_scale: a dlib chip already has its margin
            side_scale = (1.0 if aligned else CROP_MODE_SCALE) / MESH_CROP_SCALE
        else:
            boxed = [letterboxes[k] if letterboxes and letterboxes[k] is not None else detection.letterbox(images[k])
                     for k in live]
            chosen = {}
            for k, found in zip(live, self._detect_many([images[k] for k in live], [paths[k] for k in live], boxed)):
                if isinstance(found, decode.ImageError):
                    out[k] = found
                else:
                    chosen[k], from_padded[k] = found
        jobs = [(k, d) for k, dets in chosen.items() for d in (dets if self.all_faces else dets[:1])]
        fits: dict[int, list[Fit]] = {k: [] for k in chosen}
        for (k, _), fit in zip(jobs, self._fit_many([(images[k], d, side_scale) for k, d in jobs])):
            fits[k].append(fit)
        if not (aligned or crop or self.all_faces) and self.pad_retry:
            # A fit from the padded retry is not refitted: the padded detector would give it again.
            doubted = [k for k, f in fits.items() if f[0][2] < MIN_MESH_SCORE and not from_padded[k]]
            for k, fit in zip(doubted, self._refit_padded([images[k] for k in doubted], [fits[k][0] for k in doubted])):
                fits[k][0] = fit
        for k, faces in zip(fits, self._align_many([(images[k], paths[k], fits[k]) for k in fits])):
            out[k] = faces
        return out

    def _align_many(self, photos: list[tuple[np.ndarray, str, list[Fit]]]) -> list[Result]:
        """The AlignedFace records of fitted photos: similarity, frame warp and label map per face
        (a failure there is that photo's ImageError); the BiSeNet parser as batched calls."""
        out: list = []
        for image, path, fits in photos:
            try:
                out.append([self._align(image, path, i, fit) for i, fit in enumerate(fits)])
            except (ValueError, ArithmeticError, np.linalg.LinAlgError, cv2.error) as e:  # one photo's numbers
                out.append(decode.ImageError(path, f"could not process ({type(e).__name__}: {e})"))
        if self.parser == "bisenet":
            faces = [f for r in out if not isinstance(r, decode.ImageError) for f in r]
            if faces:
                labels19 = batching.run_bucketed(lambda x: parsing.bisenet_labels(x, self.parser_params),
                                                  np.stack([f.frame for f in faces]), self.batch_size)
                for f, lab in zip(faces, labels19):
                    f.labels19, f.labels = lab, parsing.to_face_classes(lab)
        return out

    def _align(self, image: np.ndarray, path: str, i: int, fit: Fit) -> AlignedFace:
        d, mesh, mesh_score = fit
        p5 = mesh_points5(mesh)
        to_frame = alignment.image_to_template(p5, self.template)
        size = (self.frame_size, self.frame_size)
        frame = _warp(image, alignment.invert_affine(to_frame), size)
        labels = regions.label_map(_apply(to_frame, mesh[:, :2]), size) if self.parser == "mesh" else None
        return AlignedFace(str(path), i, d.score, d.box, mesh, p5, to_frame, frame, labels, None, mesh_score)

    # -- model inputs --------------------------------------------------------------
    @staticmethod
    def image_to_model(face: AlignedFace, template: str) -> np.ndarray:
        """[2, 3] image pixels -> the model template's input pixels."""
        side, kind, padding = TEMPLATES[template]
        if kind == "dlib":
            return alignment.invert_affine(alignment.dlib_chip_to_image(mesh_dlib5(face.mesh), side, padding))
        return alignment.image_to_template(face.points5, alignment.five_point_template(side, padding))

    def model_input(self, image: np.ndarray, face: AlignedFace, template: str) -> tuple[np.ndarray, np.ndarray]:
        """(the model's input crop uint8 [S, S, 3] warped from the photo, frame->model affine [2, 3])."""
        side = TEMPLATES[template][0]
        to_model = self.image_to_model(face, template)
        crop = _warp(image, alignment.invert_affine(to_model), (side, side))
        return crop, alignment.frame_to_model(face.image_to_frame, to_model)
