"""The batch job behind ``python -m leam_jax.main`` (no flag parsing here)."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from leam_jax import data, models
from leam_jax.batching import batched

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "faces" / "dlib_johns"


@dataclasses.dataclass(frozen=True)
class JobConfig:
    models: tuple[str, ...] = ("dlib_resnet",)
    data_dir: str | None = None
    output_dir: Path = Path("runs/default")
    batch_size: int = 32
    max_people: int = 0
    max_images_per_person: int = 0
    seed: int = 0


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run(config: JobConfig, log: Callable[[str], None] = print) -> dict:
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_dir = config.data_dir
    if data_dir is None and DEFAULT_DATA_DIR.is_dir():
        data_dir = str(DEFAULT_DATA_DIR)
    summary: dict = {"data_dir": data_dir, "models": {}, "failures": 0}
    failures: list[tuple[str, str]] = []
    t0 = time.perf_counter()
    for name in config.models:
        model = models.load(name)
        size = model.input_size
        if data_dir is not None:
            items = data.list_people(data_dir, max_people=config.max_people,
                                     max_images_per_person=config.max_images_per_person)
            chips, kept = [], []
            for item in items:
                try:
                    chips.append(data.read_aligned_chip(item.path, size))
                    kept.append(item)
                except data.ImageError as e:
                    if name == config.models[0]:
                        failures.append((e.path, e.reason))
                    log(f"skipped {e}")
            images = np.stack(chips) if chips else np.zeros((0, size, size, 3), np.uint8)
            persons = [it.person for it in kept]
            paths = [it.path for it in kept]
        else:
            log(f"no --data_dir and no {DEFAULT_DATA_DIR}: running a smoke test on 8 noise chips")
            rng = np.random.default_rng(config.seed)
            images = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
            persons = [f"noise{i}" for i in range(8)]
            paths = [f"<noise:{i}>" for i in range(8)]
        embed = jax.jit(lambda x, m=model: m.apply(m.params, x)[0])
        t_model = time.perf_counter()
        emb = batched(embed, images, config.batch_size) if len(images) else np.zeros((0, model.embedding_dim))
        elapsed = time.perf_counter() - t_model
        np.savez_compressed(out_dir / f"embeddings_{name}.npz", embeddings=emb.astype(np.float32),
                            persons=np.array(persons), paths=np.array(paths))
        stats = _verification(emb, persons, models.REGISTRY[name].verify_threshold)
        stats.update(images=len(images), people=len(set(persons)), seconds=round(elapsed, 3))
        summary["models"][name] = stats
    summary["failures"] = len(failures)
    with open(out_dir / "failures.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "reason"])
        w.writerows(failures)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    _write_atomic(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    lines = [f"leam_jax: data {data_dir or '<built-in noise chips>'}"]
    for name, s in summary["models"].items():
        acc = "n/a" if s["pair_accuracy"] is None else f"{s['pair_accuracy']:.4f}"
        lines.append(
            f"  {name}: embedded {s['images']} images of {s['people']} people in {s['seconds']} s; "
            f"{s['same_pairs']} same / {s['diff_pairs']} different pairs, accuracy at threshold "
            f"{s['threshold']}: {acc}; mean distance same {s['mean_dist_same']} vs different {s['mean_dist_diff']}"
        )
    lines.append(f"  rejected inputs: {len(failures)} (failures.csv); outputs in {out_dir.resolve()}")
    summary["report"] = "\n".join(lines)
    return summary


def _verification(emb: np.ndarray, persons: list[str], threshold: float | None) -> dict:
    n = len(persons)
    if n < 2:
        return {"threshold": threshold, "same_pairs": 0, "diff_pairs": 0, "pair_accuracy": None,
                "mean_dist_same": None, "mean_dist_diff": None}
    dist = np.linalg.norm(emb[:, None] - emb[None], axis=-1)
    iu = np.triu_indices(n, 1)
    same = (np.array(persons)[:, None] == np.array(persons)[None])[iu]
    d = dist[iu]
    acc = None if threshold is None else float(((d < threshold) == same).mean())

    def mean(x):
        return None if x.size == 0 else round(float(x.mean()), 4)

    return {"threshold": threshold, "same_pairs": int(same.sum()), "diff_pairs": int((~same).sum()),
            "pair_accuracy": acc, "mean_dist_same": mean(d[same]), "mean_dist_diff": mean(d[~same])}
