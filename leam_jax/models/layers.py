"""Small layers several converted models share."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


class Affine(nnx.Module):
    """Per-channel affine (a folded, eval-mode batch norm): y = gamma * x + beta."""

    def __init__(self, channels: int):
        self.gamma = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.beta = nnx.Param(jnp.zeros((channels,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...] + self.beta[...]


def prelu(x: jax.Array, alpha: jax.Array) -> jax.Array:
    """Per-channel PReLU (alpha over the last axis): ``x`` where ``x >= 0``, else ``alpha * x``.

    Equal, value for value, to TF's ``Prelu`` and to ``max(0, x) + alpha * min(0, x)``.
    """
    return jnp.where(x >= 0, x, alpha * x)


# Depthwise and small convolutions by shifted slices: XLA:CPU runs grouped
# convolutions (feature_group_count) 8-15x slower than this, and every
# MobileNet-style model here is mostly 3x3 depthwise layers. Weights are held
# exactly as nnx.Conv holds them (``kernel`` [k, k, 1, C], ``bias`` [C]), so
# converted checkpoints do not change.

Padding = str | tuple[tuple[int, int], tuple[int, int]]


def same_pads(size: int, k: int, stride: int) -> tuple[int, int]:
    """TF/XLA "SAME" padding of one axis: the odd pixel goes at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + k - size, 0)
    return total // 2, total - total // 2


def _pads(h: int, w: int, k, stride, padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a k x k window (or (kh, kw)) at ``stride`` (or (sh, sw)) over
    [H, W] for ``padding``: SAME (as lax's), VALID or explicit pairs."""
    (kh, kw), (sh, sw) = (k, k) if isinstance(k, int) else k, (stride, stride) if isinstance(stride, int) else stride
    if padding == "SAME":
        return same_pads(h, kh, sh), same_pads(w, kw, sw)
    if padding == "VALID":
        return (0, 0), (0, 0)
    if not isinstance(padding, str) and len(padding) == 2:
        (pt, pb), (pl, pr) = padding
        return (int(pt), int(pb)), (int(pl), int(pr))
    raise ValueError(f"padding {padding!r}: SAME, VALID or ((top, bottom), (left, right))")


def shifted_views(x: jax.Array, k: int, stride: int, padding: Padding) -> list[jax.Array]:
    """The k*k shifted (strided) views of ``x`` [B, H, W, C] a k x k window sees, row-major over the window.

    ``padding``: ``SAME``, ``VALID`` or explicit ((top, bottom), (left, right)).
    """
    h, w = x.shape[1:3]
    (pt, pb), (pl, pr) = _pads(h, w, k, stride, padding)
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    ho, wo = (h + pt + pb - k) // stride + 1, (w + pl + pr - k) // stride + 1
    return [xp[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride, :]
            for i in range(k) for j in range(k)]


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, *, stride: int = 1, padding: Padding = "SAME") -> jax.Array:
    """Depthwise convolution (multiplier 1) by shifted slices: x [B, H, W, C], kernel [k, k, 1, C]."""
    return _depthwise(x, kernel, stride, padding)


# The gradient of the shifted slices, as JAX derives it, is one padded copy of the input's size
# per window position, summed: 9 full-size arrays per layer (faceres' backward pass took 5x its
# forward). The hand-written backward reads the dilated, padded cotangent through the same shifted
# windows in one fused pass and adds the positions in the order JAX's derivation does (last first),
# so the gradients are the same numbers (tests/models/test_layers.py).
@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    k = kernel.shape[0]
    views = shifted_views(x, k, stride, padding)
    out = views[0] * kernel[0, 0, 0]
    for n, t in enumerate(views[1:], 1):
        out = out + t * kernel[n // k, n % k, 0]
    return out


def _depthwise_fwd(x, kernel, stride, padding):
    return _depthwise(x, kernel, stride, padding), (x, kernel)


def _depthwise_bwd(stride, padding, res, g):
    x, kernel = res
    k = kernel.shape[0]
    h, w = x.shape[1:3]
    (pt, pb), (pl, pr) = _pads(h, w, k, stride, padding)
    hp, wp = h + pt + pb, w + pl + pr
    # Window position (i, j) read padded-input pixel (i + stride*y, j + stride*x) for output (y, x):
    # dilate g by the stride, then pad so that rows u of the window at offset k-1-i hold g's row u - i.
    gd = jax.lax.pad(g, jnp.zeros((), g.dtype), ((0, 0, 0), (0, 0, stride - 1), (0, 0, stride - 1), (0, 0, 0)))
    gp = jnp.pad(gd, ((0, 0), (k - 1, hp - gd.shape[1]), (k - 1, wp - gd.shape[2]), (0, 0)))
    dxp = None
    for n in reversed(range(k * k)):
        i, j = divmod(n, k)
        term = gp[:, k - 1 - i:k - 1 - i + hp, k - 1 - j:k - 1 - j + wp] * kernel[i, j, 0]
        dxp = term if dxp is None else dxp + term
    views = shifted_views(x, k, stride, padding)
    dk = jnp.stack([jnp.sum(g * v, axis=(0, 1, 2)) for v in views]).reshape(kernel.shape)
    return dxp[:, pt:pt + h, pl:pl + w], dk


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


class DepthwiseConv(nnx.Module):
    """Depthwise k x k convolution, channel multiplier 1 (TF ``DepthwiseConv2dNative``; PyTorch groups=C)."""

    def __init__(self, c: int, k: int = 3, *, stride: int = 1, padding: Padding = "SAME", use_bias: bool = False,
                 kernel_init=None, rngs: nnx.Rngs):
        self.k, self.stride, self.padding = k, stride, padding
        init = kernel_init or nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (k, k, 1, c), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((c,), jnp.float32)) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = depthwise_conv2d(x, self.kernel[...], stride=self.stride, padding=self.padding)
        return y if self.bias is None else y + self.bias[...]


# Max pooling with a hand-written backward pass: XLA:CPU runs the gradient of reduce_window max
# (select-and-scatter) slowly, and dlib's 3x3/2 pool sits on LEAM's backward path (BUILD.md, "Study
# speed", has the measurement). The gradient goes to the first maximum of each window in row-major
# window order, as select-and-scatter gives it (tests/models/test_layers.py).


def _pool_views(x: jax.Array, k: int, stride: int) -> list[jax.Array]:
    return shifted_views(x, k, stride, "VALID")


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: int, stride: int) -> jax.Array:
    """VALID max pooling of [B, H, W, C] over ``window`` x ``window`` windows (pad with -inf first for SAME)."""
    return functools.reduce(jnp.maximum, _pool_views(x, window, stride))


