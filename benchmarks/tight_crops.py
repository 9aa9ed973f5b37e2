"""Tight face crops (LFW-style, the face filling the frame): detection rate and landmark accuracy.

    .venv/bin/python benchmarks/tight_crops.py [--max_photos N] [--sizes 100,112] [--margin 1.0]
        [--sweep_pad 0.25,0.5,0.75,1.0,1.25,1.5] [--sweep_crop_scale 1.0,1.25,1.5,1.75,2.0]

For every photo of ../shared/faces/manifest.csv (or $LEAM_JAX_FACES): the pipeline without the padded
retry (the old behaviour) on the full photo gives the reference mesh (photos without a face there are
skipped and counted). The tight crop is the square around the reference mesh's extent (all 468 points;
side = ``--margin`` x the longer extent, centred on the extent's box; beyond the photo, edge pixels are
replicated), resized to each size with cv2.INTER_AREA. Each crop goes through

* ``old``: ``FacePipeline(pad_retry=False)``, one detector pass;
* ``new``: the default ``FacePipeline()``, with the padded retry when no usable face is found;
* ``crop``: ``faces(..., crop=True)``, no detector, the mesh from the whole image.

Landmark error: eye centres and nose tip (``mesh_points5`` 0, 1, 2) against the reference mapped into
the crop, in crop pixels and in % of the reference inter-ocular distance (IOD) in the crop ("eye" pools
both eyes; the name=value line gives fractions). Tables come twice: over all references, and over the
trusted ones (full-photo ``mesh_score`` >= 0.5; below, the mesh network itself doubts the reference, and
a crop around a doubtful mesh may not frame the face). Baselines: ``full photo, face S px``, the whole
photo scaled so the face extent is S pixels (what the resolution alone costs), and ``full photo, 1 px
shift`` (the mesh's own jitter). Optional sweeps (the measurements behind ``PAD_RETRY_FRACTION`` and
``CROP_MODE_SCALE``): detection with the retry at other border fractions and border modes, and crop mode
at other pass-1 scales. Runs on the CPU in about 4 minutes (466 photos, two sizes), 10-15 with the sweeps.
Last line: name=value pairs.
"""

from __future__ import annotations

import argparse
import collections
import csv
import os
import time
from pathlib import Path

import cv2
import numpy as np

from leam_jax.face import decode, detection
from leam_jax.face import pipeline as pipeline_mod
from leam_jax.face.pipeline import FacePipeline, mesh_points5

FACES = Path(os.environ.get("LEAM_JAX_FACES", Path(__file__).resolve().parents[2] / "shared" / "faces"))
BORDERS = {"constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE, "reflect": cv2.BORDER_REFLECT_101}


def tight_crop(image: np.ndarray, mesh: np.ndarray, size: int, margin: float = 1.0) -> tuple[np.ndarray, np.ndarray, bool]:
    """(size x size crop of the square around the mesh's extent, [2, 3] image px -> crop px, crossed the border)."""
    xy = np.asarray(mesh)[:, :2]
    lo, hi = xy.min(0), xy.max(0)
    side = max(int(round(margin * (hi - lo).max())), 1)
    x0, y0 = (np.round((lo + hi) / 2 - side / 2)).astype(int)
    h, w = image.shape[:2]
    pad = max(0, -x0, -y0, x0 + side - w, y0 + side - h)
    src = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE) if pad else image
    crop = cv2.resize(src[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side], (size, size), interpolation=cv2.INTER_AREA)
    k = size / side  # cv2.resize maps pixel centres: u = (x - x0 + 0.5) * k - 0.5
    return crop, np.array([[k, 0.0, (0.5 - x0) * k - 0.5], [0.0, k, (0.5 - y0) * k - 0.5]]), pad > 0


