"""Face pipeline throughput: the batched reader against photo-by-photo reading, side by side in one run.

    python benchmarks/face_pipeline_throughput.py [--sets wild_small] [--repeats 3] [--loops 4] [--batch_size 16]
        [--workers 2] [--also_workers 2,4]

On the photos of ../shared/faces/<set> (default wild_small), decode included in every variant:

* ``per_photo``: ``FacePipeline.read`` one photo after another on one thread (the way before batching);
* ``per_photo_threads``: the same on one thread per core (how the study's loader read photos before);
* ``batched``: ``FacePipeline.read_many`` (decode and letterbox on host threads, detector and parser
  as batched compiled calls, the mesh passes one crop per call, ``--workers`` batches at a time);
* ``batched_w<n>``: the same with ``n`` batches at a time, for each ``n`` of ``--also_workers``.

Every variant reads the photo list ``--loops`` times over in one call (wild_small has 14 photos: one
pass is a third of a second, too short to time steadily on a shared machine).

Each is timed ``--repeats`` times, round robin, after a warm-up run that compiles every batch shape;
the median and the spread (min-max) are printed. The batched results are checked against the per-photo ones (same
rejections; max differences of boxes and mesh in pixels, share of label pixels changed). Then the
per-stage cost, one thread, each stage over all photos at once: decode, letterbox, detect (network
+ NMS), mesh pass 1 and pass 2 (crop warps included), frame warp + label map; and the NMS alone on
the device (compiled, as the pipeline runs it) against the same loop in numpy on the host. The last
line holds the headline figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np

FACES = Path(os.environ.get("LEAM_JAX_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces"))


def timed(fn, repeats: int) -> tuple[float, float, float, object]:
    """(median, min, max) seconds of ``fn()`` over ``repeats`` runs, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times), max(times), out


def read_each(pipe, paths: list[str], threads: int = 1) -> list:
    from leam_jax.face import decode

    def one(path):
        try:
            return pipe.read(path)
        except decode.ImageError as e:
            return e

    if threads == 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(one, paths))


def agreement(a: list, b: list) -> dict:
    """Max differences between two runs' results (boxes, mesh, points px; share of label pixels)."""
    from leam_jax.face import decode

    out = {"rejections_differ": 0, "box_px": 0.0, "mesh_px": 0.0, "points5_px": 0.0, "labels_changed": 0.0}
    for ra, rb in zip(a, b, strict=True):
        if isinstance(ra, decode.ImageError) or isinstance(rb, decode.ImageError):
            same = isinstance(ra, decode.ImageError) and isinstance(rb, decode.ImageError) and ra.reason == rb.reason
            out["rejections_differ"] += not same
            continue
        if len(ra) != len(rb):
            out["rejections_differ"] += 1
            continue
        for fa, fb in zip(ra, rb):
            out["box_px"] = max(out["box_px"], float(np.abs(fa.box - fb.box).max()))
            out["mesh_px"] = max(out["mesh_px"], float(np.abs(fa.mesh[:, :2] - fb.mesh[:, :2]).max()))
            out["points5_px"] = max(out["points5_px"], float(np.abs(fa.points5 - fb.points5).max()))
            out["labels_changed"] = max(out["labels_changed"], float(np.mean(fa.labels != fb.labels)))
    return out


def host_nms(regressors: np.ndarray, logits: np.ndarray, anchors: np.ndarray, *, min_score: float, iou: float,
             max_detections: int) -> list[np.ndarray]:
    """MediaPipe's weighted NMS in numpy over each image's candidates (the host alternative, timed only)."""
    out = []
    for reg, logit in zip(regressors, logits):
        score = 1.0 / (1.0 + np.exp(-np.clip(logit[:, 0], -80.0, 80.0)))  # exp(80) fits float32
        keep = np.flatnonzero(score >= min_score)
        centre, half = reg[keep, :2] + anchors[keep], reg[keep, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], 1)
        locs = np.concatenate([boxes, (reg[keep, 4:].reshape(-1, 6, 2) + anchors[keep, None]).reshape(-1, 12)], 1)
        area = np.prod(np.clip(boxes[:, 2:] - boxes[:, :2], 0, None), 1)
        s, active, found = score[keep], np.ones(len(keep), bool), []
        while active.any() and len(found) < max_detections:
            top = int(np.argmax(np.where(active, s, -np.inf)))
            inter = np.prod(np.clip(np.minimum(boxes[top, 2:], boxes[:, 2:]) - np.maximum(boxes[top, :2], boxes[:, :2]), 0, None), 1)
            union = area[top] + area - inter
            members = active & (np.where(union > 0, inter / np.where(union > 0, union, 1), 0) > iou)
            w = np.where(members, s, 0.0)
            found.append(np.concatenate([(w[:, None] * locs).sum(0) / w.sum(), [s[top]]]))
            active &= ~members
        out.append(np.array(found))
    return out


