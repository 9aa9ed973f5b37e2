"""LEAM throughput on the dlib ResNet, batch 32, all 16 taps, measured side by side.

    python benchmarks/leam_throughput.py [--batch 32] [--repeats 3] [--weights random|dlib]

Times (median of repeats, after compilation, block_until_ready):
  fwd_bwd   one forward + backward pass to the input pixels (the lower bound);
  leam      leam_maps for all taps: one forward, one backward, maps, resize, overall;
  naive     the naive way: for each tap its own jitted forward+backward (16 passes).
Peak memory is XLA's compiled memory analysis (arguments + outputs + temporaries)
of each program. The last line holds the headline figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core


def timed(fn, repeats: int) -> float:
    fn()  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_mb(jitted, *args) -> float:
    m = jitted.lower(*args).compile().memory_analysis()
    if m is None:
        return float("nan")
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", choices=["dlib", "random"], default="dlib")
    args = ap.parse_args()

    from leam_jax import models, weights

    model = weights.load("dlib_resnet") if args.weights == "dlib" else models.random_init("dlib_resnet")
    apply, params, taps = model.apply, model.params, model.taps
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.integers(0, 256, (args.batch, 150, 150, 3)), jnp.float32)
    emb = core.jit(lambda x: apply(params, x)[0])(images)
    refs = core.l2_normalize(jnp.roll(emb, 1, axis=0))

    def score(e):
        return core.identity_score(e, refs)

    fwd_bwd = core.jit(lambda p, x: jax.grad(lambda x: jnp.sum(score(apply(p, x)[0])))(x))

    leam_jit = core.jit(lambda p, x: core.leam_maps(apply, p, x, target="identity", references=refs, taps=taps))

    def one_tap(tap):
        def f(p, x):
            _, acts = apply(p, x)
            zero = jnp.zeros_like(acts[tap])
            s, vjp = jax.vjp(lambda z: score(apply(p, x, {tap: z})[0]), zero)
            (g,) = vjp(jnp.ones_like(s))
            m = core.resize_maps(core.layer_map(g, acts[tap], "gradcam"), x.shape[1:3])
            return core.normalize_maps(m)[0]
        return core.jit(f)

    naive_fns = [one_tap(t) for t in taps]

    t_fb = timed(lambda: fwd_bwd(params, images), args.repeats)
    t_leam = timed(lambda: leam_jit(params, images), args.repeats)
    t_naive = timed(lambda: [f(params, images) for f in naive_fns], args.repeats)
    mem_leam = peak_mb(leam_jit, params, images)
    mem_fb = peak_mb(fwd_bwd, params, images)

    # The naive per-tap maps equal LEAM's (same numbers, many more passes).
    out = leam_jit(params, images)
    diff = max(float(jnp.abs(f(params, images) - out.per_layer[:, i]).max()) for i, f in enumerate(naive_fns))

    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, batch {args.batch}, taps {len(taps)}, "
          f"weights {args.weights}, median of {args.repeats}")
    print(f"forward+backward to input: {t_fb * 1e3:8.1f} ms   peak {mem_fb:7.1f} MB")
    print(f"LEAM, all {len(taps)} taps:       {t_leam * 1e3:8.1f} ms   peak {mem_leam:7.1f} MB")
    print(f"naive, one vjp per tap:    {t_naive * 1e3:8.1f} ms")
    print(f"max |naive - LEAM| per-layer map difference: {diff:.2e}")
    print(f"leam_over_fwd_bwd={t_leam / t_fb:.3f} naive_over_leam={t_naive / t_leam:.2f} "
          f"images_per_s={args.batch / t_leam:.1f} peak_mb={mem_leam:.1f} fwd_bwd_ms={t_fb * 1e3:.1f} "
          f"leam_ms={t_leam * 1e3:.1f} naive_ms={t_naive * 1e3:.1f} batch={args.batch}")


if __name__ == "__main__":
    main()
