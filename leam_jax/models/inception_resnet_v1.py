"""FaceNet InceptionResnetV1 (facenet-pytorch, the David Sandberg FaceNet port) in Flax NNX.

For users' own facenet-pytorch state dicts (e.g. the VGGFace2 or CASIA-WebFace
``.pt`` files), converted with
``python -m converters facenet_pytorch --source 20180402-114759-vggface2.pt``:

* input: 160x160 RGB in [0, 255], normalised inside as facenet-pytorch's
  ``fixed_image_standardization``, (x - 127.5) / 128;
* stem: ``conv2d_1a`` 3x3/2 (32) -> ``conv2d_2a`` 3x3 (32) -> ``conv2d_2b``
  3x3 pad 1 (64) -> max pool 3x3/2 -> ``conv2d_3b`` 1x1 (80) -> ``conv2d_4a``
  3x3 (192) -> ``conv2d_4b`` 3x3/2 (256): 79, 77, 77, 38, 38, 36, 17 pixels;
* ``repeat_1``: 5 Block35 (scale 0.17) at 17x17x256; ``mixed_6a`` (reduction,
  8x8x896); ``repeat_2``: 10 Block17 (scale 0.10); ``mixed_7a`` (reduction,
  3x3x1792); ``repeat_3``: 5 Block8 (scale 0.20); ``block8``: Block8 (scale
  1, no ReLU);
* head: global average pool -> (dropout, a no-op in eval) -> ``last_linear``
  (1792 -> 512, no bias) -> ``last_bn`` (BatchNorm1d): the 512-d embedding.

Each BasicConv2d is conv (no bias) + BatchNorm (eps 0.001) + ReLU; the
converter folds every batch norm into the conv or linear layer before it.
A residual block computes ``ReLU(x + scale * conv1x1(concat(branches)))``;
its 1x1 ``conv2d`` has a bias and no batch norm.

The embedding is the ``last_bn`` output *before* facenet-pytorch's final L2
normalisation (``F.normalize``): it has the same direction (so the same
cosines and verification decisions) and keeps the length that LEAM's
``self`` target needs (on a unit vector that target's gradient is zero).

Taps: every stem conv output, every block output, ``mixed_6a`` and
``mixed_7a``, NHWC, input side first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.host_init import normal_fan_in
from leam_jax.models.layers import max_pool

INPUT_SIZE = 160
EMBEDDING_DIM = 512
RGB_MEAN = 127.5
RGB_SCALE = 128.0
REPEATS = {"repeat_1": 5, "repeat_2": 10, "repeat_3": 5}
SCALES = {"repeat_1": 0.17, "repeat_2": 0.10, "repeat_3": 0.20, "block8": 1.0}
STEM = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "conv2d_3b", "conv2d_4a", "conv2d_4b")
TAPS = (*STEM, *(f"repeat_1_{i}" for i in range(5)), "mixed_6a", *(f"repeat_2_{i}" for i in range(10)),
        "mixed_7a", *(f"repeat_3_{i}" for i in range(5)), "block8")

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: parity is float32


def _conv(cin: int, cout: int, k: int | tuple[int, int], stride: int = 1, pad: int | tuple[int, int] = 0, *,
          rngs: nnx.Rngs) -> nnx.Conv:
    """Conv with a bias (a folded batch norm, or the blocks' own bias); PyTorch-style symmetric padding."""
    kh, kw = (k, k) if isinstance(k, int) else k
    ph, pw = (pad, pad) if isinstance(pad, int) else pad
    return nnx.Conv(cin, cout, (kh, kw), strides=stride, padding=((ph, ph), (pw, pw)), use_bias=True,
                    precision=_HIGHEST, kernel_init=normal_fan_in, rngs=rngs)


def _seq(x: jax.Array, convs) -> jax.Array:
    """BasicConv2d chain: conv (+ folded BN) -> ReLU for each."""
    for c in convs:
        x = jax.nn.relu(c(x))
    return x


def _max_pool(x: jax.Array) -> jax.Array:
    return max_pool(x, 3, 2)  # the shared pool with a fast backward pass (leam_jax.models.layers)


class Block35(nnx.Module):
    def __init__(self, scale: float, *, rngs: nnx.Rngs):
        self.scale = scale
        self.branch0 = _conv(256, 32, 1, rngs=rngs)
        self.branch1 = nnx.List([_conv(256, 32, 1, rngs=rngs), _conv(32, 32, 3, pad=1, rngs=rngs)])
        self.branch2 = nnx.List([_conv(256, 32, 1, rngs=rngs), _conv(32, 32, 3, pad=1, rngs=rngs),
                                 _conv(32, 32, 3, pad=1, rngs=rngs)])
        self.conv2d = _conv(96, 256, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.concatenate([_seq(x, [self.branch0]), _seq(x, self.branch1), _seq(x, self.branch2)], axis=-1)
        return jax.nn.relu(self.conv2d(y) * self.scale + x)


class Block17(nnx.Module):
    def __init__(self, scale: float, *, rngs: nnx.Rngs):
        self.scale = scale
        self.branch0 = _conv(896, 128, 1, rngs=rngs)
        self.branch1 = nnx.List([_conv(896, 128, 1, rngs=rngs), _conv(128, 128, (1, 7), pad=(0, 3), rngs=rngs),
                                 _conv(128, 128, (7, 1), pad=(3, 0), rngs=rngs)])
        self.conv2d = _conv(256, 896, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.concatenate([_seq(x, [self.branch0]), _seq(x, self.branch1)], axis=-1)
        return jax.nn.relu(self.conv2d(y) * self.scale + x)


class Block8(nnx.Module):
    def __init__(self, scale: float, relu: bool = True, *, rngs: nnx.Rngs):
        self.scale = scale
        self.relu = relu
        self.branch0 = _conv(1792, 192, 1, rngs=rngs)
        self.branch1 = nnx.List([_conv(1792, 192, 1, rngs=rngs), _conv(192, 192, (1, 3), pad=(0, 1), rngs=rngs),
                                 _conv(192, 192, (3, 1), pad=(1, 0), rngs=rngs)])
        self.conv2d = _conv(384, 1792, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.concatenate([_seq(x, [self.branch0]), _seq(x, self.branch1)], axis=-1)
        y = self.conv2d(y) * self.scale + x
        return jax.nn.relu(y) if self.relu else y


class Mixed6a(nnx.Module):
    """17x17x256 -> 8x8x896: conv 3x3/2 (384) | 1x1 (192), 3x3 (192), 3x3/2 (256) | max pool 3x3/2."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.branch0 = _conv(256, 384, 3, 2, rngs=rngs)
        self.branch1 = nnx.List([_conv(256, 192, 1, rngs=rngs), _conv(192, 192, 3, pad=1, rngs=rngs),
                                 _conv(192, 256, 3, 2, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([_seq(x, [self.branch0]), _seq(x, self.branch1), _max_pool(x)], axis=-1)


class Mixed7a(nnx.Module):
    """8x8x896 -> 3x3x1792: three conv branches ending 3x3/2 (384, 256, 256) | max pool 3x3/2 (896)."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.branch0 = nnx.List([_conv(896, 256, 1, rngs=rngs), _conv(256, 384, 3, 2, rngs=rngs)])
        self.branch1 = nnx.List([_conv(896, 256, 1, rngs=rngs), _conv(256, 256, 3, 2, rngs=rngs)])
        self.branch2 = nnx.List([_conv(896, 256, 1, rngs=rngs), _conv(256, 256, 3, pad=1, rngs=rngs),
                                 _conv(256, 256, 3, 2, rngs=rngs)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.concatenate([_seq(x, self.branch0), _seq(x, self.branch1), _seq(x, self.branch2), _max_pool(x)],
                               axis=-1)


class InceptionResnetV1(nnx.Module):
    """Flax NNX InceptionResnetV1. ``__call__(images, perturbations)`` -> (emb, acts).

    ``images``: [B, 160, 160, 3] RGB, values in [0, 255] (any float or int
    dtype; float64 stays float64 for parity checks under jax x64).
    ``perturbations``: optional {tap: [B, H, W, C]} added at each tap.
    Returns ``(embeddings [B, 512] (not L2-normalised), {tap: [B, H, W, C]})``.
    """

    taps = TAPS
    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, *, rngs: nnx.Rngs):
        self.conv2d_1a = _conv(3, 32, 3, 2, rngs=rngs)
        self.conv2d_2a = _conv(32, 32, 3, rngs=rngs)
        self.conv2d_2b = _conv(32, 64, 3, pad=1, rngs=rngs)
        self.conv2d_3b = _conv(64, 80, 1, rngs=rngs)
        self.conv2d_4a = _conv(80, 192, 3, rngs=rngs)
        self.conv2d_4b = _conv(192, 256, 3, 2, rngs=rngs)
        self.repeat_1 = nnx.List([Block35(SCALES["repeat_1"], rngs=rngs) for _ in range(REPEATS["repeat_1"])])
        self.mixed_6a = Mixed6a(rngs=rngs)
        self.repeat_2 = nnx.List([Block17(SCALES["repeat_2"], rngs=rngs) for _ in range(REPEATS["repeat_2"])])
        self.mixed_7a = Mixed7a(rngs=rngs)
        self.repeat_3 = nnx.List([Block8(SCALES["repeat_3"], rngs=rngs) for _ in range(REPEATS["repeat_3"])])
        self.block8 = Block8(SCALES["block8"], relu=False, rngs=rngs)
        self.last_linear = nnx.Linear(1792, EMBEDDING_DIM, precision=_HIGHEST, kernel_init=normal_fan_in, rngs=rngs)  # + folded last_bn

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "InceptionResnetV1")
        tap = TapRecorder("InceptionResnetV1", TAPS, perturbations)

        x = images if images.dtype == jnp.float64 else images.astype(jnp.float32)
        x = (x - RGB_MEAN) / RGB_SCALE
        x = tap("conv2d_1a", _seq(x, [self.conv2d_1a]))
        x = tap("conv2d_2a", _seq(x, [self.conv2d_2a]))
        x = tap("conv2d_2b", _seq(x, [self.conv2d_2b]))
        x = _max_pool(x)  # maxpool_3a
        for name in STEM[3:]:
            x = tap(name, _seq(x, [getattr(self, name)]))
        for i, block in enumerate(self.repeat_1):
            x = tap(f"repeat_1_{i}", block(x))
        x = tap("mixed_6a", self.mixed_6a(x))
        for i, block in enumerate(self.repeat_2):
            x = tap(f"repeat_2_{i}", block(x))
        x = tap("mixed_7a", self.mixed_7a(x))
        for i, block in enumerate(self.repeat_3):
            x = tap(f"repeat_3_{i}", block(x))
        x = tap("block8", self.block8(x))
        return self.last_linear(jnp.mean(x, axis=(1, 2))), tap.acts