def scaled_photo(image: np.ndarray, mesh: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(the whole photo scaled so the mesh extent is ``size`` px, [2, 3] image px -> scaled px)."""
    xy = np.asarray(mesh)[:, :2]
    f = size / float((xy.max(0) - xy.min(0)).max())
    h, w = image.shape[:2]
    nw, nh = max(1, round(w * f)), max(1, round(h * f))
    kx, ky = nw / w, nh / h
    out = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]])


def _apply(a: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return np.asarray(pts, np.float64) @ a[:, :2].T + a[:, 2]


def landmark_errors(mesh: np.ndarray, ref5: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(pixel, IOD-relative) distances of eye centres and nose tip [3] to the reference 5 points (same pixels)."""
    d = np.linalg.norm(mesh_points5(mesh)[:3] - ref5[:3], axis=1)
    return d, d / np.linalg.norm(ref5[1] - ref5[0])


def _try(pipe: FacePipeline, image: np.ndarray, path: str, **kw):
    """The first face (AlignedFace), or None when the pipeline rejects the image."""
    try:
        return pipe.faces(image, path, **kw)[0]
    except decode.ImageError:
        return None


class Tally:
    """Attempts, finds and landmark errors of one (size, mode), by photo."""

    def __init__(self):
        self.tried, self.errors, self.scores = [], {}, {}  # errors: key -> (px [3], IOD fraction [3])

    def add(self, key, face, ref5, shift=(0.0, 0.0)):
        self.tried.append(key)
        if face is not None:
            self.errors[key] = landmark_errors(face.mesh[:, :2] + np.asarray(shift), ref5)
            self.scores[key] = face.mesh_score

    def stats(self, keys=None) -> dict:
        tried = [k for k in self.tried if keys is None or k in keys]
        found = [k for k in tried if k in self.errors]
        px = np.array([self.errors[k][0] for k in found]).reshape(-1, 3)
        iod = np.array([self.errors[k][1] for k in found]).reshape(-1, 3)
        q = lambda a: (np.median(a), np.percentile(a, 90)) if a.size else (np.nan, np.nan)  # noqa: E731
        return {"tried": len(tried), "found": len(found), "eye_px": q(px[:, :2]), "eye_iod": q(iod[:, :2]),
                "nose_px": q(px[:, 2]), "nose_iod": q(iod[:, 2])}


def _row(label: str, t: Tally, keys=None) -> str:
    s = t.stats(keys)
    found = f"{s['found']:>4}/{s['tried']:<4} {s['found'] / max(s['tried'], 1):6.1%}"
    f = lambda p, k=1.0: f"{k * p[0]:6.2f} {k * p[1]:6.2f}"  # noqa: E731
    return (f"  {label:<24} {found:<17} {f(s['eye_px'])}   {f(s['eye_iod'], 100)}   {f(s['nose_px'])}   "
            f"{f(s['nose_iod'], 100)}")


HEADER = (f"  {'mode':<24} {'found':<17} {'eye px':>13}   {'eye %IOD':>13}   {'nose px':>13}   {'nose %IOD':>13}\n"
          f"  {'':<24} {'':<17} {'med    p90':>13}   {'med    p90':>13}   {'med    p90':>13}   {'med    p90':>13}")


def pad_sweep(pipe: FacePipeline, crops: list[np.ndarray], old_found: np.ndarray, fractions: list[float]) -> dict:
    """Detection rate (old pass, else one padded retry) per (border mode, fraction of the long side)."""
    out = {}
    for name, mode in BORDERS.items():
        for frac in fractions:
            padded = [cv2.copyMakeBorder(c, *[int(round(frac * max(c.shape[:2])))] * 4, mode, value=0) for c in crops]
            dets = detection.detect_many(pipe.det_apply, pipe.det_params, padded, min_score=pipe.min_score)
            retry = np.array([bool(pipe._usable(d)) for d in dets])
            out[(name, frac)] = float(np.mean(old_found | retry))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--faces", type=Path, default=FACES)
    ap.add_argument("--max_photos", type=int, default=0, help="cap on photos (0: all)")
    ap.add_argument("--sizes", default="100,112")
    ap.add_argument("--margin", type=float, default=1.0, help="crop side / the mesh extent's longer side")
    ap.add_argument("--sweep_pad", default="", help="border fractions for the padded-retry sweep (empty: none)")
    ap.add_argument("--sweep_crop_scale", default="", help="crop-mode pass-1 scales to sweep (empty: none)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.perf_counter()

    rows = list(csv.DictReader(open(args.faces / "manifest.csv")))
    if args.max_photos:
        rows = rows[:args.max_photos]
    old, new = FacePipeline(pad_retry=False), FacePipeline()
    tallies = collections.defaultdict(Tally)
    refs, trusted, full_new_found, crossed = {}, set(), 0, 0
    crops = {s: [] for s in sizes}
    for r in rows:
        key, image = r["path"], decode.read_rgb(args.faces / r["path"])
        ref = _try(old, image, key)
        full_new_found += _try(new, image, key) is not None
        if ref is None:
            continue
        refs[key] = ref.mesh
        if ref.mesh_score >= 0.5:
            trusted.add(key)
        ref5 = mesh_points5(ref.mesh)
        tallies["full", "shift"].add(key, _try(old, image[1:, 1:], key), ref5, shift=(1.0, 1.0))
        for s in sizes:
            crop, to_crop, out = tight_crop(image, ref.mesh, s, args.margin)
            crossed += out
            ref5c = _apply(to_crop, ref5)
            crops[s].append((key, crop, ref5c))
            for mode, pipe, kw in (("old", old, {}), ("new", new, {}), ("crop", new, {"crop": True})):
                tallies[s, mode].add(key, _try(pipe, crop, key, **kw), ref5c)
            small, to_small = scaled_photo(image, ref.mesh, s)
            tallies[s, "full"].add(key, _try(old, small, key), _apply(to_small, ref5))
    wall = time.perf_counter() - t0

    n, n_ref = len(rows), len(refs)
    print(f"photos {n}; reference mesh on the full photo (pad_retry=False) for {n_ref}, no face in {n - n_ref}; "
          f"with the padded retry the full photos give {full_new_found}/{n}")
    print(f"trusted references (full-photo mesh_score >= 0.5): {len(trusted)}/{n_ref}")
    print(f"tight crops: square around the reference mesh's extent x {args.margin}; {crossed} of {n_ref * len(sizes)} "
          "crossed the photo's border (edge pixels replicated); cv2.INTER_AREA")
    print(HEADER)
    print(_row("full photo, 1 px shift", tallies["full", "shift"]))
    kv = {"photos": n, "ref_missing": n - n_ref, "ref_untrusted": n_ref - len(trusted)}
    for s in sizes:
        t = {m: tallies[s, m] for m in ("full", "old", "new", "crop")}
        retried = set(t["new"].errors) - set(t["old"].errors)
        for title, keys in (("all references", None), ("trusted references", trusted)):
            print(f" {s}x{s}, {title}")
            print(_row(f"full photo, face {s}px", t["full"], keys))
            for m in ("old", "new", "crop"):
                print(_row(m, t[m], keys))
            sub = retried if keys is None else retried & keys
            print(_row("new: found by retry only", t["new"], sub))
            print(_row("crop: the same crops", t["crop"], sub))
        low = {m: [k for k, v in t[m].scores.items() if v < 0.5] for m in ("old", "new", "crop")}
        print(f" {s}x{s}, found faces whose mesh_score < 0.5 (median eye error %IOD): " + ", ".join(
            f"{m} {len(v)} ({100 * t[m].stats(set(v))['eye_iod'][0]:.1f})" for m, v in low.items()))
        for m in ("old", "new", "crop"):
            st = t[m].stats()
            kv[f"found_{m}_{s}"] = round(st["found"] / max(st["tried"], 1), 4)
        for m in ("full", "new", "crop"):
            st, tr = t[m].stats(), t[m].stats(trusted)
            kv[f"eye_err_iod_med_{m}_{s}"] = round(st["eye_iod"][0], 4)
            kv[f"eye_err_iod_p90_{m}_{s}"] = round(st["eye_iod"][1], 4)
            kv[f"nose_err_iod_med_{m}_{s}"] = round(st["nose_iod"][0], 4)
            kv[f"eye_err_iod_p90_{m}_{s}_trusted"] = round(tr["eye_iod"][1], 4)
    kv["wall_s"] = round(wall, 1)

    if args.sweep_pad:
        fractions = [float(f) for f in args.sweep_pad.split(",")]
        print("padded-retry sweep: detection rate (old pass, else one retry) by border mode and fraction of the long side")
        for s in sizes:
            old_found = np.array([k in tallies[s, "old"].errors for k, _, _ in crops[s]])
            rates = pad_sweep(new, [c for _, c, _ in crops[s]], old_found, fractions)
            for name in BORDERS:
                print(f"  {s}x{s} {name:<10} " + "  ".join(f"{f}: {rates[name, f]:.2%}" for f in fractions))
    if args.sweep_crop_scale:
        print("crop-mode sweep: pass-1 mesh crop side / image side (all references, then trusted)")
        print(HEADER)
        keep = pipeline_mod.CROP_MODE_SCALE
        try:
            for scale in (float(x) for x in args.sweep_crop_scale.split(",")):
                pipeline_mod.CROP_MODE_SCALE = scale
                for s in sizes:
                    t = Tally()
                    for key, crop, ref5c in crops[s]:
                        t.add(key, _try(new, crop, key, crop=True), ref5c)
                    print(_row(f"{s}x{s} scale {scale}", t))
                    print(_row(f"{s}x{s} scale {scale} trusted", t, trusted))
        finally:
            pipeline_mod.CROP_MODE_SCALE = keep
    print(" ".join(f"{k}={v}" for k, v in kv.items()))


if __name__ == "__main__":
    main()
