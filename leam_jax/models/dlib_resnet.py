"""dlib's face-recognition ResNet-29 (``dlib_face_recognition_resnet_model_v1``).

A Flax NNX re-implementation of the network in dlib's
``dnn_face_recognition_ex.cpp``, layer for layer, so converted weights give
dlib's 128-d descriptors to float precision:

* input: 150x150 RGB in [0, 255]; dlib subtracts (122.782, 117.001, 104.298)
  per channel and divides by 256;
* stem: conv 7x7/2 (no padding) + affine + ReLU, max-pool 3x3/2 (no padding);
* 14 residual blocks (conv3x3 + affine + ReLU + conv3x3 + affine, then add
  and ReLU). Down blocks use a stride-2 conv without padding on the main path
  and a 2x2/2 average pool on the skip path; the two can differ in size, and
  dlib's ``add_prev`` then zero-pads the smaller tensor at the high end of
  channels, rows and columns (``tt::add`` on tensors of different shape);
* global average pool over the whole map (padding zeros included) and a
  128x256 linear layer without bias.

Batch norm was folded into per-channel affine layers by dlib itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.layers import Affine, conv_general_dilated, max_pool

INPUT_SIZE = 150
EMBEDDING_DIM = 128
# dlib's input_rgb_image_sized defaults; the converter checks the file agrees.
RGB_MEAN = (122.782, 117.001, 104.298)
RGB_SCALE = 256.0

# (stage name, width, number of blocks, first block downsamples), input side
# first; mirrors alevel4 .. alevel0 of the C++ template.
STAGES = (
    ("s1", 32, 3, False),
    ("s2", 64, 4, True),
    ("s3", 128, 3, True),
    ("s4", 256, 3, True),
    ("s5", 256, 1, True),
)


def block_names() -> list[str]:
    return [f"{stage}_b{i}" for stage, _, n, _ in STAGES for i in range(n)]


# Named taps in forward order: stem after ReLU (72x72), after max-pool (35x35),
# then every residual block output (after its final ReLU).
TAPS = ("stem", "stem_pool", *block_names())


def _conv(cin: int, cout: int, k: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    # dlib pads k//2 only for stride 1; strided convs take no padding. layers.conv_general_dilated is
    # lax's, with a hand-written input gradient for the stem and the last down block (1x1 output).
    pad = k // 2 if stride == 1 else 0
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((pad, pad), (pad, pad)),
                    conv_general_dilated=conv_general_dilated, rngs=rngs)


def _pool(x: jax.Array, op: str, window: int, stride: int) -> jax.Array:
    dims, strides = (1, window, window, 1), (1, stride, stride, 1)
    if op == "max":
        return max_pool(x, window, stride)
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID")
    return total / (window * window)


def add_zero_padded(a: jax.Array, b: jax.Array) -> jax.Array:
    """dlib add_prev: sum over the union shape, the smaller tensor zero-padded at the end."""
    shape = tuple(max(p, q) for p, q in zip(a.shape, b.shape))

    def pad(t: jax.Array) -> jax.Array:
        return jnp.pad(t, [(0, s - d) for s, d in zip(shape, t.shape)])

    return pad(a) + pad(b)


class ResBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, down: bool, *, rngs: nnx.Rngs):
        self.down = down
        self.conv1 = _conv(cin, cout, 3, 2 if down else 1, rngs=rngs)
        self.affine1 = Affine(cout)
        self.conv2 = _conv(cout, cout, 3, 1, rngs=rngs)
        self.affine2 = Affine(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jax.nn.relu(self.affine1(self.conv1(x)))
        y = self.affine2(self.conv2(y))
        skip = _pool(x, "avg", 2, 2) if self.down else x
        return jax.nn.relu(add_zero_padded(y, skip))


class DlibResNet(nnx.Module):
    """Flax NNX dlib ResNet. ``__call__(images, perturbations)`` -> (emb, acts).

    ``images``: [B, 150, 150, 3] RGB, values in [0, 255] (any float or int dtype).
    ``perturbations``: optional {tap: [B, H, W, C]}, added to each tap's
    activation before the network goes on (zeros for a gradient probe).
    Returns ``(embeddings [B, 128], {tap: activation [B, H, W, C]})``.
    """

    taps = TAPS
    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem_conv = _conv(3, 32, 7, 2, rngs=rngs)
        self.stem_affine = Affine(32)
        blocks = []
        cin = 32
        for _, width, n, down in STAGES:
            for i in range(n):
                blocks.append(ResBlock(cin, width, down and i == 0, rngs=rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.fc = nnx.Linear(cin, EMBEDDING_DIM, use_bias=False, rngs=rngs)

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "DlibResNet")
        tap = TapRecorder("DlibResNet", TAPS, perturbations)

        x = (images.astype(jnp.float32) - jnp.asarray(RGB_MEAN, jnp.float32)) / RGB_SCALE
        x = tap("stem", jax.nn.relu(self.stem_affine(self.stem_conv(x))))
        x = tap("stem_pool", _pool(x, "max", 3, 2))
        for name, block in zip(block_names(), self.blocks):
            x = tap(name, block(x))
        emb = self.fc(jnp.mean(x, axis=(1, 2)))
        return emb, tap.acts
