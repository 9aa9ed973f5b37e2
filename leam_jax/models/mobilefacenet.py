"""MobileFaceNet (insightface ``arcface_torch`` ``mbf``, e.g. buffalo_s ``w600k_mbf.onnx``) in Flax NNX.

For users' own weights, converted from an ONNX export with
``python -m converters mobilefacenet_onnx --source w600k_mbf.onnx``:

* input: 112x112 RGB in [0, 255], normalised inside as (x - 127.5) / 127.5;
* ``conv_1``: conv 3x3/2 (64s) + BN + PReLU -> 56x56, with s the width scale
  (2 for ``mbf``: 128 channels);
* ``conv_2_dw``: grouped conv 3x3/1 (64 groups, so 2 channels per group for
  s = 2) + BN + PReLU; when ``blocks[0] > 1`` a residual stage
  ``conv_2_{i}`` instead;
* three stages, each a stride-2 bottleneck (``conv_23``, ``conv_34``,
  ``conv_45``; no skip) and ``blocks[1..3]`` residual bottlenecks
  (``conv_3_{i}``, ``conv_4_{i}``, ``conv_5_{i}``) at 28, 14 and 7 pixels.
  A bottleneck is conv 1x1 (to the inner width) + BN + PReLU -> depthwise
  3x3 (stride) + BN + PReLU -> conv 1x1 + BN (linear); a residual one adds
  its input (no activation after the add). Widths (out / inner): 64s / 128,
  64s / 128, 128s / 256, 128s / 256, 128s / 512, 128s / 256;
* ``conv_6_sep``: conv 1x1 (512) + BN + PReLU at 7x7;
* GDC head: depthwise conv 7x7 (valid) + BN -> flatten -> Linear(512, 512,
  no bias) -> BatchNorm1d: the 512-d embedding (not L2-normalised).

Every batch norm follows a conv or the linear layer and is folded into it by
the converter (every conv here carries a bias). Taps are the outputs of
``conv_1``, ``conv_2_dw`` (or ``conv_2_{i}``), every bottleneck and
``conv_6_sep``, all NHWC; the 1x1 GDC output is not a map and is not a tap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leam_jax.adapters import TapRecorder
from leam_jax.models.contract import check_images
from leam_jax.models.host_init import normal_fan_in
from leam_jax.models.layers import DepthwiseConv, prelu

INPUT_SIZE = 112
EMBEDDING_DIM = 512
GDC_WIDTH = 512
FINAL_SIZE = 7  # 112 / 2**4
RGB_MEAN = 127.5
RGB_SCALE = 127.5
# name -> (blocks per stage, width scale), as insightface's get_mbf / get_mbf_large.
CONFIGS = {"mbf": ((1, 4, 6, 2), 2), "mbf_large": ((2, 8, 12, 4), 4)}

_HIGHEST = jax.lax.Precision.HIGHEST  # no TF32 on GPUs: parity is float32


def layer_specs(config: str = "mbf") -> list[tuple[str, str, dict]]:
    """(tap name, kind, arguments) of every tapped layer, input side first.

    ``kind`` is ``conv`` (conv + BN + PReLU: ``cin, cout, k, stride, groups``)
    or ``bottleneck`` (``cin, cout, inner, stride, residual``).
    """
    if config not in CONFIGS:
        raise ValueError(f"MobileFaceNet config must be one of {sorted(CONFIGS)}, got {config!r}")
    blocks, s = CONFIGS[config]
    c1, c2 = 64 * s, 128 * s
    rows: list[tuple[str, str, dict]] = [("conv_1", "conv", dict(cin=3, cout=c1, k=3, stride=2, groups=1))]

    def res(prefix: str, c: int, n: int, inner: int) -> None:
        rows.extend((f"{prefix}_{i}", "bottleneck", dict(cin=c, cout=c, inner=inner, stride=1, residual=True))
                    for i in range(n))

    if blocks[0] == 1:
        rows.append(("conv_2_dw", "conv", dict(cin=c1, cout=c1, k=3, stride=1, groups=64)))
    else:
        res("conv_2", c1, blocks[0], 128)
    rows.append(("conv_23", "bottleneck", dict(cin=c1, cout=c1, inner=128, stride=2, residual=False)))
    res("conv_3", c1, blocks[1], 128)
    rows.append(("conv_34", "bottleneck", dict(cin=c1, cout=c2, inner=256, stride=2, residual=False)))
    res("conv_4", c2, blocks[2], 256)
    rows.append(("conv_45", "bottleneck", dict(cin=c2, cout=c2, inner=512, stride=2, residual=False)))
    res("conv_5", c2, blocks[3], 256)
    rows.append(("conv_6_sep", "conv", dict(cin=c2, cout=GDC_WIDTH, k=1, stride=1, groups=1)))
    return rows


def taps(config: str = "mbf") -> tuple[str, ...]:
    return tuple(name for name, _, _ in layer_specs(config))


TAPS = {config: taps(config) for config in CONFIGS}


def _conv(cin: int, cout: int, k: int, stride: int, groups: int, *, rngs: nnx.Rngs,
          pad: bool = True) -> nnx.Conv | DepthwiseConv:
    p = k // 2 if pad else 0  # PyTorch padding k // 2 on every side (1 for 3x3, 0 for 1x1)
    if groups == cin == cout and k > 1:  # depthwise: shifted slices (layers.DepthwiseConv), same weights
        return DepthwiseConv(cin, k, stride=stride, padding=((p, p), (p, p)), use_bias=True,
                             kernel_init=normal_fan_in, rngs=rngs)
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=((p, p), (p, p)), feature_group_count=groups,
                    use_bias=True, precision=_HIGHEST, kernel_init=normal_fan_in, rngs=rngs)


class ConvPrelu(nnx.Module):
    """conv (+ folded BN, so a bias) -> per-channel PReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int, *, rngs: nnx.Rngs):
        self.conv = _conv(cin, cout, k, stride, groups, rngs=rngs)
        self.alpha = nnx.Param(jnp.full((cout,), 0.25, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return prelu(self.conv(x), self.alpha[...])


class Bottleneck(nnx.Module):
    """insightface ``DepthWise``: 1x1 ConvPrelu -> depthwise 3x3 ConvPrelu -> 1x1 conv, + input if residual."""

    def __init__(self, cin: int, cout: int, inner: int, stride: int, residual: bool, *, rngs: nnx.Rngs):
        self.expand = ConvPrelu(cin, inner, 1, 1, 1, rngs=rngs)
        self.dw = ConvPrelu(inner, inner, 3, stride, inner, rngs=rngs)
        self.project = _conv(inner, cout, 1, 1, 1, rngs=rngs)
        self.residual = residual

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.project(self.dw(self.expand(x)))
        return y + x if self.residual else y


class MobileFaceNet(nnx.Module):
    """Flax NNX MobileFaceNet. ``__call__(images, perturbations)`` -> (emb, acts).

    ``images``: [B, 112, 112, 3] RGB, values in [0, 255] (any float or int
    dtype; float64 stays float64 for parity checks under jax x64).
    ``perturbations``: optional {tap: [B, H, W, C]} added at each tap.
    Returns ``(embeddings [B, 512], {tap: [B, H, W, C]})``; for ``mbf`` the
    taps are ``conv_1``/``conv_2_dw`` [B, 56, 56, 128], ``conv_23``,
    ``conv_3_*`` (28 px, 128), ``conv_34``, ``conv_4_*`` (14 px, 256),
    ``conv_45``, ``conv_5_*`` (7 px, 256) and ``conv_6_sep`` [B, 7, 7, 512].
    """

    input_size = INPUT_SIZE
    embedding_dim = EMBEDDING_DIM

    def __init__(self, config: str = "mbf", *, rngs: nnx.Rngs):
        specs = layer_specs(config)
        self.config = config
        self.taps = TAPS[config]
        self.layers = nnx.List([ConvPrelu(**a, rngs=rngs) if kind == "conv" else Bottleneck(**a, rngs=rngs)
                                for _, kind, a in specs])
        # GDC: depthwise 7x7 valid (+ folded BN), then Linear + folded BatchNorm1d.
        self.gdc = _conv(GDC_WIDTH, GDC_WIDTH, FINAL_SIZE, 1, GDC_WIDTH, rngs=rngs, pad=False)
        self.fc = nnx.Linear(GDC_WIDTH, EMBEDDING_DIM, precision=_HIGHEST, kernel_init=normal_fan_in, rngs=rngs)

    def __call__(self, images: jax.Array, perturbations: dict | None = None):
        check_images(images, INPUT_SIZE, "MobileFaceNet")
        tap = TapRecorder("MobileFaceNet", self.taps, perturbations)

        x = images if images.dtype == jnp.float64 else images.astype(jnp.float32)
        x = (x - RGB_MEAN) / RGB_SCALE
        for name, layer in zip(self.taps, self.layers):
            x = tap(name, layer(x))
        x = self.gdc(x).reshape(x.shape[0], GDC_WIDTH)  # [B, 1, 1, 512]: NHWC and NCHW flatten agree
        return self.fc(x), tap.acts
