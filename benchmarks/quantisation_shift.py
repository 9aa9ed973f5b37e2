"""How far face-api's uint8 dlib ResNet (``dlib_resnet_faceapi``) moves results from dlib's float32 model (``dlib_resnet``).

    python benchmarks/quantisation_shift.py [--johns_only]

Both models are the same DlibResNet module; they differ in the weights (face-api stores
them as uint8 codes, except the conv64 filters) and in the input scale (face-api divides
by 255, dlib by 256; folded into the stem kernel). On the 52 pre-aligned dlib_johns chips:

* embeddings: max / mean |e_u8 - e_f32|, cosine and Euclidean distance between the two
  models' embeddings of the same image, split into the two causes (uint8 weights alone,
  /255 alone) by swapping the stem kernel's fold;
* verification over all pairs: dlib's rule (Euclidean distance < 0.6) decisions that flip,
  and the AUC of each model (Euclidean and cosine scores);
* LEAM (identity target, leave-one-out references, all 16 taps): the Bhattacharyya
  coefficient between the two models' overall maps of each image, per weighting. Both
  models read the same 150x150 chip, so the input frame is a common frame. For scale, the
  mean BC of dlib's own maps over same-person and different-person pairs.

Without ``--johns_only`` the verification figures are repeated on every photo of
../shared/faces (face pipeline -> the dlib150 template), as in zoo_verification.py.
Last line: name=value pairs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.face import decode
from leam_jax.models import REGISTRY
from leam_jax.study import compute
from leam_jax.weights import load

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
THRESHOLD = REGISTRY["dlib_resnet"].verify_threshold
FOLD = 256.0 / 255.0  # converters.faceapi_dlib's "fold_255_to_256"


def embed(model, params, images: np.ndarray, batch: int = 26) -> np.ndarray:
    fn = core.jit(lambda p, x: model.apply(p, x)[0])
    return np.concatenate([np.asarray(fn(params, jnp.asarray(images[i : i + batch], jnp.float32)))
                           for i in range(0, len(images), batch)])


def with_stem_scale(params, factor: float):
    """The same params with the stem kernel multiplied by ``factor`` (moves the input scale)."""
    def scale(path, leaf):
        keys = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return leaf * factor if keys[:2] == ["stem_conv", "kernel"] else leaf

    return jax.tree_util.tree_map_with_path(scale, params)


def embedding_shift(e_ref: np.ndarray, e_new: np.ndarray, persons: list[str], threshold: float) -> dict[str, float]:
    """Per-image and per-pair differences between two models' embeddings of the same images."""
    diff = np.abs(e_new - e_ref)
    unit = lambda e: e / np.linalg.norm(e, axis=1, keepdims=True)
    cos = np.sum(unit(e_ref) * unit(e_new), axis=1)
    ids = np.unique(persons, return_inverse=True)[1]
    neg_ref, same = (np.asarray(a) for a in stats.pair_scores(e_ref, ids, metric="euclidean"))  # minus the distance
    neg_new = np.asarray(stats.pair_scores(e_new, ids, metric="euclidean")[0])
    dist_ref, dist_new = -neg_ref, -neg_new
    accept_ref, accept_new = dist_ref < threshold, dist_new < threshold
    return {
        "emb_max_abs": float(diff.max()), "emb_mean_abs": float(diff.mean()),
        "cos_min": float(cos.min()), "cos_mean": float(cos.mean()),
        "dist_max": float(np.linalg.norm(e_new - e_ref, axis=1).max()),
        "pairs": int(len(same)), "flips": int((accept_ref != accept_new).sum()),
        "errors_f32": int((accept_ref != same).sum()), "errors_u8": int((accept_new != same).sum()),
        "auc_f32": float(stats.roc_auc(neg_ref, same)), "auc_u8": float(stats.roc_auc(neg_new, same)),
        "auc_cos_f32": float(stats.roc_auc(stats.pair_scores(e_ref, ids)[0], same)),
        "auc_cos_u8": float(stats.roc_auc(stats.pair_scores(e_new, ids)[0], same)),
        "pair_dist_max_change": float(np.abs(dist_new - dist_ref).max()),
        "threshold_margin_min": float(np.abs(dist_ref - threshold).min()),
    }


def johns() -> tuple[np.ndarray, list[str]]:
    items = decode.list_people(FACES / "dlib_johns")
    return np.stack([decode.read_aligned_chip(it.path, 150) for it in items]), [it.person for it in items]


