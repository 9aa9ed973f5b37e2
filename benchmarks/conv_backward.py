"""Strided convolutions' input gradient: XLA's derivation against layers.conv_general_dilated's, side by side.

    python benchmarks/conv_backward.py [--batch 32] [--repeats 9] [--no_models]

Two parts, each timed in interleaved rounds (median and min-max of ``--repeats``):
  layers  every strided convolution of the default models at their shapes (random data): the input
          gradient as XLA derives it (``lax``) and by ``layers.conv_general_dilated`` (``ours``:
          stride phases for stems, a matrix product for 1x1 outputs, XLA's own otherwise);
  models  the input gradient of each default architecture's embedding (random images, converted
          weights when present, else random ones): the same model traced once with
          ``layers._strided_conv`` swapped for lax's convolution, once as shipped.
Every pair is checked equal first (largest difference relative to the largest gradient). The
last line holds the headline ratios as name=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core
from leam_jax.models import layers

NHWC = ("NHWC", "HWIO", "NHWC")
# (name, input side, cin, cout, kernel, stride, padding): every strided convolution of the default models.
LAYERS = (
    ("dlib_stem", 150, 3, 32, 7, 2, "VALID"),
    ("dlib_s2_down", 35, 32, 64, 3, 2, "VALID"),
    ("dlib_s3_down", 17, 64, 128, 3, 2, "VALID"),
    ("dlib_s4_down", 8, 128, 256, 3, 2, "VALID"),
    ("dlib_s5_down", 4, 256, 256, 3, 2, "VALID"),
    ("faceres_stem", 224, 3, 32, 3, 2, "SAME"),
    ("mobileface_stem", 112, 3, 32, 3, 2, ((1, 1), (1, 1))),
)
MODELS = ("dlib_resnet", "faceres", "mobileface")


def interleaved(fns: dict, repeats: int) -> dict:
    """{name: (median, min, max) ms} of ``repeats`` rounds, each calling every function once."""
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append((time.perf_counter() - t) * 1e3)
    return {k: (statistics.median(v), min(v), max(v)) for k, v in times.items()}


def rel_diff(a, b) -> float:
    return float(jnp.abs(a - b).max() / jnp.maximum(jnp.abs(a).max(), 1e-30))


def layer_row(name: str, side: int, cin: int, cout: int, k: int, s: int, pad, batch: int, repeats: int) -> float:
    """One strided convolution: lax's input gradient over ours, printed with both times."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin), jnp.float32)

    def grad_fn(conv):
        def f(x, g):
            return jax.vjp(lambda x: conv(x, w, (s, s), pad, dimension_numbers=NHWC), x)[1](g)[0]
        return core.jit(f)

    out = jax.eval_shape(lambda x: jax.lax.conv_general_dilated(x, w, (s, s), pad, dimension_numbers=NHWC), x)
    g = jnp.asarray(rng.standard_normal(out.shape), jnp.float32)
    lax_f, ours_f = grad_fn(jax.lax.conv_general_dilated), grad_fn(layers.conv_general_dilated)
    diff = rel_diff(lax_f(x, g), ours_f(x, g))
    t = interleaved({"lax": lambda: lax_f(x, g), "ours": lambda: ours_f(x, g)}, repeats)
    print(f"{name:16s} lax {t['lax'][0]:7.2f} ms ({t['lax'][1]:.2f}-{t['lax'][2]:.2f})  "
          f"ours {t['ours'][0]:7.2f} ms ({t['ours'][1]:.2f}-{t['ours'][2]:.2f})  "
          f"lax/ours {t['lax'][0] / t['ours'][0]:5.2f}  rel diff {diff:.1e}", flush=True)
    return t["lax"][0] / t["ours"][0]


def _model(name: str):
    from leam_jax import models, weights

    try:
        return weights.load(name, convert=False), "converted"
    except Exception:  # no checkpoint here: the timing does not depend on the values
        return models.random_init(name), "random"


def _input_grad_program(m, x):
    """A freshly traced (so built under whatever ``layers._strided_conv`` is now) compiled input gradient."""
    def f(p, x):
        return jax.grad(lambda x: jnp.sum(m.apply(p, x)[0]))(x)
    return core.jit(f).lower(m.params, x).compile()


def model_row(name: str, batch: int, repeats: int) -> float:
    """One model's input gradient with lax's strided convolutions over as shipped, printed."""
    m, kind = _model(name)
    x = jnp.asarray(np.random.default_rng(1).uniform(0, 255, (batch, m.input_size, m.input_size, 3)), jnp.float32)
    shipped = layers._strided_conv
    layers._strided_conv = lambda x, w, s, pads, prec: layers._lax_conv(x, w, s, pads, prec)
    try:
        lax_c = _input_grad_program(m, x)
    finally:
        layers._strided_conv = shipped
    ours_c = _input_grad_program(m, x)
    diff = rel_diff(lax_c(m.params, x), ours_c(m.params, x))
    t = interleaved({"lax": lambda: lax_c(m.params, x), "ours": lambda: ours_c(m.params, x)}, repeats)
    print(f"{name:16s} input gradient ({kind} weights): lax {t['lax'][0]:7.1f} ms "
          f"({t['lax'][1]:.1f}-{t['lax'][2]:.1f})  ours {t['ours'][0]:7.1f} ms "
          f"({t['ours'][1]:.1f}-{t['ours'][2]:.1f})  lax/ours {t['lax'][0] / t['ours'][0]:5.2f}  rel diff {diff:.1e}",
          flush=True)
    return t["lax"][0] / t["ours"][0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no_models", action="store_true", help="only the single layers")
    args = ap.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}, jax {jax.__version__}), "
          f"batch {args.batch}, median (min-max) of {args.repeats} interleaved rounds", flush=True)
    ratios = {row[0]: layer_row(*row, args.batch, args.repeats) for row in LAYERS}
    if not args.no_models:
        ratios.update({f"{name}_input_grad": model_row(name, args.batch, args.repeats) for name in MODELS})
    print(" ".join(f"{k}_lax_over_ours={v:.2f}" for k, v in ratios.items()) + f" batch={args.batch}")


if __name__ == "__main__":
    main()
