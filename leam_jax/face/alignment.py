"""Alignment math: similarity transforms and dlib's face-chip geometry.

Pure numpy (geometry, float64) and JAX (warping, differentiable). The dlib
chip follows ``get_face_chip_details`` (dlib/image_transforms/interpolation.h)
exactly: Umeyama's least-squares similarity from the template to the image
points gives angle and scale; the chip rectangle of side ``size*scale - 1``
is centred on the image of the chip centre, and chip pixel (0, 0) /
(size-1, 0) / (0, size-1) land on its rotated corners. Note that this makes
the pixel grid scale ``(size*scale - 1)/(size - 1)``, not ``scale``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core

# dlib's 5-point template (x, y in [0, 1]) in the order of its 5-point shape
# predictor: two corners of the image-right eye, two of the image-left eye,
# and the bottom of the nose.
DLIB_5PT_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (Umeyama 1991) with ``dst ~ A @ [src; 1]``.

    Args:
      src, dst: [N, 2] corresponding points, N >= 2.

    Returns:
      A: [2, 3] float64 affine matrix (rotation * scale, translation).
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2 or src.shape[0] < 2:
        raise ValueError(f"need matching [N>=2, 2] point sets, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    s_c, d_c = src - mu_s, dst - mu_d
    var_s = (s_c**2).sum(1).mean()
    cov = d_c.T @ s_c / len(src)
    u, d, vt = np.linalg.svd(cov)
    sign = np.eye(2)
    if np.linalg.det(cov) < 0 or (np.linalg.det(cov) == 0 and np.linalg.det(u) * np.linalg.det(vt) < 0):
        sign[1, 1] = -1  # d is sorted descending, so flip the smallest
    rot = u @ sign @ vt
    c = 1.0 if var_s == 0 else np.trace(np.diag(d) @ sign) / var_s
    t = mu_d - c * rot @ mu_s
    return np.concatenate([c * rot, t[:, None]], axis=1)


def dlib_chip_details(points5: np.ndarray, size: int = 150, padding: float = 0.25) -> dict:
    """dlib's ``get_face_chip_details`` for a 5-point shape.

    Returns a dict with ``center`` (x, y), ``width``/``height`` of dlib's
    drectangle (``right - left + 1``), ``angle`` (radians) and ``size``.
    """
    template = (padding + DLIB_5PT_TEMPLATE) / (2 * padding + 1) * size
    a = similarity_transform(template, np.asarray(points5, np.float64).reshape(5, 2))
    p = a[:, :2] @ np.array([1.0, 0.0])
    scale = float(np.hypot(*p))
    center = a[:, :2] @ np.array([size / 2.0, size / 2.0]) + a[:, 2]
    return {"center": center, "width": size * scale, "height": size * scale,
            "angle": float(np.arctan2(p[1], p[0])), "size": size}


def dlib_chip_to_image(points5: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """[2, 3] affine map from chip pixel (x, y) to image pixel (x, y), as dlib samples."""
    det = dlib_chip_details(points5, size, padding)
    half = (det["width"] - 1) / 2.0  # centered_drect shrinks the side by one
    c, s = np.cos(det["angle"]), np.sin(det["angle"])
    rot = np.array([[c, -s], [s, c]])
    # Chip corners (0,0), (size-1,0), (0,size-1) -> rotated rectangle corners.
    corners = np.array([[-half, -half], [half, -half], [-half, half]]) @ rot.T + det["center"]
    lin = np.stack([corners[1] - corners[0], corners[2] - corners[0]], axis=1) / (size - 1)
    return np.concatenate([lin, corners[0][:, None]], axis=1)


def invert_affine(a: np.ndarray) -> np.ndarray:
    """Inverse of a [2, 3] affine map."""
    a = np.asarray(a, np.float64)
    lin_inv = np.linalg.inv(a[:, :2])
    return np.concatenate([lin_inv, -(lin_inv @ a[:, 2])[:, None]], axis=1)


def warp_affine(image: jax.Array, out_to_in: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Bilinear warp: ``out[y, x] = image(out_to_in @ [x, y, 1])``.

    As dlib's ``interpolate_bilinear``, a sample whose 2x2 neighbourhood is not
    wholly inside the image is 0 (no blending with the border).

    Pure JAX, so it is differentiable and runs under jit/vmap (maps warp back
    the same way). Args: image [H, W, C]; out_to_in [2, 3]; out_shape (h, w).
    Returns [h, w, C] float32.
    """
    return core.warp_affine(jnp.asarray(image, jnp.float32), jnp.asarray(out_to_in, jnp.float32), out_shape)


def dlib_face_chip(image: jax.Array, points5: np.ndarray, size: int = 150, padding: float = 0.25) -> jax.Array:
    """The dlib chip of ``image`` [H, W, 3] for a 5-point shape, [size, size, 3] float32."""
    return warp_affine(image, dlib_chip_to_image(points5, size, padding), (size, size))


# ---------------------------------------------------------------------------
# The common analysis frame and model templates (LEAM_SPEC section 2).

# The 5-point template of ArcFace-style 112x112 crops (image-left eye centre,
# image-right eye centre, nose tip, image-left and image-right mouth corner).
ARCFACE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)
ANALYSIS_SIZE = 256
# The analysis frame puts the same 5 points where a 112 ArcFace crop has them,
# shrunk by dlib-style padding 0.25 so forehead, chin and cheeks fit: eyes at
# y = 121, mouth at y = 182 of 256, inter-eye distance 54 px.
ANALYSIS_PADDING = 0.25


def five_point_template(size: int, padding: float = 0.0) -> np.ndarray:
    """The ArcFace 5-point template for a ``size`` crop with dlib-style ``padding``. [5, 2]."""
    return (ARCFACE_112 / 112.0 + padding) / (1.0 + 2.0 * padding) * size


def analysis_template(size: int = ANALYSIS_SIZE) -> np.ndarray:
    return five_point_template(size, ANALYSIS_PADDING)


def compose_affine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[2, 3] affine of ``a`` after ``b`` (x -> a(b(x)))."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.concatenate([a[:, :2] @ b[:, :2], (a[:, :2] @ b[:, 2] + a[:, 2])[:, None]], axis=1)


def image_to_template(points5: np.ndarray, template: np.ndarray) -> np.ndarray:
    """Least-squares similarity taking the 5 image points onto a template. [2, 3]."""
    return similarity_transform(points5, template)


def frame_to_model(image_to_frame: np.ndarray, image_to_model: np.ndarray) -> np.ndarray:
    """Analysis-frame coordinates -> a model's input coordinates, for one image. [2, 3]."""
    return compose_affine(image_to_model, invert_affine(image_to_frame))


def warp_map(m: jax.Array, out_to_in: jax.Array, out_shape: tuple[int, int]) -> jax.Array:
    """Warp a relevance map (a distribution [H, W]) and renormalise its mass.

    Bilinear sampling of a density scales its mass by the inverse Jacobian and
    drops what falls outside; the result is renormalised to the mass that
    stays in view, so maps remain comparable distributions in the new frame.
    """
    out = warp_affine(m[..., None], out_to_in, out_shape)[..., 0]
    total = jnp.sum(out)
    return jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0), 0.0)
