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


def _pads(h: int, w: int, k: int, stride: int, padding: Padding) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of a k x k window over [H, W] for ``padding``."""
    if padding == "SAME":
        return same_pads(h, k, stride), same_pads(w, k, stride)
    if padding == "VALID":
        return (0, 0), (0, 0)
    if isinstance(padding, tuple) and len(padding) == 2:
        return padding
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
