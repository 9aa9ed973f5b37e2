"""Verification quality of every real registry model over all pairs of ../shared/faces.

    python benchmarks/zoo_verification.py

Every photo goes through the face pipeline (detect -> mesh -> align) into each
model's own template; pre-aligned dlib chips go through it too (no hints).
Reports AUC and TAR at FAR 1% (cosine similarity) per model, dlib as the
yardstick. Last line: name=value pairs.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.face import decode
from leam_jax.face.pipeline import FacePipeline
from leam_jax.models import REGISTRY
from leam_jax.weights import load

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"


def main() -> None:
    pipe = FacePipeline()
    names = sorted(n for n, s in REGISTRY.items() if s.weights_here)
    items = [it for s in ("dlib_johns", "orl_att", "wild_small") for it in decode.list_people(FACES / s)]
    faces, images, persons = [], [], []
    t0 = time.perf_counter()
    for it in items:
        try:
            img = decode.read_rgb(it.path)
            faces.append(pipe.faces(img, it.path)[0])
            images.append(img)
            persons.append(f"{Path(it.path).parts[-3]}/{it.person}")
        except decode.ImageError:
            pass
    print(f"{len(faces)}/{len(items)} faces aligned in {time.perf_counter() - t0:.1f} s; "
          f"{len(set(persons))} people")
    figures = []
    for name in names:
        spec = REGISTRY[name]
        model = load(name)
        embed = core.jit(lambda x, m=model: m.apply(m.params, x)[0])
        crops = np.stack([pipe.model_input(img, f, spec.template)[0] for img, f in zip(images, faces)])
        emb = np.concatenate([np.asarray(embed(jnp.asarray(crops[i : i + 32], jnp.float32)))
                              for i in range(0, len(crops), 32)])
        s, same = stats.pair_scores(emb, np.unique(persons, return_inverse=True)[1])
        auc, tar = float(stats.roc_auc(s, same)), float(stats.tar_at_far(s, same, 0.01))
        print(f"{name:14s} template {spec.template:10s} AUC {auc:.4f}  TAR@FAR1% {tar:.4f}  ({same.sum()} same / {(~same).sum()} different pairs)")
        figures.append(f"auc_{name}={auc:.4f} tar1_{name}={tar:.4f}")
    print(" ".join(figures) + f" faces={len(faces)}")


if __name__ == "__main__":
    main()
