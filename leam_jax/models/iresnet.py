"""IResNet-18/34/50/100 (insightface ``iresnet``, the ArcFace backbone family).

A Flax NNX re-implementation for users' own weights (converted with
``python -m converters iresnet50 --source backbone.pth|.onnx``):

* input: 112x112 RGB in [0, 255], normalised inside as (x / 255 - 0.5) / 0.5;
* stem: conv3x3/1 (64) + batch norm + PReLU;
* four stages of IBasicBlock with widths 64/128/256/512: BN -> conv3x3 ->
  BN -> PReLU -> conv3x3 (stride 2 in a stage's first block) -> BN, plus the
  skip path (conv1x1/2 + BN in a stage's first block, identity otherwise);
  the sum is the block output (no activation after the add);
* BN2d -> (dropout, a no-op in eval) -> flatten -> Linear(512*7*7, 512) ->
  BatchNorm1d (``features``): the 512-d embedding.

Eval-mode batch norms that follow a conv or the linear layer are folded into
it by the converter (``conv`` kernels carry a bias); the ones that precede a
conv (each block's ``bn1``, the final ``bn2``) cannot be folded exactly
(zero padding) and are per-channel ``Affine`` layers. The flatten is NHWC
here; the converter permutes the rows of the linear kernel to match
PyTorch's NCHW flatten.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.layers import Affine, prelu

INPUT_SIZE = 112
EMBEDDING_DIM = 512
WIDTHS = (64, 128, 256, 512)
LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
FINAL_SIZE = 7  # 112 / 2**4
# (x / 255 - 0.5) / 0.5 == (x - 127.5) / 127.5, the same for R, G and B.
RGB_MEAN = (127.5, 127.5, 127.5)
RGB_SCALE = 127.5


def block_names(depth: int) -> list[str]:
    """``layer{stage}_{index}`` for every block, input side first (insightface's ``layerS.I``)."""
    return [f"layer{s + 1}_{i}" for s, n in enumerate(LAYERS[depth]) for i in range(n)]


def taps(depth: int) -> tuple[str, ...]:
    """Tap names in forward order: the stem output (after PReLU), then every block output."""
    return ("stem", *block_names(depth))


TAPS = {depth: taps(depth) for depth in LAYERS}


class PReLU(nnx.Module):
    """Per-channel PReLU: max(0, x) + alpha * min(0, x)."""

    def __init__(self, channels: int):
        self.alpha = nnx.Param(jnp.full((channels,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return prelu(x, self.alpha[...])


def _conv(cin: int, cout: int, k: int, stride: int, *, rngs: nnx.Rngs) -> nnx.Conv:
    # PyTorch padding k // 2 on every side, whatever the stride (conv3x3 pads 1, conv1x1 pads 0).
    p = k // 2
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)), use_bias=True, rngs=rngs)


class IBasicBlock(nnx.Module):
    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.bn1 = Affine(cin)
        self.conv1 = _conv(cin, cout, 3, 1, rngs=rngs)  # + folded bn2
        self.prelu = PReLU(cout)
        self.conv2 = _conv(cout, cout, 3, stride, rngs=rngs)  # + folded bn3
        # conv1x1 + folded BN on the skip path of a stage's first block.
        self.downsample = _conv(cin, cout, 1, stride, rngs=rngs) if (stride != 1 or cin != cout) else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.conv2(self.prelu(self.conv1(self.bn1(x))))
        return y + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nnx.Module):
    """Flax NNX IResNet. ``__call__(images, perturbations)`` -> (emb, acts).

    ``images``: [B, 112, 112, 3] RGB, values in [0, 255] (any float or int dtype).
    ``perturbations``: optional {tap: [B, H, W, C]}, added to each tap's
    activation before the network goes on (zeros for a gradient probe).
    Returns ``(embeddings [B, 512], {tap: activation [B, H, W, C]})``; taps are
    ``stem`` [B, 112, 112, 64] and ``layer{s}_{i}`` (56, 28, 14, 7 pixels square).
    """

    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, depth: int = 50, *, rngs: nnx.Rngs):
        if depth not in LAYERS:
            raise ValueError(f"IResNet depth must be one of {sorted(LAYERS)}, got {depth}")
        self.depth = depth
        self.taps = TAPS[depth]
        self.stem_conv = _conv(3, WIDTHS[0], 3, 1, rngs=rngs)  # + folded bn1
        self.stem_prelu = PReLU(WIDTHS[0])
        blocks = []
        cin = WIDTHS[0]
        for width, n in zip(WIDTHS, LAYERS[depth]):
            for i in range(n):
                blocks.append(IBasicBlock(cin, width, 2 if i == 0 else 1, rngs=rngs))
                cin = width
        self.blocks = nnx.List(blocks)
        self.bn2 = Affine(cin)
        self.fc = nnx.Linear(cin * FINAL_SIZE * FINAL_SIZE, EMBEDDING_DIM, rngs=rngs)  # + folded features BN

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "IResNet")
        tap = TapRecorder("IResNet", TAPS[self.depth], perturbations)

        # float32 compute; float64 inputs stay float64 (parity checks under jax x64 with float64 params).
        x = images if images.dtype == jnp.float64 else images.astype(jnp.float32)
        x = (x - jnp.asarray(RGB_MEAN, x.dtype)) / RGB_SCALE
        x = tap("stem", self.stem_prelu(self.stem_conv(x)))
        for name, block in zip(block_names(self.depth), self.blocks):
            x = tap(name, block(x))
        x = self.bn2(x).reshape(x.shape[0], -1)  # NHWC flatten; the converter permutes fc rows
        return self.fc(x), tap.acts