def _max_pool_fwd(x, window, stride):
    views = _pool_views(x, window, stride)
    best, first = views[0], jnp.zeros(views[0].shape, jnp.int8)
    for n, v in enumerate(views[1:], 1):
        later = v > best  # strictly greater: ties keep the earlier window position
        best, first = jnp.where(later, v, best), jnp.where(later, jnp.int8(n), first)
    return best, (first, x.shape)


def _max_pool_bwd(window, stride, res, g):
    """Each window offset (di, dj) sends its share of ``g`` to input rows stride*i + di: split di into
    (di // stride, di % stride), pad the quotient and interleave the remainders (no scatter)."""
    first, shape = res
    b, ho, wo, c = g.shape
    q = (window - 1) // stride
    parts: dict[tuple[int, int], jax.Array] = {}
    for n in range(window * window):
        di, dj = divmod(n, window)
        part = jnp.pad(jnp.where(first == n, g, 0), ((0, 0), (di // stride, q - di // stride),
                                                     (dj // stride, q - dj // stride), (0, 0)))
        r = (di % stride, dj % stride)
        parts[r] = part + parts[r] if r in parts else part
    zero = jnp.zeros((b, ho + q, wo + q, c), g.dtype)
    rows = [jnp.stack([parts.get((ri, rj), zero) for rj in range(stride)], axis=3) for ri in range(stride)]
    full = jnp.stack(rows, axis=2).reshape(b, (ho + q) * stride, (wo + q) * stride, c)
    h, w = shape[1:3]
    full = full[:, :h, :w]
    return (jnp.pad(full, ((0, 0), (0, h - full.shape[1]), (0, w - full.shape[2]), (0, 0))),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# Strided convolutions with a hand-written input gradient. XLA:CPU derives it as a convolution over
# the stride-dilated cotangent, which is slow in two cases measured here (batch 32,
# benchmarks/conv_backward.py): an image stem (few input channels, so the gradient convolution has
# 3 output channels: dlib's 7x7/2 stem 75 ms against a 12 ms forward) and a 1x1 output (dlib's last
# down block, 9.1 ms against 0.6 ms; XLA turns it into a batch-major convolution). Stems go through
# the stride phases instead: padded input row s*q + r is read only by kernel taps k = s*m + r, so one
# stride-1 convolution of the cotangent with the taps regrouped by phase gives all s*s phases as
# channels, interleaved back into pixels. A 1x1 output is one matrix product with the kernel. Other
# strided convolutions are lax's own (XLA's gradient was as fast or faster).
STEM_CHANNELS = 8  # at most this many input channels: the gradient goes through the stride phases

_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """``jax.lax.conv_general_dilated`` (the signature ``nnx.Conv`` calls) whose strided NHWC
    convolutions take the hand-written input gradient above; any other call is lax's own."""
    def lax_own():
        return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                            dimension_numbers, feature_group_count, precision=precision, **kwargs)

    # nnx.Conv passes out_sharding (and preferred_element_type when set): only their defaults qualify.
    dense = feature_group_count == 1 and all(v is None for v in kwargs.values()) and all(
        d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    strides = tuple(int(s) for s in window_strides)
    nhwc = lhs.ndim == 4 and dimension_numbers is not None and (
        jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
    known = padding in ("SAME", "VALID") or not isinstance(padding, str)  # other strings: lax's own
    if not (dense and nhwc and known and max(strides) > 1):
        return lax_own()
    pads = _pads(*lhs.shape[1:3], rhs.shape[:2], strides, padding)
    special = rhs.shape[2] <= STEM_CHANNELS or _out_size(lhs.shape, rhs.shape, strides, pads) == (1, 1)
    if not special or min(min(p) for p in pads) < 0:
        return lax_own()
    return _strided_conv(lhs, rhs, strides, pads, precision)


def _out_size(x_shape, w_shape, strides, pads) -> tuple[int, int]:
    return tuple((x_shape[1 + a] + sum(pads[a]) - w_shape[a]) // strides[a] + 1 for a in range(2))


def _lax_conv(x, w, strides, pads, precision):
    return jax.lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_NHWC, precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _strided_conv(x, w, strides, pads, precision):
    return _lax_conv(x, w, strides, pads, precision)


def _strided_conv_fwd(x, w, strides, pads, precision):
    return _lax_conv(x, w, strides, pads, precision), (x, w)


def _strided_conv_bwd(strides, pads, precision, res, g):
    x, w = res
    _, pull_w = jax.vjp(lambda w: _lax_conv(x, w, strides, pads, precision), w)  # the kernel's: XLA's own
    if g.shape[1:3] == (1, 1):
        dx = _one_pixel_input_grad(x.shape, w, pads, g, precision)
    else:
        dx = _phase_input_grad(x.shape, w, strides, pads, g, precision)
    return dx, pull_w(g)[0]


_strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def _one_pixel_input_grad(x_shape, w, pads, g, precision):
    """A 1x1 output reads one kernel-sized window at the padded input's top left: dx is g times the kernel."""
    kh, kw, cin, _ = w.shape
    patch = jnp.einsum("bo,hwio->bhwi", g[:, 0, 0], w, precision=precision)
    (pt, pb), (pl, pr) = pads
    h, wd = x_shape[1:3]
    full = jnp.pad(patch, ((0, 0), (0, h + pt + pb - kh), (0, wd + pl + pr - kw), (0, 0)))
    return full[:, pt:pt + h, pl:pl + wd]


def _phase_input_grad(x_shape, w, strides, pads, g, precision):
    """The input gradient by stride phases. In one dimension, padded input row u = s*q + r gets
    sum_m g[q - m] * w[s*m + r] (m < M = ceil(K/s), taps past K are zero): a stride-1 correlation
    of g, padded by M-1 in front, with the taps of phase r reversed."""
    (sh, sw), (kh, kw, cin, cout) = strides, w.shape
    mh, mw = -(-kh // sh), -(-kw // sw)
    (pt, pb), (pl, pr) = pads
    h, wd = x_shape[1:3]
    qh, qw = -(-(h + pt + pb) // sh), -(-(wd + pl + pr) // sw)
    taps = jnp.pad(w, ((0, mh * sh - kh), (0, mw * sw - kw), (0, 0), (0, 0)))
    taps = taps.reshape(mh, sh, mw, sw, cin, cout)[::-1, :, ::-1]
    kernel = taps.transpose(0, 2, 5, 1, 3, 4).reshape(mh, mw, cout, sh * sw * cin)
    gp = jnp.pad(g, ((0, 0), (mh - 1, max(0, qh - g.shape[1])), (mw - 1, max(0, qw - g.shape[2])), (0, 0)))
    phases = jax.lax.conv_general_dilated(gp, kernel, (1, 1), "VALID", dimension_numbers=_NHWC,
                                          precision=precision)[:, :qh, :qw]
    b = g.shape[0]
    full = phases.reshape(b, qh, qw, sh, sw, cin).transpose(0, 1, 3, 2, 4, 5).reshape(b, qh * sh, qw * sw, cin)
    return full[:, pt:pt + h, pl:pl + wd]
