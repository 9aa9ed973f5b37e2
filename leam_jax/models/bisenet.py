"""BiSeNet face parser (19 CelebAMask-HQ classes), the optional alternative to the mesh parser.

A Flax NNX re-implementation of the widely used face-parsing BiSeNet (the
``79999_iter.pth`` family of checkpoints), for users' own weights, converted
with ``python -m converters bisenet --source 79999_iter.pth``. NHWC throughout.

* input: [B, H, W, 3] RGB in [0, 255] (512x512 for the released weights),
  normalised inside as ``(x / 255 - mean) / std`` with the ImageNet mean
  (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
* context path: a ResNet-18 (conv 7x7/2 + BN + ReLU, max-pool 3x3/2 pad 1,
  four stages of two basic blocks, widths 64/128/256/512; a block is
  conv3x3(stride) + BN + ReLU -> conv3x3 + BN, added to the skip path
  (conv1x1(stride) + BN where the shape changes), then ReLU) giving features at
  1/8, 1/16 and 1/32 of the input. The 1/32 features are averaged globally
  (``conv_avg``: 1x1 conv + BN + ReLU) and added to their attention-refined
  version (``arm32``); the sum is upsampled (nearest) to 1/16 and passed
  through ``conv_head32`` (3x3 conv + BN + ReLU); that is added to ``arm16`` of
  the 1/16 features, upsampled (nearest) to 1/8 and passed through
  ``conv_head16``. An attention refinement module is conv3x3 + BN + ReLU, then
  the features times sigmoid(BN(conv1x1(global mean))).
* feature fusion (``ffm``): the 1/8 ResNet features (in place of a spatial
  path) concatenated with the context features (that order), 1x1 conv + BN +
  ReLU to 256 channels, then ``feat * a + feat`` with the channel attention
  ``a = sigmoid(conv1x1(relu(conv1x1(global mean))))`` (256 -> 64 -> 256, no bias);
* head (``conv_out``): 3x3 conv + BN + ReLU (256) -> 1x1 conv to 19 logits (no
  bias), upsampled bilinearly with ``align_corners=True`` to the input size.
  The two auxiliary training heads (``conv_out16``, ``conv_out32``) are not
  part of this model; the converter drops their weights.

Every batch norm directly follows a bias-free convolution, so the converter
folds each eval-mode BN into that convolution (kernel scaled, BN shift as the
conv bias; exact up to float rounding). Convolutions and the interpolation
matmuls run at HIGHEST precision (no TF32 on GPUs).

Classes (:data:`CLASSES`) are CelebAMask-HQ's 19, in its order; how they map
onto the face pipeline's regions is :mod:`leam_jax.face.parsing`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leam_jax.models import params as flat_params

INPUT_SIZE = 512
NUM_CLASSES = 19
CLASSES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
CLASS_ID = {name: i for i, name in enumerate(CLASSES)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_WIDTHS = (64, 128, 256, 512)
BLOCKS_PER_STAGE = 2
CONTEXT_CHANNELS = 128  # arm16 / arm32 / conv_head* / conv_avg outputs
FUSION_CHANNELS = 256  # ffm and conv_out

_HIGHEST = jax.lax.Precision.HIGHEST


def _conv(cin: int, cout: int, k: int, stride: int = 1, *, bias: bool = True, rngs: nnx.Rngs) -> nnx.Conv:
    # PyTorch padding k // 2 on every side (7x7 pads 3, 3x3 pads 1, 1x1 pads 0).
    p = k // 2
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)), use_bias=bias,
                    precision=_HIGHEST, rngs=rngs)


def _global_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), keepdims=True)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    # PyTorch MaxPool2d(3, stride=2, padding=1): -inf padding, floor output size.
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


def _nearest_index(n_in: int, n_out: int) -> np.ndarray:
    # PyTorch "nearest" with an output size: src = floor(dst * (in / out)) with a float32 scale.
    scale = np.float32(n_in) / np.float32(n_out)
    return np.minimum(np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64), n_in - 1)


def upsample_nearest(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(mode="nearest", size=size)`` for NHWC ``x``."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    return x[:, _nearest_index(h, size[0])][:, :, _nearest_index(w, size[1])]


def _align_corners_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of 1-D linear interpolation with ``align_corners=True``.

    Source positions and weights in float32 arithmetic, as PyTorch computes
    them for float32 tensors (scale ``(in - 1) / (out - 1)``, position
    ``scale * i``), so the two runtimes interpolate with the same weights.
    """
    m = np.zeros((n_out, n_in), np.float32)
    if n_in == 1 or n_out == 1:
        m[:, 0] = 1.0
        return m
    scale = np.float32(n_in - 1) / np.float32(n_out - 1)
    src = np.arange(n_out, dtype=np.float32) * scale
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), np.float32(1) - frac)
    np.add.at(m, (rows, i1), frac)
    return m