def stages(pipe, paths: list[str], repeats: int) -> dict[str, float]:
    """Median ms per photo of each stage on one thread, every stage over all photos at once."""
    from leam_jax import batching
    from leam_jax.face import decode, detection, pipeline

    per = {}

    def stage(name, fn):
        med, _, _, out = timed(fn, repeats)
        per[name] = 1e3 * med / len(paths)
        return out

    images = stage("decode", lambda: [decode.read_rgb(p) for p in paths])
    boxed = stage("letterbox", lambda: [detection.letterbox(im) for im in images])
    found = stage("detect", lambda: pipe._detect_letterboxed(boxed))
    jobs = [(im, f[0]) for im, f in zip(images, found) if pipe._usable(f)]
    first = stage("mesh1", lambda: pipe._mesh_many([(im, *pipeline._pass1_crop(d.box, d.keypoints[:2])) for im, d in jobs]))
    second = stage("mesh2", lambda: pipe._mesh_many([(im, *pipeline._pass2_crop(m)) for (im, _), (m, _) in zip(jobs, first)]))
    fits = [(im, p, [(d, m, s)]) for (im, d), (m, s), p in zip(jobs, second, paths)]
    stage("warp_labels", lambda: pipe._align_many(fits))

    # NMS alone: compiled on the device (as the pipeline runs it) vs numpy on the host.
    canvases = np.stack([c for c, _ in boxed])
    kw = dict(min_score=pipe.min_score, iou=detection.IOU_THRESHOLD, max_detections=detection.MAX_DETECTIONS)
    reg, logits = detection.run_network(pipe.det_apply, pipe.det_params, detection.preprocess(canvases),
                                        batch_size=pipe.batch_size)
    nms = jax.jit(detection._nms_all, static_argnames=("min_score", "iou_threshold", "max_detections"))
    dkw = dict(min_score=kw["min_score"], iou_threshold=kw["iou"], max_detections=kw["max_detections"])
    rows = np.concatenate([reg, logits], -1)  # one array, so run_bucketed pads both alike
    device = lambda: batching.run_bucketed(lambda r: nms(r[..., :-1], r[..., -1:], **dkw), rows, pipe.batch_size)  # noqa: E731
    device()
    stage("nms_device", device)
    stage("nms_host", lambda: host_nms(reg, logits, detection.anchors(), **kw))
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", default="wild_small", help="comma-separated folders of ../shared/faces")
    ap.add_argument("--faces", type=Path, default=FACES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch_size", type=int, default=0, help="rows per compiled call (0: FacePipeline's default)")
    ap.add_argument("--workers", type=int, default=0, help="batches read_many works on at once (0: its default)")
    ap.add_argument("--threads", type=int, default=0, help="decode threads of read_many (0: one per core)")
    ap.add_argument("--loops", type=int, default=4, help="times the photo list is read in each timed call")
    ap.add_argument("--also_workers", default="", help="comma-separated other worker counts, timed side by side")
    args = ap.parse_args()

    from leam_jax.face import decode, pipeline
    from leam_jax.face.pipeline import FacePipeline

    paths = [it.path for s in args.sets.split(",") for it in decode.list_people(args.faces / s)]
    if not paths:
        raise SystemExit(f"no photos under {args.faces} for sets {args.sets}")
    paths = paths * max(1, args.loops)
    pipe = FacePipeline(**({"batch_size": args.batch_size} if args.batch_size else {}))
    workers = args.workers or pipeline.WORKERS
    cores = os.cpu_count() or 1
    variants = {
        "per_photo": lambda: read_each(pipe, paths),
        "per_photo_threads": lambda: read_each(pipe, paths, threads=cores),
        "batched": lambda: pipe.read_many(paths, threads=args.threads, workers=workers),
    }
    for n in sorted({int(w) for w in args.also_workers.split(",") if w.strip()} - {workers}):
        variants[f"batched_w{n}"] = lambda n=n: pipe.read_many(paths, threads=args.threads, workers=n)
    t = time.perf_counter()
    results = {name: fn() for name, fn in variants.items()}  # warm-up: compiles every batch shape used
    print(f"{len(paths)} photos of {args.sets}; warm-up (compiles) {time.perf_counter() - t:.1f} s; "
          f"batch_size {pipe.batch_size}, workers {workers}, {cores} cores, backend {jax.default_backend()}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # round robin, so that drift in the machine's load hits every variant alike
        for name, fn in variants.items():
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
    rates = {}
    for name, ts in times.items():
        rates[name] = len(paths) / statistics.median(ts)
        print(f"  {name:18s} {rates[name]:6.1f} photos/s  (median of {args.repeats}; "
              f"{len(paths) / max(ts):.1f}-{len(paths) / min(ts):.1f})")
    agree = agreement(results["per_photo"], results["batched"])
    print("batched vs per photo: " + ", ".join(f"{k} {v:.3g}" for k, v in agree.items()))
    extra = [name for name in variants if name.startswith("batched_w")]
    for name in extra:
        print(f"{name} vs per photo: " + ", ".join(f"{k} {v:.3g}" for k, v in agreement(results["per_photo"], results[name]).items()))
    per = stages(pipe, paths, args.repeats)
    print("per stage, one thread, ms/photo: " + ", ".join(f"{k} {v:.2f}" for k, v in per.items()))
    print(f"batched_photos_per_s={rates['batched']:.2f} per_photo_photos_per_s={rates['per_photo']:.2f} "
          f"per_photo_threads_photos_per_s={rates['per_photo_threads']:.2f} "
          f"speedup={rates['batched'] / rates['per_photo']:.2f} max_mesh_diff_px={agree['mesh_px']:.3g} "
          f"max_box_diff_px={agree['box_px']:.3g} rejections_differ={agree['rejections_differ']} "
          + "".join(f"{name}_photos_per_s={rates[name]:.2f} " for name in extra)
          + f"photos={len(paths)} loops={args.loops} repeats={args.repeats} batch_size={pipe.batch_size} workers={workers}")


if __name__ == "__main__":
    main()
