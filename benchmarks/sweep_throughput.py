"""End-to-end sweep throughput vs the LEAM kernel alone, on the same faces, side by side.

    python benchmarks/sweep_throughput.py [--images 96] [--model dlib_resnet] [--batch 32]

pipeline: the sweep as ``python -m leam_jax.main`` runs it (loader threads decode, detect,
  mesh, align and parse ahead of the device; LEAM for every tap; maps warped to the frame;
  region statistics; shard files written), occlusion and transfer off so that the device
  work is the kernel's. Timed after a warm-up shard has compiled everything.
kernel: the LeamSetRunner alone on the very same model inputs, already in memory, same batch.
pipeline_over_kernel = pipeline images/s / kernel images/s, i.e. how busy the pipeline
keeps the kernel (goal >= 0.7). The last line holds the headline figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, models, weights
from leam_jax.face.pipeline import FacePipeline
from leam_jax.study import inputs, sweep
from leam_jax.study.compute import ModelWorker, compute_shard
from leam_jax.study.config import StudyConfig
from leam_jax.study.loader import Loader

FACES = Path(os.environ.get("LEAM_JAX_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--model", default="dlib_resnet")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0, help="loader threads (0: one per CPU core)")
    args = ap.parse_args()

    manifest = FACES / "manifest.csv"
    if not manifest.is_file():
        raise SystemExit(f"needs the development faces at {FACES}")
    # Photos that need detection (wild + ORL), a shard per batch of images.
    srcs = [s for s in inputs.from_manifest(manifest) if "dlib_johns" not in s.path]
    srcs = srcs[: args.images + args.batch]
    spec = models.REGISTRY[args.model]
    mesh = core.batch_mesh()
    # identity target: the kernel half below explains the same score (population needs the run's gallery)
    cfg = StudyConfig(weightings=("gradcam",), occlusion_percents=(), occlusion_fills=(), transfer_percent=0.0,
                      batch_size=args.batch, target="identity").compute()
    worker = ModelWorker(weights.load(args.model), template=spec.template, taps=spec.taps, config=cfg, mesh=mesh)
    pipe = FacePipeline()  # one pipeline for both loaders: a new one compiles its detector and mesh anew
    loader = Loader(pipe, [spec.template], threads=args.threads, prefetch=1)
    shards = [srcs[i : i + args.batch] for i in range(0, len(srcs), args.batch)]
    seen: list = []

    def compute(faces, key):
        seen.extend(faces)
        return compute_shard([worker], faces, key, cfg)

    with tempfile.TemporaryDirectory() as tmp:
        store = sweep.ShardStore(Path(tmp))
        store.open({"settings": {}, "plan_sha256": "", "shards": len(shards)}, resume=False)
        warm = shards[:1]
        sweep.run_shards(warm, store, loader.iterate, compute)  # compiles everything
        n_warm = len(seen)
        timed = shards[1:]
        store2 = sweep.ShardStore(Path(tmp) / "timed")
        store2.open({"settings": {}, "plan_sha256": "", "shards": len(timed)}, resume=False)
        t = time.perf_counter()
        sweep.run_shards(timed, store2, loader.iterate, compute)
        pipeline_s = time.perf_counter() - t
    loader.close()
    loader2 = Loader(pipe, [spec.template], threads=args.threads, prefetch=1)
    faces = seen[n_warm:]
    images_in = sum(len(s) for s in timed)

    # The kernel alone on the same inputs (already decoded and aligned, in memory).
    x = np.stack([f.crops[spec.template] for f in faces]).astype(np.float32)
    runner = worker.runner
    emb = worker.embed(x)
    refs = jnp.asarray(np.roll(emb / np.linalg.norm(emb, axis=1, keepdims=True), 1, axis=0))
    batches = [(jnp.asarray(x[i : i + args.batch]), refs[i : i + args.batch]) for i in range(0, len(x), args.batch)]

    def kernel():
        return [runner(b, references=r) for b, r in batches]

    jax.block_until_ready(kernel())
    times = []
    for _ in range(3):
        t = time.perf_counter()
        jax.block_until_ready(kernel())
        times.append(time.perf_counter() - t)
    kernel_s = statistics.median(times)
    # Where the pipeline's time goes: the loader alone, and the shard's device work alone.
    t = time.perf_counter()
    for _ in loader2.iterate(timed):
        pass
    loader_s = time.perf_counter() - t
    loader2.close()
    t = time.perf_counter()
    for i in range(0, len(faces), args.batch):
        compute_shard([worker], faces[i : i + args.batch], f"b{i}", cfg)
    compute_s = time.perf_counter() - t
    pipe_rate = len(faces) / pipeline_s
    kern_rate = len(faces) / kernel_s
    print(f"device: {jax.devices()[0].device_kind} x{len(jax.devices())}; cpus: {os.cpu_count()}; model {args.model}, "
          f"batch {args.batch}, {len(spec.taps)} taps, loader threads {args.threads or os.cpu_count()}")
    print(f"pipeline: {images_in} images -> {len(faces)} faces in {pipeline_s:.2f} s ({pipe_rate:.2f} faces/s)")
    print(f"kernel:   {len(faces)} faces in {kernel_s:.2f} s ({kern_rate:.2f} faces/s)")
    print(f"parts alone: loader {images_in / loader_s:.2f} images/s, shard device work (LEAM + frame warps + "
          f"region stats) {len(faces) / compute_s:.2f} faces/s")
    print(f"pipeline_over_kernel={pipe_rate / kern_rate:.3f} images_per_s={pipe_rate:.2f} "
          f"kernel_images_per_s={kern_rate:.2f} loader_images_per_s={images_in / loader_s:.2f} "
          f"shard_compute_per_s={len(faces) / compute_s:.2f} faces={len(faces)}")


if __name__ == "__main__":
    main()
