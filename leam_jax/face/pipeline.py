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
                 parser: str = "mesh", parser_params=None):
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

    def _fit_mesh(self, image: np.ndarray, box: np.ndarray, eyes: np.ndarray) -> np.ndarray:
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
        mesh, _ = self._mesh(image, center, side, angle)
        return mesh

    # -- faces -------------------------------------------------------------------
    def faces(self, image: np.ndarray, path: str = "<array>", *, aligned: bool = False) -> list[AlignedFace]:
        """Faces of a decoded uint8 RGB image, largest first (all, or only the largest)."""
        h, w = image.shape[:2]
        if min(h, w) < self.min_face_px:
            raise decode.ImageError(path, f"image too small for a face ({w}x{h}, minimum {self.min_face_px} px)")
        if aligned:
            # Pre-aligned chip: the face fills the image; skip the detector.
            box = np.array([0.0, 0.0, w, h])
            eyes = np.array([[0.0, 0.0], [1.0, 0.0]])
            found = [detection.Detection(box=box, keypoints=np.concatenate([eyes, np.zeros((4, 2))]), score=1.0)]
            side_scale = 1.0 / MESH_CROP_SCALE  # the chip already has a margin
        else:
            found = detection.detect(self.det_apply, self.det_params, image, min_score=self.min_score)
            side_scale = 1.0
            if not found:
                raise decode.ImageError(path, "no face found")
        big = [d for d in found if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) >= self.min_face_px]
        if not big:
            s = found[0].box
            raise decode.ImageError(path, f"face too small ({s[2] - s[0]:.0f}x{s[3] - s[1]:.0f} px, minimum {self.min_face_px})")
        out = []
        for i, d in enumerate(big if self.all_faces else big[:1]):
            box = d.box.copy()
            if side_scale != 1.0:
                c, half = (box[:2] + box[2:]) / 2, (box[2:] - box[:2]) / 2 * side_scale
                box = np.concatenate([c - half, c + half])
            mesh = self._fit_mesh(image, box, d.keypoints[:2])
            p5 = mesh_points5(mesh)
            to_frame = alignment.image_to_template(p5, self.template)
            frame = _warp(image, alignment.invert_affine(to_frame), (self.frame_size, self.frame_size))
            labels19 = None
            if self.parser == "bisenet":
                labels19 = parsing.bisenet_labels(frame[None], self.parser_params)[0]
                labels = parsing.to_face_classes(labels19)
            else:
                labels = regions.label_map(_apply(to_frame, mesh[:, :2]), (self.frame_size, self.frame_size))
            out.append(AlignedFace(str(path), i, d.score, d.box, mesh, p5, to_frame, frame, labels, labels19))
        return out

    def read(self, path: str | Path, *, aligned: bool = False) -> list[AlignedFace]:
        return self.faces(decode.read_rgb(path), str(path), aligned=aligned)

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
