"""A face parser rasterised from the 468 MediaPipe face-mesh points (pure numpy + cv2).

Each class is a polygon over mesh vertex indices, rasterised with
``cv2.fillPoly`` and painted in :data:`PAINT_ORDER` (later classes paint over
earlier ones): the face oval as ``skin`` first, so every pixel inside the oval
gets a face class, then the finer skin regions, the nose, brows, eyes, lips
and the inner mouth. Every class is clipped to the oval (outside it is
background), and a fine class to its parent's polygon (forehead, cheeks and
chin to the oval, nose bridge and tip to the nose), so
``coarse(label_map(p)) == label_map(p, fine=False)`` for any points.

Where the index lists come from: the MediaPipe canonical face-mesh topology.
The face oval, eye, brow and lip contours are the published MediaPipe
contours (``face_mesh_connections.py``: FACEMESH_FACE_OVAL, _LEFT_EYE,
_RIGHT_EYE, _LEFT_EYEBROW, _RIGHT_EYEBROW, _LIPS), as @vladmandic/human 3.0.4
lists them in ``src/face/facemeshcoords.ts`` (``meshAnnotations`` and the
``pairs*`` connection lists), joined here into closed polygons. The finer
regions (forehead, cheeks, chin, nose, nose bridge, nose tip) have no
published contour: their outlines were picked on the canonical UV map
(``UV468`` of the same file) and on meshes predicted for real faces, along
mesh edges, subject-right side first; every subject-left list is the mirror
image of the subject-right one (mirror pairs found by reflecting UV468 about
u = 0.5; all matched within 0.0012 UV units).

Left and right are the subject's own, as in MediaPipe: ``l_eye`` is the
subject's left eye, on the image's right in an unmirrored frontal photo.

Classes (ids are positions in :data:`CLASSES`); with ``fine=False`` the fine
regions fold into their parent (:data:`PARENT`):

==  ===========  ==============================================================
id  name         region
==  ===========  ==============================================================
0   background   outside every polygon
1   skin         face oval not covered by another class (temples, jaw, under-eye)
2   l_brow       subject's left eyebrow
3   r_brow       subject's right eyebrow
4   l_eye        subject's left eye opening (lid margin contour)
5   r_eye        subject's right eye opening
6   nose         nose (nasal side walls, alae and nostrils)
7   u_lip        upper lip (outer to inner upper lip contour)
8   l_lip        lower lip
9   mouth        inside the inner lip contour
10  forehead     above the brows, up to the oval (fine; parent skin)
11  l_cheek      subject's left cheek (fine; parent skin)
12  r_cheek      subject's right cheek (fine; parent skin)
13  chin         below the lower lip, down to the oval (fine; parent skin)
14  nose_bridge  nasal bridge, nasion to mid-nose (fine; parent nose)
15  nose_tip     lobule around the pronasale, vertex 1 (fine; parent nose)
==  ===========  ==============================================================
"""

from __future__ import annotations

import cv2
import numpy as np

NUM_POINTS = 468

CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "mouth",
    "forehead", "l_cheek", "r_cheek", "chin", "nose_bridge", "nose_tip",
)
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
# Fine class -> the coarse class it refines.
PARENT = {"forehead": "skin", "l_cheek": "skin", "r_cheek": "skin", "chin": "skin",
          "nose_bridge": "nose", "nose_tip": "nose"}
# Groups of classes every statistic also reports (the one definition tables, figures and the
# report use); ``eyes_brows_nose`` is the critical region of the paper's findings.
REGION_GROUPS = {
    "nose_all": ("nose", "nose_bridge", "nose_tip"),
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "lips": ("u_lip", "l_lip", "mouth"),
    "eyes_brows_nose": ("l_eye", "r_eye", "l_brow", "r_brow", "nose", "nose_bridge", "nose_tip"),
    "face": tuple(c for c in CLASSES if c != "background"),
}
CRITICAL_REGION = "eyes_brows_nose"

# The face oval (FACEMESH_FACE_OVAL; human's meshAnnotations.silhouette), clockwise from the top.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

# Eyes: upper lid margin (rightEyeUpper0 / leftEyeUpper0) then the lower one back (EyeLower0).
R_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
L_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)

# Brows (FACEMESH_*_EYEBROW): upper edge outer -> inner, lower edge inner -> outer.
R_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
L_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)

# Lips (FACEMESH_LIPS): outer and inner contours, each corner to corner (subject right -> left).
LIPS_UPPER_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_LOWER_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_UPPER_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_LOWER_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
U_LIP = LIPS_UPPER_OUTER + LIPS_UPPER_INNER[::-1]
L_LIP = LIPS_LOWER_OUTER + LIPS_LOWER_INNER[::-1]
MOUTH = LIPS_UPPER_INNER + LIPS_LOWER_INNER[::-1][1:-1]

# Nose: nasion (168) down the subject-right side wall and ala to the subnasale (2), back up the left.
NOSE = (168, 122, 196, 236, 198, 209, 49, 129, 64, 98, 97, 2, 326, 327, 294, 358, 279, 429, 420, 456, 419, 351)
# Bridge: nasion down to the line 3-195-248.
NOSE_BRIDGE = (168, 122, 196, 3, 195, 248, 419, 351)
# Tip lobule: around vertices 4 and 1 (human's noseTip), above the columella (19).
NOSE_TIP = (51, 5, 281, 275, 274, 354, 19, 125, 44, 45)

