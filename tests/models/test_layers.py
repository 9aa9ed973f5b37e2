"""Shared layers against XLA's own ops as oracles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leam_jax.models import faceres, layers
from leam_jax.models.layers import max_pool


def _reference_pool(x, k, s):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")


@pytest.mark.parametrize("shape,k,s", [((2, 9, 11, 5), 3, 2), ((2, 72, 72, 4), 3, 2), ((3, 8, 8, 3), 2, 2),
                                        ((2, 10, 7, 3), 3, 1), ((2, 13, 13, 2), 3, 3), ((1, 6, 6, 1), 1, 2)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_value_and_gradient_equal_reduce_window(shape, k, s, ties):
    """Forward equals reduce_window max; the hand-written backward equals select-and-scatter's, also
    with tied maxima (ReLU zeros, integers), where the first maximum in window order takes the gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:
        x = np.maximum(np.round(x), 0)
    x = jnp.asarray(x)
    want, pull_want = jax.vjp(lambda v: _reference_pool(v, k, s), x)
    got, pull_got = jax.vjp(lambda v: max_pool(v, k, s), x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    g = jnp.asarray(rng.standard_normal(want.shape), jnp.float32)
    # Overlapping windows add in another order: equal to float rounding.
    np.testing.assert_allclose(np.asarray(pull_got(g)[0]), np.asarray(pull_want(g)[0]), rtol=0, atol=1e-5)


def test_max_pool_composes_with_jit_vmap_and_grad():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 2, 9, 9, 2)), jnp.float32)

    def loss(fn):
        return jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(jnp.sin(fn(v, 3, 2))))))(x)

    np.testing.assert_allclose(np.asarray(loss(max_pool)), np.asarray(loss(_reference_pool)), rtol=0, atol=1e-5)


def _depthwise_derived(x, kernel, stride, padding):
    """The forward of layers.depthwise_conv2d without its custom backward: JAX derives the gradient."""
    k = kernel.shape[0]
    views = layers.shifted_views(x, k, stride, padding)
    out = views[0] * kernel[0, 0, 0]
    for n, t in enumerate(views[1:], 1):
        out = out + t * kernel[n // k, n % k, 0]
    return out


@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 9, 9, 3), 3, 1, "SAME"), ((2, 9, 10, 3), 3, 2, "SAME"), ((2, 10, 10, 3), 3, 2, "SAME"),
    ((2, 8, 8, 3), 3, 1, ((1, 1), (1, 1))), ((2, 9, 9, 3), 3, 2, "VALID"), ((1, 11, 11, 2), 5, 2, "SAME")])
def test_depthwise_backward_equals_the_derived_one(shape, k, stride, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), jnp.float32)
    y = layers.depthwise_conv2d(x, kernel, stride=stride, padding=padding)
    np.testing.assert_array_equal(y, _depthwise_derived(x, kernel, stride, padding))
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)

    def grads(f, x, kernel, g):
        return jax.vjp(lambda x, kernel: f(x, kernel, stride=stride, padding=padding), x, kernel)[1](g)

    derived = lambda x, kernel, stride, padding: _depthwise_derived(x, kernel, stride, padding)  # noqa: E731
    # Op by op, the same sums in the same order: equal to the bit. Compiled, XLA may contract
    # multiply-adds differently in either version: equal to float32 rounding.
    for mine, ref in zip(grads(layers.depthwise_conv2d, x, kernel, g), grads(derived, x, kernel, g)):
        np.testing.assert_array_equal(mine, ref)
    jitted = jax.jit(grads, static_argnums=0)
    for mine, ref in zip(jitted(layers.depthwise_conv2d, x, kernel, g), jitted(derived, x, kernel, g)):
        np.testing.assert_allclose(mine, ref, rtol=0, atol=2e-6 * float(jnp.abs(ref).max()))


def test_relu6_derivative_is_the_composed_one_ties_included():
    x = jnp.array([-1.0, -0.0, 0.0, 1e-30, 3.0, 6.0 - 2**-21, 6.0, 6.0 + 2**-20, 7.0], jnp.float32)
    composed = lambda x: jnp.maximum(jnp.minimum(jax.nn.relu(x), 6.0), 0.0)  # noqa: E731
    np.testing.assert_array_equal(faceres.relu6(x), composed(x))
    for f in (jax.grad(lambda x: jnp.sum(faceres.relu6(x) * 3.0)), jax.jit(jax.grad(lambda x: jnp.sum(faceres.relu6(x) * 3.0)))):
        np.testing.assert_array_equal(f(x), jax.grad(lambda x: jnp.sum(composed(x) * 3.0))(x))


_NHWC = ("NHWC", "HWIO", "NHWC")


