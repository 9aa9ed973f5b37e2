"""LEAM throughput for one model, all taps, at one or several batch sizes, measured side by side.

    python benchmarks/leam_throughput.py [--model dlib_resnet] [--batches 32,256,1024] [--repeats 3]
                                         [--weights dlib|random] [--no_naive]

For each batch (random RGB 0..255 images at the model's input size, random unit
references; the timings do not depend on the values):
  fwd_bwd   one forward + backward pass to the input pixels (the lower bound);
  leam      leam_maps for all taps: one forward, one backward, maps, resize, overall;
  naive     the naive way: for each tap its own jitted forward+backward (one pass per
            tap; ``--no_naive`` skips it, and its check, for big batches).
Times are the median (and min-max) of ``--repeats`` calls after compilation and one
warm-up call, each waited for with block_until_ready. ``compile_s`` is the LEAM
program's ``lower(...).compile()`` time. ``peak_mb`` is XLA's compiled memory analysis
(arguments + outputs + temporaries) of the LEAM program; ``device_peak_mb`` is the
device allocator's high-water mark since the process started
(``memory_stats()['peak_bytes_in_use']``, GPU/TPU only, nan on CPU; it cannot be reset,
so batches run smallest first). Each batch ends with a ``batch_result`` line of
name=value pairs; the last line holds the headline figures of the best batch (the
highest LEAM images/s) plus ``images_per_s_b<B>`` for every batch. ``--weights dlib``
(the default; the name is kept for old command lines) loads the model's converted
weights, ``random`` needs none.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core

NAN = float("nan")


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    jax.block_until_ready(fn())  # compile / warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times)


def mb(m) -> float:
    """Arguments + outputs + temporaries of a compiled program's memory analysis, in MiB."""
    if m is None:
        return NAN
    return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes) / 2**20


def compile_timed(jitted, *args):
    """(compiled program, seconds to lower and compile it, its peak MiB by XLA's memory analysis)."""
    t = time.perf_counter()
    compiled = jitted.lower(*args).compile()
    return compiled, time.perf_counter() - t, mb(compiled.memory_analysis())