# Forehead: the oval's top arc (temple to temple) and back along the brows' upper edges via the glabella (9).
FOREHEAD = (162, 21, 54, 103, 67, 109, 10, 338, 297, 332, 284, 251, 389,
            300, 293, 334, 296, 336, 9, 107, 66, 105, 63, 70)
# Cheeks: below the EyeLower3 line, lateral to the nose and the nasolabial fold, down to the mouth-corner
# level, out to the oval.
R_CHEEK = (127, 143, 111, 117, 118, 119, 120, 121, 47, 126, 209, 129, 203, 206, 216, 212, 214, 138, 172,
           58, 132, 93, 234)
L_CHEEK = (356, 372, 340, 346, 347, 348, 349, 350, 277, 355, 429, 358, 423, 426, 436, 432, 434, 367, 397,
           288, 361, 323, 454)
# Chin: below the lower lip (202-43-...-273-422) down to the oval's bottom arc.
CHIN = (202, 43, 106, 182, 83, 18, 313, 406, 335, 273, 422, 430, 394, 379, 378, 400, 377,
        152, 148, 176, 149, 150, 169, 210)

POLYGONS: dict[str, tuple[int, ...]] = {
    "skin": FACE_OVAL,
    "forehead": FOREHEAD, "r_cheek": R_CHEEK, "l_cheek": L_CHEEK, "chin": CHIN,
    "nose": NOSE, "nose_bridge": NOSE_BRIDGE, "nose_tip": NOSE_TIP,
    "r_brow": R_BROW, "l_brow": L_BROW,
    "r_eye": R_EYE, "l_eye": L_EYE,
    "u_lip": U_LIP, "l_lip": L_LIP, "mouth": MOUTH,
}
# Painting order: later classes paint over earlier ones.
PAINT_ORDER = ("skin", "forehead", "r_cheek", "l_cheek", "chin", "nose", "nose_bridge", "nose_tip",
               "r_brow", "l_brow", "r_eye", "l_eye", "u_lip", "l_lip", "mouth")

_SHIFT = 4  # fillPoly sub-pixel bits: vertices at 1/16 pixel


def label_map(points_xy: np.ndarray, size: tuple[int, int], *, fine: bool = True) -> np.ndarray:
    """Rasterise the face classes from mesh points.

    Args:
      points_xy: [468, 2] (or [468, 3]; z is ignored) mesh points (x, y) in
        pixels of the target image, pixel (row r, column c) covering
        [c, c + 1) x [r, r + 1) (the face mesh's own convention).
      size: (H, W) of the label map.
      fine: keep the fine regions (forehead, cheeks, chin, nose bridge, nose
        tip); with False they fold into skin / nose.

    Returns:
      int32 [H, W] class ids (positions in :data:`CLASSES`).
    """
    pts = np.asarray(points_xy, np.float64)
    if pts.ndim != 2 or pts.shape[0] != NUM_POINTS or pts.shape[1] not in (2, 3):
        raise ValueError(f"points_xy must be [{NUM_POINTS}, 2] (or [{NUM_POINTS}, 3]), got {pts.shape}")
    if not np.all(np.isfinite(pts[:, :2])):
        raise ValueError("points_xy holds non-finite values")
    h, w = (int(s) for s in size)
    if h <= 0 or w <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    fixed = _fixed_point(pts[:, :2])
    masks = {name: _polygon_mask(fixed, POLYGONS[name], (h, w)) for name in ("skin", "nose")}
    out = np.zeros((h, w), np.int32)
    for name in PAINT_ORDER:
        if not fine and name in PARENT:
            continue
        mask = masks[name] if name in masks else _polygon_mask(fixed, POLYGONS[name], (h, w))
        mask = mask & masks["skin"]  # nothing outside the face oval
        if name in PARENT:
            mask = mask & masks[PARENT[name]]  # a fine region stays inside its parent
        out[mask] = CLASS_ID[name]
    return out


def _fixed_point(xy: np.ndarray) -> np.ndarray:
    # OpenCV puts pixel centres at integer coordinates, the mesh at +0.5; fillPoly takes fixed point.
    return np.round((xy - 0.5) * (1 << _SHIFT)).astype(np.int32)


def _polygon_mask(fixed: np.ndarray, poly: tuple[int, ...], size: tuple[int, int]) -> np.ndarray:
    out = np.zeros(size, np.uint8)
    cv2.fillPoly(out, [fixed[list(poly)].reshape(-1, 1, 2)], 1, lineType=cv2.LINE_8, shift=_SHIFT)
    return out.astype(bool)


def coarse(labels: np.ndarray) -> np.ndarray:
    """Fold fine class ids into their parents (forehead/cheeks/chin -> skin, bridge/tip -> nose)."""
    lut = np.arange(len(CLASSES), dtype=np.int32)
    for child, parent in PARENT.items():
        lut[CLASS_ID[child]] = CLASS_ID[parent]
    return lut[np.asarray(labels)]


def oval_mask(points_xy: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the face-oval polygon alone, rasterised as :func:`label_map` does."""
    pts = np.asarray(points_xy, np.float64)[:, :2]
    return _polygon_mask(_fixed_point(pts), FACE_OVAL, tuple(int(v) for v in size))
