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
from pathlib import Path

import cv2
import jax.numpy as jnp
import numpy as np

from leam_jax import core
from leam_jax.face import alignment, decode, detection, parsing, regions
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
    """cv2 bilinear warp (output pixel -> input pixel map), Gaussian pre-blur when shrinking."""
    scale = float(np.sqrt(abs(np.linalg.det(out_to_in[:, :2]))))
    src = image
    if antialias and scale > 1.5:
        src = cv2.GaussianBlur(image, (0, 0), 0.5 * scale)  # against aliasing when shrinking
    return cv2.warpAffine(src, out_to_in.astype(np.float64), size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@core.jit(static_argnames=("apply",))
def _mesh_net(apply, params, crops):
    mesh, flag = apply(params, facemesh.preprocess(crops))
    return mesh, flag


class FacePipeline:
    """Detector + mesh with converted weights; one instance serves a whole sweep.

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
                 parser: str = "mesh", parser_params=None, pad_retry: bool = True):
        if parser not in PARSERS:
            raise ValueError(f"parser must be one of {PARSERS}, got {parser!r}")
        self.parser = parser
        self.parser_params = parser_params
        if parser == "bisenet" and parser_params is None:
            self.parser_params = load_apply("bisenet")[1]
        self.det_apply, self.det_params = load_apply("blazeface")
        self.mesh_apply, self.mesh_params = load_apply("facemesh")
        self.min_face_px = min_face_px
        self.min_score = min_score
        self.all_faces = all_faces
        self.pad_retry = pad_retry  # False: the old behaviour (one detector pass), for comparisons
        self.frame_size = frame_size
        self.template = alignment.analysis_template(frame_size)

    # -- mesh ------------------------------------------------------------------
    def _mesh(self, image: np.ndarray, center: np.ndarray, side: float, angle: float) -> tuple[np.ndarray, float]:
        size = facemesh.INPUT_SIZE
        crop_to_img = _crop_to_image(center, side, angle, size)
        crop = _warp(image, crop_to_img, (size, size))
        mesh, flag = _mesh_net(self.mesh_apply, self.mesh_params, jnp.asarray(crop[None], jnp.float32))
        pts = np.asarray(mesh[0], np.float64)
        xy = _apply(crop_to_img, pts[:, :2])
        z = pts[:, 2:3] * side / size
        return np.concatenate([xy, z], axis=1), float(np.asarray(flag).reshape(-1)[0])

    def _fit_mesh(self, image: np.ndarray, box: np.ndarray, eyes: np.ndarray) -> tuple[np.ndarray, float]:
        """(mesh [468, 3] in image pixels, the mesh network's face probability on the pass-2 crop)."""
        # Pass 1: the detector's box, rolled by its eye keypoints.
        d = eyes[1] - eyes[0]
        angle = float(np.arctan2(d[1], d[0]))
        center = (box[:2] + box[2:]) / 2.0
        side = MESH_CROP_SCALE * max(box[2] - box[0], box[3] - box[1])
        mesh, _ = self._mesh(image, center, side, angle)
        # Pass 2: the first mesh's own extent and eye line (as MediaPipe tracks).
        p5 = mesh_points5(mesh)
        d = p5[1] - p5[0]
        angle = float(np.arctan2(d[1], d[0]))
        rot = np.array([[np.cos(-angle), -np.sin(-angle)], [np.sin(-angle), np.cos(-angle)]])
        upright = (mesh[:, :2] - mesh[:, :2].mean(0)) @ rot.T
        extent = upright.max(0) - upright.min(0)
        center = mesh[:, :2].mean(0)
        side = MESH_CROP_SCALE * float(extent.max())
        return self._mesh(image, center, side, angle)

    # -- detection -----------------------------------------------------------------
    def _usable(self, found: list[detection.Detection]) -> list[detection.Detection]:
        return [d for d in found if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face_px]

    def _detect_padded(self, image: np.ndarray) -> list[detection.Detection]:
        """Detections on ``image`` with a black border, in the original image's pixels.

        A tight crop's face fills the frame, larger than the faces the detector saw in training;
        with the border it fills less of the (letterboxed) input.
        """
        k = int(round(PAD_RETRY_FRACTION * max(image.shape[:2])))
        padded = cv2.copyMakeBorder(image, k, k, k, k, cv2.BORDER_CONSTANT, value=0)
        found = detection.detect(self.det_apply, self.det_params, padded, min_score=self.min_score)
        return [dataclasses.replace(d, box=d.box - k, keypoints=d.keypoints - k) for d in found]

    def _detect(self, image: np.ndarray, path: str) -> list[detection.Detection]:
        """Usable faces (largest first); one padded retry when there is none (``pad_retry``)."""
        found = detection.detect(self.det_apply, self.det_params, image, min_score=self.min_score)
        big = self._usable(found)
        # Retry also when every face is too small: on a tight crop such a box is part of the face.
        if not big and self.pad_retry:
            padded = self._detect_padded(image)
            big, found = self._usable(padded), found or padded
        if not found:
            raise decode.ImageError(path, "no face found")
        if not big:
            s = found[0].box
            raise decode.ImageError(path, f"face too small ({s[2] - s[0]:.0f}x{s[3] - s[1]:.0f} px, minimum {self.min_face_px})")
        return big

    @staticmethod
    def _whole_image(w: int, h: int) -> detection.Detection:
        """The whole image as the face box, upright (eye keypoints on a horizontal line)."""
        eyes = np.array([[0.0, 0.0], [1.0, 0.0]])
        return detection.Detection(box=np.array([0.0, 0.0, w, h]), keypoints=np.concatenate([eyes, np.zeros((4, 2))]),
                                   score=1.0)

    def _fit(self, image: np.ndarray, d: detection.Detection, side_scale: float):
        """(the detection, its mesh, the mesh network's face probability)."""
        box = d.box.copy()
        if side_scale != 1.0:
            c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * side_scale
            box = np.concatenate([c - half, c + half])
        mesh, mesh_score = self._fit_mesh(image, box, d.keypoints[:2])
        return d, mesh, mesh_score

    def _refit_padded(self, image: np.ndarray, fit):
        """The better of ``fit`` and the padded detector's largest face, by the mesh's face probability.

        A detector box on part of a face (an eye region of a tight crop or a small grey frame) passes
        the size check, and the mesh fitted there is far off; the mesh network knows (its face
        probability falls below ``MIN_MESH_SCORE``), and the padded image shows the whole face.
        """
        padded = self._usable(self._detect_padded(image))
        if not padded:
            return fit
        alt = self._fit(image, padded[0], 1.0)
        return alt if alt[2] > fit[2] else fit

    # -- faces -------------------------------------------------------------------
    def faces(self, image: np.ndarray, path: str = "<array>", *, aligned: bool = False,
              crop: bool = False) -> list[AlignedFace]:
        """Faces of a decoded uint8 RGB image, largest first (all, or only the largest).

        ``aligned``: a dlib-style pre-aligned chip (margin included, eyes level); ``crop``: a pre-cropped
        face filling the frame, any roll. Both skip the detector and give one face.
        """
        if aligned and crop:
            raise ValueError("aligned and crop are exclusive: a dlib-aligned chip or a plain face crop")
        h, w = image.shape[:2]
        if min(h, w) < self.min_face_px:
            raise decode.ImageError(path, f"image too small for a face ({w}x{h}, minimum {self.min_face_px} px)")
        side_scale = 1.0
        if aligned or crop:
            big = [self._whole_image(w, h)]
            # pass-1 side = MESH_CROP_SCALE * box side * side_scale: a dlib chip already has its margin
            side_scale = (1.0 if aligned else CROP_MODE_SCALE) / MESH_CROP_SCALE
        else:
            big = self._detect(image, path)
        fits = [self._fit(image, d, side_scale) for d in (big if self.all_faces else big[:1])]
        if not (aligned or crop or self.all_faces) and self.pad_retry and fits[0][2] < MIN_MESH_SCORE:
            fits[0] = self._refit_padded(image, fits[0])
        out = []
        for i, (d, mesh, mesh_score) in enumerate(fits):
            p5 = mesh_points5(mesh)
            to_frame = alignment.image_to_template(p5, self.template)
            frame = _warp(image, alignment.invert_affine(to_frame), (self.frame_size, self.frame_size))
            labels19 = None
            if self.parser == "bisenet":
                labels19 = parsing.bisenet_labels(frame[None], self.parser_params)[0]
                labels = parsing.to_face_classes(labels19)
            else:
                labels = regions.label_map(_apply(to_frame, mesh[:, :2]), (self.frame_size, self.frame_size))
            out.append(AlignedFace(str(path), i, d.score, d.box, mesh, p5, to_frame, frame, labels, labels19, mesh_score))
        return out

    def read(self, path: str | Path, *, aligned: bool = False, crop: bool = False) -> list[AlignedFace]:
        return self.faces(decode.read_rgb(path), str(path), aligned=aligned, crop=crop)

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