def device_peak_mb() -> float:
    """The first device's allocator high-water mark in MiB (nan where the backend keeps none)."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends raise instead of returning None
        stats = None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else NAN


def programs(apply, taps):
    """The three jittable functions of (params, images [B, S, S, 3], references [B, D])."""
    def fwd_bwd(p, x, r):
        return jax.grad(lambda x: jnp.sum(core.identity_score(apply(p, x)[0], r)))(x)

    def leam(p, x, r):
        return core.leam_maps(apply, p, x, target="identity", references=r, taps=taps)

    def one_tap(tap):
        def f(p, x, r):
            _, acts = apply(p, x)
            zero = jnp.zeros_like(acts[tap])
            s, vjp = jax.vjp(lambda z: core.identity_score(apply(p, x, {tap: z})[0], r), zero)
            (g,) = vjp(jnp.ones_like(s))
            m = core.resize_maps(core.layer_map(g, acts[tap], "gradcam"), x.shape[1:3])
            return core.normalize_maps(m)[0]
        return core.jit(f)

    return core.jit(fwd_bwd), core.jit(leam), [one_tap(t) for t in taps]


def inputs(batch: int, size: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = jnp.asarray(rng.integers(0, 256, (batch, size, size, 3)), jnp.float32)
    refs = core.l2_normalize(jnp.asarray(rng.standard_normal((batch, dim)), jnp.float32))
    return images, refs


def run_batch(model, batch: int, repeats: int, naive: bool) -> dict:
    """Every figure of one batch size, as a flat dict."""
    fwd_bwd, leam, naive_fns = programs(model.apply, model.taps)
    args = (model.params, *inputs(batch, model.input_size, model.embedding_dim))
    fb_c, fb_compile_s, fb_mb = compile_timed(fwd_bwd, *args)
    leam_c, compile_s, leam_mb = compile_timed(leam, *args)
    t_fb = timed(lambda: fb_c(*args), repeats)
    t_leam = timed(lambda: leam_c(*args), repeats)
    r = {"batch": batch, "fwd_bwd_ms": t_fb[0] * 1e3, "leam_ms": t_leam[0] * 1e3,
         "images_per_s": batch / t_leam[0], "images_per_s_min": batch / t_leam[2],
         "images_per_s_max": batch / t_leam[1], "leam_over_fwd_bwd": t_leam[0] / t_fb[0],
         "compile_s": compile_s, "fwd_bwd_compile_s": fb_compile_s, "peak_mb": leam_mb, "fwd_bwd_peak_mb": fb_mb,
         "naive_ms": NAN, "naive_over_leam": NAN, "naive_max_diff": NAN}
    if naive:
        t_naive = timed(lambda: [f(*args) for f in naive_fns], repeats)
        # The naive per-tap maps equal LEAM's (same numbers, many more passes).
        out = leam_c(*args)
        diff = max(float(jnp.abs(f(*args) - out.per_layer[:, i]).max()) for i, f in enumerate(naive_fns))
        r.update(naive_ms=t_naive[0] * 1e3, naive_over_leam=t_naive[0] / t_leam[0], naive_max_diff=diff)
    r["device_peak_mb"] = device_peak_mb()
    r["kb_per_image"] = leam_mb * 1024 / batch
    r["device_kb_per_image"] = r["device_peak_mb"] * 1024 / batch
    return r


def report(r: dict, taps: int) -> None:
    print(f"batch {r['batch']}:")
    print(f"  forward+backward to input: {r['fwd_bwd_ms']:9.1f} ms   peak {r['fwd_bwd_peak_mb']:8.1f} MB   "
          f"compile {r['fwd_bwd_compile_s']:6.1f} s")
    print(f"  LEAM, all {taps:2d} taps:        {r['leam_ms']:9.1f} ms   peak {r['peak_mb']:8.1f} MB   "
          f"compile {r['compile_s']:6.1f} s")
    print(f"  LEAM images/s {r['images_per_s']:.1f} (min-max {r['images_per_s_min']:.1f}-{r['images_per_s_max']:.1f}); "
          f"per image {r['kb_per_image']:.0f} KiB by XLA, {r['device_kb_per_image']:.0f} KiB by the device's "
          f"high-water mark ({r['device_peak_mb']:.1f} MB)")
    if not np.isnan(r["naive_ms"]):
        print(f"  naive, one vjp per tap:    {r['naive_ms']:9.1f} ms   "
              f"max |naive - LEAM| per-layer map difference: {r['naive_max_diff']:.2e}")
    print("batch_result " + " ".join(f"{k}={_fmt(v)}" for k, v in r.items()))


def _fmt(v) -> str:
    return str(v) if isinstance(v, int) else f"{v:.1f}" if abs(v) >= 100 else f"{v:.4g}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="dlib_resnet", help="any name in leam_jax.models.REGISTRY")
    ap.add_argument("--batch", type=int, default=32, help="one batch size (ignored when --batches is given)")
    ap.add_argument("--batches", default="", help="comma-separated batch sizes, e.g. 32,256,1024")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--weights", choices=["dlib", "random"], default="dlib",
                    help="dlib: the model's converted weights (any model); random: random init")
    ap.add_argument("--no_naive", action="store_true", help="skip the one-vjp-per-tap row")
    args = ap.parse_args()
    batches = sorted({int(b) for b in args.batches.split(",") if b.strip()} or {args.batch})

    from leam_jax import models, weights

    model = weights.load(args.model) if args.weights == "dlib" else models.random_init(args.model)
    dev = jax.devices()[0]
    print(f"device: {dev.device_kind} x{jax.device_count()} ({jax.default_backend()}, jax {jax.__version__}), "
          f"model {args.model} {model.input_size}x{model.input_size}, taps {len(model.taps)}, "
          f"weights {args.weights}, batches {batches}, median of {args.repeats}", flush=True)
    results = []
    for b in batches:
        try:
            results.append(run_batch(model, b, args.repeats, not args.no_naive))
        except Exception as e:  # e.g. out of device memory at a big batch: keep the other batches' figures
            print(f"batch {b} failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            continue
        report(results[-1], len(model.taps))
    if not results:
        raise SystemExit("every batch failed")
    best = max(results, key=lambda r: r["images_per_s"])
    per_batch = " ".join(f"images_per_s_b{r['batch']}={r['images_per_s']:.1f}" for r in results)
    print(f"leam_over_fwd_bwd={best['leam_over_fwd_bwd']:.3f} naive_over_leam={best['naive_over_leam']:.2f} "
          f"images_per_s={best['images_per_s']:.1f} peak_mb={best['peak_mb']:.1f} "
          f"fwd_bwd_ms={best['fwd_bwd_ms']:.1f} leam_ms={best['leam_ms']:.1f} naive_ms={best['naive_ms']:.1f} "
          f"batch={best['batch']} model={args.model} compile_s={best['compile_s']:.1f} "
          f"kb_per_image={best['kb_per_image']:.0f} device_peak_mb={best['device_peak_mb']:.1f} {per_batch}")


if __name__ == "__main__":
    main()
