"""Image quality of a protected photo against the original: PSNR and SSIM (pure JAX).

Both take [B, H, W, C] images on the 0..255 scale (uint8 or float) and return
one value per image [B]. SSIM follows Wang et al. 2004 (IEEE TIP 13(4)): an
11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, L = 255, computed on
each channel separately (RGB, not luminance: a perturbation in one channel
counts), averaged over the valid windows (no padding) and then over channels.
That is scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=255, channel_axis=-1)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DATA_RANGE = 255.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _pair(a, b) -> tuple[jax.Array, jax.Array]:
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"need two images [B, H, W, C] of one shape, got {a.shape} and {b.shape}")
    dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else jnp.float32
    return a.astype(dtype), b.astype(dtype)


def psnr(a, b, *, data_range: float = DATA_RANGE) -> jax.Array:
    """``10 log10(L^2 / MSE)`` over all pixels and channels of each image; +inf where equal. -> [B]."""
    a, b = _pair(a, b)
    mse = jnp.mean((a - b) ** 2, axis=(1, 2, 3))
    return 10.0 * jnp.log10(data_range**2 / mse)  # mse = 0 -> +inf, as an identical copy deserves


def _gaussian_window(dtype) -> jax.Array:
    x = jnp.arange(SSIM_WINDOW, dtype=dtype) - (SSIM_WINDOW - 1) / 2
    w = jnp.exp(-0.5 * (x / SSIM_SIGMA) ** 2)
    return w / jnp.sum(w)


def _filter_valid(x: jax.Array, w: jax.Array) -> jax.Array:
    """Separable 'valid' filtering of [B, H, W, C] with the 1-D window w: [B, H-10, W-10, C]."""
    k = w.shape[0]
    h, wd = x.shape[1] - k + 1, x.shape[2] - k + 1
    x = sum(w[i] * x[:, i:i + h] for i in range(k))
    return sum(w[i] * x[:, :, i:i + wd] for i in range(k))


def ssim(a, b, *, data_range: float = DATA_RANGE) -> jax.Array:
    """Mean SSIM of each image pair (see the module docstring). a, b [B, H, W, C], H, W >= 11. -> [B]."""
    a, b = _pair(a, b)
    if min(a.shape[1:3]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {a.shape[1:3]}")
    w = _gaussian_window(a.dtype)
    mu_a, mu_b = _filter_valid(a, w), _filter_valid(b, w)
    # Second moments about mid-grey: (co)variances do not change, float32 cancellation shrinks 4x.
    ca, cb = a - data_range / 2, b - data_range / 2
    ma, mb = mu_a - data_range / 2, mu_b - data_range / 2
    var_a = _filter_valid(ca * ca, w) - ma * ma
    var_b = _filter_valid(cb * cb, w) - mb * mb
    cov = _filter_valid(ca * cb, w) - ma * mb
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return jnp.mean(s, axis=(1, 2, 3))