def upsample_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``F.interpolate(mode="bilinear", align_corners=True, size=size)`` for NHWC ``x``, as two matmuls."""
    h, w = x.shape[1:3]
    mh = jnp.asarray(_align_corners_matrix(h, size[0]), x.dtype)
    mw = jnp.asarray(_align_corners_matrix(w, size[1]), x.dtype)
    y = jnp.einsum("oh,bhwc->bowc", mh, x, precision=_HIGHEST)
    return jnp.einsum("pw,bowc->bopc", mw, y, precision=_HIGHEST)


class ConvBNReLU(nnx.Module):
    """conv k x k (BN folded into its bias) + ReLU."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, k, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(self.conv(x))


class BasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = _conv(cin, cout, 3, stride, rngs=rngs)  # + folded bn1
        self.conv2 = _conv(cout, cout, 3, rngs=rngs)  # + folded bn2
        self.downsample = _conv(cin, cout, 1, stride, rngs=rngs) if (stride != 1 or cin != cout) else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(jax.nn.relu(self.conv1(x)))
        skip = self.downsample(x) if self.downsample is not None else x
        return jax.nn.relu(skip + y)


class ResNet18(nnx.Module):
    """The context path's backbone; returns the 1/8, 1/16 and 1/32 features."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv1 = _conv(3, RESNET_WIDTHS[0], 7, 2, rngs=rngs)  # + folded bn1
        cin = RESNET_WIDTHS[0]
        stages = []
        for s, width in enumerate(RESNET_WIDTHS):
            blocks = []
            for i in range(BLOCKS_PER_STAGE):
                blocks.append(BasicBlock(cin, width, 2 if (i == 0 and s > 0) else 1, rngs=rngs))
                cin = width
            stages.append(nnx.List(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        x = _max_pool_3x3_s2(jax.nn.relu(self.conv1(x)))
        feats = []
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in stage:
                x = block(x)
            feats.append(x)
        return feats[1], feats[2], feats[3]


class AttentionRefinement(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(cin, cout, 3, rngs=rngs)
        self.conv_atten = _conv(cout, cout, 1, rngs=rngs)  # + folded bn_atten

    def __call__(self, x: jax.Array) -> jax.Array:
        feat = self.conv(x)
        return feat * jax.nn.sigmoid(self.conv_atten(_global_mean(feat)))


class ContextPath(nnx.Module):
    def __init__(self, *, rngs: nnx.Rngs):
        c = CONTEXT_CHANNELS
        self.resnet = ResNet18(rngs=rngs)
        self.arm16 = AttentionRefinement(RESNET_WIDTHS[2], c, rngs=rngs)
        self.arm32 = AttentionRefinement(RESNET_WIDTHS[3], c, rngs=rngs)
        self.conv_head32 = ConvBNReLU(c, c, 3, rngs=rngs)
        self.conv_head16 = ConvBNReLU(c, c, 3, rngs=rngs)
        self.conv_avg = ConvBNReLU(RESNET_WIDTHS[3], c, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        feat8, feat16, feat32 = self.resnet(x)
        avg = self.conv_avg(_global_mean(feat32))  # [B, 1, 1, C]; nearest upsampling = broadcast
        up32 = self.conv_head32(upsample_nearest(self.arm32(feat32) + avg, feat16.shape[1:3]))
        up16 = self.conv_head16(upsample_nearest(self.arm16(feat16) + up32, feat8.shape[1:3]))
        return feat8, up16


class FeatureFusion(nnx.Module):
    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.convblk = ConvBNReLU(cin, cout, 1, rngs=rngs)
        self.conv1 = _conv(cout, cout // 4, 1, bias=False, rngs=rngs)
        self.conv2 = _conv(cout // 4, cout, 1, bias=False, rngs=rngs)

    def __call__(self, fsp: jax.Array, fcp: jax.Array) -> jax.Array:
        feat = self.convblk(jnp.concatenate([fsp, fcp], axis=-1))
        atten = jax.nn.sigmoid(self.conv2(jax.nn.relu(self.conv1(_global_mean(feat)))))
        return feat * atten + feat


class OutputHead(nnx.Module):
    def __init__(self, cin: int, mid: int, n_classes: int, *, rngs: nnx.Rngs):
        self.conv = ConvBNReLU(cin, mid, 3, rngs=rngs)
        self.conv_out = _conv(mid, n_classes, 1, bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv_out(self.conv(x))


class BiSeNet(nnx.Module):
    """Flax NNX BiSeNet face parser. ``__call__(images)`` -> logits [B, H, W, 19].

    ``images``: [B, H, W, 3] RGB in [0, 255], any int or float dtype (H, W >= 32;
    512x512 for the released weights).
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.cp = ContextPath(rngs=rngs)
        self.ffm = FeatureFusion(2 * CONTEXT_CHANNELS, FUSION_CHANNELS, rngs=rngs)
        self.conv_out = OutputHead(FUSION_CHANNELS, FUSION_CHANNELS, NUM_CLASSES, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        if images.ndim != 4 or images.shape[-1] != 3 or min(images.shape[1:3]) < 32:
            raise ValueError(f"BiSeNet expects RGB images [B, H, W, 3] with H, W >= 32, got {images.shape}")
        x = images.astype(jnp.float32) / 255.0
        x = (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)
        feat8, context = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context))
        return upsample_bilinear_align_corners(logits, images.shape[1:3])


