"""The whole study's throughput and where its time goes, stage by stage, in one run.

    python benchmarks/study_throughput.py [--manifest ../shared/faces/manifest.csv] [--max_images_per_person N]
                                          [--output_dir /tmp/leam_study_bench] [--no_report]

Runs ``leam_jax.study.job.run`` exactly as ``python -m leam_jax.main`` does (default: the
built-in sample photos; every default model, weighting, occlusion percent and the
randomisation check) with timers around its stages. Device work is waited for inside each
stage, so a stage's seconds are its own; nested stages are subtracted from their parent
(the randomisation check's LEAM counts as ``sanity``, not ``leam``).

Stages: ``loader_wait`` (the sweep waiting for decode, detection, mesh, alignment and
parsing on the loader threads; their own time overlaps the device work), ``embed``,
``leam`` (every weighting and both baselines: one forward and backward pass),
``post`` (maps to the analysis frame, region statistics), ``occlusion``, ``transfer``,
``sanity``, ``tables``, ``report``, ``other`` (the rest: loading weights, shard files).
``compile_s`` is XLA's compile time summed from JAX's monitoring events; it happens inside
the stages above (a cold run compiles everything once per model). The last line holds the
headline figures.
"""

from __future__ import annotations

import argparse
import collections
import functools
import shutil
import time

import jax

from leam_jax.study import compute, config, job, loader, report, tables

SECONDS: dict[str, float] = collections.defaultdict(float)
_STACK: list[list[float]] = []  # [start, nested seconds] of the stages running now


def _stage(label: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        _STACK.append([time.perf_counter(), 0.0])
        try:
            return jax.block_until_ready(fn(*args, **kwargs))
        finally:
            start, nested = _STACK.pop()
            total = time.perf_counter() - start
            SECONDS[label] += total - nested
            if _STACK:
                _STACK[-1][1] += total
    return wrapper


def _timed_iterate(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        it = fn(*args, **kwargs)
        while True:
            t = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            finally:
                SECONDS["loader_wait"] += time.perf_counter() - t
            yield item
    return wrapper


def _instrument() -> None:
    w = compute.ModelWorker
    for label, name in (("embed", "embed"), ("leam", "maps"), ("post", "_post_batch"), ("occlusion", "occlusion"),
                        ("transfer", "transfer")):
        setattr(w, name, _stage(label, getattr(w, name)))
    job._sanity_pass = _stage("sanity", job._sanity_pass)
    tables.write_tables = _stage("tables", tables.write_tables)
    report.write_report = _stage("report", report.write_report)
    loader.Loader.iterate = _timed_iterate(loader.Loader.iterate)

    def on_duration(event: str, seconds: float, **_) -> None:
        if event.endswith("backend_compile_duration"):
            SECONDS["compile_s"] += seconds

    jax.monitoring.register_event_duration_secs_listener(on_duration)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--manifest", default="", help="a manifest CSV (default: the built-in sample photos)")
    ap.add_argument("--max_images_per_person", type=int, default=0)
    ap.add_argument("--output_dir", default="/tmp/leam_study_bench")
    ap.add_argument("--no_report", action="store_true")
    ap.add_argument("--compile_cache", default="", help="XLA cache folder (default: none, a cold run that compiles "
                    "everything; the study's own default is ~/.cache/leam_jax/xla)")
    args = ap.parse_args()

    shutil.rmtree(args.output_dir, ignore_errors=True)
    cfg = config.StudyConfig(manifest=args.manifest or None, output_dir=args.output_dir, report=not args.no_report,
                             max_images_per_person=args.max_images_per_person, compile_cache=args.compile_cache)
    _instrument()
    t = time.perf_counter()
    summary = job.run(cfg, log=lambda line: None)
    wall = time.perf_counter() - t
    staged = sum(v for k, v in SECONDS.items() if k != "compile_s")
    SECONDS["other"] = max(wall - staged, 0.0)
    print(f"{summary['images']} images, {summary['faces']} faces, models {summary['models']}, "
          f"{jax.device_count()} {jax.devices()[0].platform} device(s): {wall:.1f} s")
    for label in ("loader_wait", "embed", "leam", "post", "occlusion", "transfer", "sanity", "tables", "report",
                  "other"):
        print(f"  {label:12s} {SECONDS[label]:8.1f} s  {100 * SECONDS[label] / wall:5.1f}%")
    print(f"  of which XLA compiles: {SECONDS['compile_s']:.1f} s")
    shares = " ".join(f"{k}_share={SECONDS[k] / wall:.3f}" for k in ("leam", "occlusion", "transfer", "sanity",
                                                                       "tables", "report"))
    print(f"photos_per_s={summary['images'] / wall:.3f} faces_per_s={summary['faces'] / wall:.3f} "
          f"seconds={wall:.1f} compile_s={SECONDS['compile_s']:.1f} {shares}")


if __name__ == "__main__":
    main()