@pytest.mark.parametrize("shape,k,stride,padding,cout", [
    ((2, 23, 21, 3), 7, 2, "VALID", 5),          # an image stem (phases), odd sizes
    ((2, 16, 16, 3), 3, 2, "SAME", 4),           # faceres' stem
    ((2, 12, 12, 3), 3, 2, ((1, 1), (1, 1)), 4),  # mobileface's stem
    ((2, 10, 9, 2), 3, 3, ((2, 1), (0, 2)), 3),  # stride 3, uneven padding
    ((2, 6, 6, 4), 2, (2, 1), "SAME", 3),        # strides differ per axis
    ((2, 4, 4, 16), 3, 2, "VALID", 8),           # 1x1 output (dlib's last down block)
    ((2, 5, 5, 12), 5, 3, ((1, 0), (0, 1)), 6),  # 1x1 output from a padded window
    ((2, 9, 9, 16), 3, 2, "VALID", 8),           # many channels: XLA's own gradient
    ((2, 9, 9, 16), 3, 1, "SAME", 8),            # stride 1: lax's convolution
])
def test_strided_conv_gradient_equals_xla(shape, k, stride, padding, cout):
    """The forward is lax's convolution to the bit; the hand-written input gradients (stride phases,
    1x1 outputs) equal XLA's derivation to float32 rounding, the kernel gradient is XLA's own."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, shape[-1], cout)), jnp.float32)
    strides = stride if isinstance(stride, tuple) else (stride, stride)

    def f(conv):
        return lambda x, w: conv(x, w, strides, padding, dimension_numbers=_NHWC)

    y, pull = jax.vjp(f(layers.conv_general_dilated), x, w)
    want, pull_want = jax.vjp(f(jax.lax.conv_general_dilated), x, w)
    np.testing.assert_array_equal(y, want)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    for mine, ref in zip(pull(g), pull_want(g)):
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-5 * float(jnp.abs(ref).max()))
        assert mine.shape == ref.shape


def _conv_input_grad_oracle(x_shape, w, g, stride):
    """VALID strided convolution's input gradient in float64 numpy, tap by tap: padded input pixel
    (stride*o + i, stride*p + j) received x * w[i, j] for output (o, p)."""
    w, g = np.asarray(w, np.float64), np.asarray(g, np.float64)
    dx = np.zeros(x_shape)
    oh, ow = g.shape[1:3]
    for i in range(w.shape[0]):
        for j in range(w.shape[1]):
            rows, cols = slice(i, i + stride * (oh - 1) + 1, stride), slice(j, j + stride * (ow - 1) + 1, stride)
            dx[:, rows, cols] += np.einsum("bhwo,io->bhwi", g, w[i, j])
    return dx


@pytest.mark.parametrize("shape,k,cin,cout", [((4, 31, 31), 7, 3, 32), ((4, 4, 4), 3, 64, 64)])
def test_strided_conv_gradient_takes_the_hand_written_paths(shape, k, cin, cout):
    """Stems and 1x1 outputs differ from XLA's derivation in the float rounding of their sums (so
    the hand-written paths are the ones taken); both equal a float64 oracle to float32 precision."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(*shape, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, cin, cout)), jnp.float32)

    def conv(c, x):
        return c(x, w, (2, 2), "VALID", dimension_numbers=_NHWC)

    y, pull = jax.vjp(lambda x: conv(layers.conv_general_dilated, x), x)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.float32)
    oracle = _conv_input_grad_oracle(x.shape, w, g, 2)
    mine = pull(g)[0]
    xla = jax.vjp(lambda x: conv(jax.lax.conv_general_dilated, x), x)[1](g)[0]
    assert not np.array_equal(np.asarray(mine), np.asarray(xla))
    np.testing.assert_allclose(mine, oracle, rtol=0, atol=2e-6 * np.abs(oracle).max())
    np.testing.assert_allclose(xla, oracle, rtol=0, atol=2e-6 * np.abs(oracle).max())


def test_strided_conv_in_nnx_conv_composes_with_jit_vmap_and_second_order_grad():
    conv = nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", conv_general_dilated=layers.conv_general_dilated,
                    rngs=nnx.Rngs(0))
    ref = nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 2, 9, 9, 3)), jnp.float32)

    def loss(module):
        return jax.jit(jax.vmap(jax.grad(lambda v: jnp.sum(jnp.sin(module(v))))))(x)

    np.testing.assert_allclose(loss(conv), loss(ref), rtol=0, atol=1e-5)
    hess = lambda m: jax.grad(lambda v: jnp.sum(jax.grad(lambda u: jnp.sum(m(u) ** 2))(v)))(x[0])  # noqa: E731
    np.testing.assert_allclose(hess(conv), hess(ref), rtol=0, atol=1e-4)