# --- pure apply, params ---------------------------------------------------------------


def _ctor() -> BiSeNet:
    return BiSeNet(rngs=nnx.Rngs(0))


@functools.cache
def _graphdef():
    return nnx.split(nnx.eval_shape(_ctor), nnx.Param)[0]


def apply(params, images: jax.Array) -> jax.Array:
    """Logits of the main head, [B, H, W, 19], for RGB ``images`` [B, H, W, 3] in [0, 255] (pure; jit it)."""
    return nnx.merge(_graphdef(), params)(images)


def params_from_flat(flat, source: str = "params"):
    """Flat params {"cp/resnet/conv1/kernel": array, ...} -> the params ``apply`` takes, merged strictly
    (:func:`leam_jax.models.params.params_from_flat`)."""
    return flat_params.params_from_flat(_ctor, flat, source)


def random_params(seed: int = 0):
    """Params of a random BiSeNet (He-normal kernels, small biases; numpy, no compile): tests, demos."""
    rng = np.random.default_rng(seed)
    flat = {}
    for k, v in flat_params.flatten(nnx.state(nnx.eval_shape(_ctor), nnx.Param).to_pure_dict()).items():
        if k.endswith("/kernel"):
            fan_in = int(np.prod(v.shape[:-1]))
            flat[k] = (rng.standard_normal(v.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        else:
            flat[k] = (0.1 * rng.standard_normal(v.shape)).astype(np.float32)
    return params_from_flat(flat, f"random_params({seed})")