def all_faces() -> tuple[np.ndarray, list[str]]:
    from leam_jax.face.pipeline import FacePipeline

    pipe = FacePipeline()
    chips, persons = [], []
    for s in ("dlib_johns", "orl_att", "wild_small"):
        for it in decode.list_people(FACES / s):
            try:
                img = decode.read_rgb(it.path)
                face = pipe.faces(img, it.path)[0]
            except decode.ImageError:
                continue
            chips.append(pipe.model_input(img, face, "dlib150")[0])
            persons.append(f"{s}/{it.person}")
    return np.stack(chips), persons


def fmt(d: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--johns_only", action="store_true", help="skip the run over every photo of ../shared/faces")
    args = ap.parse_args()
    f32, u8 = load("dlib_resnet"), load("dlib_resnet_faceapi")
    chips, persons = johns()
    print(f"dlib_johns: {len(chips)} chips, {len(set(persons))} people; threshold {THRESHOLD}")

    e32, e8 = embed(f32, f32.params, chips), embed(u8, u8.params, chips)
    shift = embedding_shift(e32, e8, persons, THRESHOLD)
    print("uint8 (face-api) vs float32 (dlib):", fmt(shift))
    # The two causes apart: face-api's weights at dlib's input scale, and dlib's weights at face-api's.
    quant_only = embed(u8, with_stem_scale(u8.params, 1 / FOLD), chips)
    scale_only = embed(f32, with_stem_scale(f32.params, FOLD), chips)
    for label, e in (("uint8 weights only (/256)", quant_only), ("/255 input scale only (float32 weights)", scale_only)):
        s = embedding_shift(e32, e, persons, THRESHOLD)
        print(f"{label}: emb_max_abs={s['emb_max_abs']:.4g} emb_mean_abs={s['emb_mean_abs']:.4g} "
              f"cos_min={s['cos_min']:.6f} flips={s['flips']} auc={s['auc_u8']:.4f}")

    figures = {k: shift[k] for k in ("emb_max_abs", "emb_mean_abs", "cos_min", "flips", "auc_f32", "auc_u8")}
    figures["emb_max_abs_quant_only"] = embedding_shift(e32, quant_only, persons, THRESHOLD)["emb_max_abs"]
    for weighting in core.WEIGHTINGS:
        t = time.perf_counter()
        m32 = compute.explain_set(compute.set_worker(f32, weighting=weighting, batch_size=26), chips, persons)
        m8 = compute.explain_set(compute.set_worker(u8, weighting=weighting, batch_size=26), chips, persons)
        bc = np.asarray(stats.bhattacharyya(jnp.asarray(m32.overall), jnp.asarray(m8.overall)))
        bc1 = np.asarray(stats.bhattacharyya(jnp.asarray(m32.overall), jnp.asarray(m8.overall), top_percent=1.0))
        layer_bc = np.asarray(stats.bhattacharyya(jnp.asarray(m32.per_layer), jnp.asarray(m8.per_layer))).mean(0)
        ref = stats.bc_same_different(jnp.asarray(m32.overall), jnp.asarray(compute.dense_ids(persons)[0]))
        worst = int(np.argmin(layer_bc))
        print(f"LEAM {weighting:8s}: BC(u8, f32) per image min {bc.min():.4f} mean {bc.mean():.4f}; top-1% BC min "
              f"{bc1.min():.4f} mean {bc1.mean():.4f}; lowest layer mean BC {layer_bc[worst]:.4f} ({m32.taps[worst]}); "
              f"dlib's own BC same-person {float(ref.mean_same):.3f} different {float(ref.mean_diff):.3f} "
              f"({time.perf_counter() - t:.0f} s)")
        figures[f"map_bc_{weighting}"] = float(bc.mean())
        figures[f"map_bc_min_{weighting}"] = float(bc.min())

    if not args.johns_only:
        t = time.perf_counter()
        chips_all, persons_all = all_faces()
        s = embedding_shift(embed(f32, f32.params, chips_all), embed(u8, u8.params, chips_all), persons_all, THRESHOLD)
        print(f"all ../shared/faces ({len(chips_all)} faces, {len(set(persons_all))} people, "
              f"{time.perf_counter() - t:.0f} s):", fmt(s))
        figures.update({f"all_{k}": s[k] for k in ("emb_max_abs", "cos_min", "flips", "auc_f32", "auc_u8")})
        figures["all_pairs"] = s["pairs"]
    print(" ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items()))


if __name__ == "__main__":
    main()
