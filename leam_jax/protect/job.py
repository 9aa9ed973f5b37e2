"""The protection run behind ``python -m leam_jax.protect``: a clean pass, a protection pass, the tables.

1. Clean pass (``shards/clean``): every photo through the face pipeline and every model, as the
   study's embedding pass. It gives the references (the unit mean of a person's *other* photos),
   the population gallery of the LEAM maps, and the thresholds.
2. Protection pass (``shards/``): for the photos chosen (``--max_protected_per_person``), the
   source models' LEAM maps (``--target``, ``--weighting``) and last-layer Grad-CAM,
   then for every variant (ensemble x mask kind x p x ε) the masked perturbation of the photo's
   face region, quantised, pasted into the photo and measured on every evaluation model (and,
   at the robustness budget, after each transform). The LEAM masks of the whole ensemble are the
   product: written as PNGs (``protected/p<p>_e<ε>/``) and measured as read back from them.
3. Tables and report (:mod:`leam_jax.protect.tables`).

Both passes are sharded by whole people and resumable (:mod:`leam_jax.study.sweep`); a photo
that cannot be read or has no face is named in ``failures.csv`` and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from leam_jax import core, protection, quality, weights
from leam_jax.batching import chunks
from leam_jax.face.pipeline import TEMPLATES, FacePipeline
from leam_jax.models import REGISTRY
from leam_jax.protect import evaluate, photos
from leam_jax.protect.config import TRANSFORMS, ProtectConfig
from leam_jax.protect.variants import Variant, budget_dir, robust, variants, written
from leam_jax.study import compute, files, inputs, schema, sweep
from leam_jax.study.loader import Loader

PIPELINE_MODELS = ("blazeface", "facemesh")
CLEAN = "clean"
NONE = "none"  # the transform of the photo as written


def output_names(sources: list[inputs.Source]) -> dict[str, str]:
    """path -> ``<person>/<file stem>.png`` (safe characters; a repeated name gets the file's digest)."""
    out, used = {}, set()
    for s in sources:
        safe = lambda t: re.sub(r"[^A-Za-z0-9._-]+", "_", t).strip("._") or "_"  # noqa: E731
        name = f"{safe(s.person)}/{safe(Path(s.path).stem)}"
        if name in used:
            name = f"{name}.{s.digest[:12]}"
        used.add(name)
        out[s.path] = name + ".png"
    return out


# ---------------------------------------------------------------------------
# The clean data: embeddings of every photo, references, galleries.


@dataclasses.dataclass
class Clean:
    paths: np.ndarray  # [N] str
    persons: np.ndarray  # [N] str
    emb: dict[str, np.ndarray]  # model -> [N, D] unit embeddings

    def __post_init__(self):
        self.index = {p: i for i, p in enumerate(self.paths.tolist())}
        uniq, ids = np.unique(self.persons, return_inverse=True)
        self._ids, self._num = ids.reshape(-1).astype(np.int32), len(uniq)
        self._refs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def refs(self, model: str) -> tuple[np.ndarray, np.ndarray]:
        """(unit mean of each photo's person's other photos [N, D], has one [N])."""
        if model not in self._refs:
            r, has = core.loo_references(self.emb[model], self._ids, num_people=self._num)
            self._refs[model] = (np.asarray(r, np.float32), np.asarray(has))
        return self._refs[model]

    def gallery(self, model: str) -> compute.Gallery:
        return compute.Gallery.from_embeddings(self.emb[model], self.persons.tolist())


def _collect_clean(stage: sweep.ShardStore, n_shards: int, models: tuple[str, ...]) -> Clean:
    parts = [stage.load(i) for i in range(n_shards)]
    parts = [a for a in parts if len(a[schema.meta("path")])]
    return Clean(np.concatenate([a[schema.meta("path")] for a in parts]),
                 np.concatenate([a[schema.meta("person")] for a in parts]),
                 {m: np.concatenate([a[f"emb/{m}"] for a in parts]) for m in models})


# ---------------------------------------------------------------------------
# The protection of one shard.


class Protector:
    """The models, the compiled protections (one per region bucket) and the per-shard work."""

    def __init__(self, cfg: ProtectConfig, models: dict, clean: Clean, pipeline: FacePipeline, out: Path,
                 names: dict[str, str], people: set[str]):
        self.people = people  # whose photos may be protected
        self.cfg, self.models, self.clean, self.pipeline, self.out, self.names = cfg, models, clean, pipeline, out, names
        self.templates = {m: REGISTRY[m].template for m in models}
        ccfg = compute.ComputeConfig(weightings=(cfg.weighting,), target=cfg.target,
                                     top_percents=(1.0,), occlusion_percents=(), occlusion_fills=(), random_seeds=1,
                                     transfer_percent=0.0, batch_size=cfg.batch_size, seed=cfg.seed)
        self.workers = {m: compute.ModelWorker(models[m], template=self.templates[m], taps=models[m].taps, config=ccfg)
                        for m in cfg.source_models}
        self.galleries = {m: clean.gallery(m) for m in cfg.source_models}
        # Each member's score in units of its spread over impostors: models whose cosines all crowd near 1
        # (dlib) count as much in the sum as models with a wide range.
        self.scale = np.array([1.0 / evaluate.impostor_spread(clean.emb[m], clean.persons) for m in cfg.source_models],
                              np.float32)
        # A member fooled with a margin stops pulling (dodging_loss's floors): below the lowest fitted
        # threshold (FAR 1e-2) by floor_margin impostor spreads, so that quantisation and mild processing
        # keep it fooled, while the steps go to the members not yet fooled.
        lowest = np.array([min(evaluate.thresholds(clean.emb[m], clean.persons).values()) for m in cfg.source_models])
        self.floors = (lowest - cfg.floor_margin / self.scale).astype(np.float32) if cfg.floor else None
        self.embedders = {m: evaluate.Embedder(models[m], self.templates[m]) for m in cfg.eval_models}
        self.variants = variants(cfg)
        self._runners: dict[int, protection.ProtectionRunner] = {}

    def runner(self, side: int) -> protection.ProtectionRunner:
        if side not in self._runners:
            srcs = [protection.SourceModel(self.models[m].apply, self.models[m].params, self.models[m].input_size,
                                           photos.model_view(self.templates[m], side))
                    for m in self.cfg.source_models]
            self._runners[side] = protection.ProtectionRunner(srcs, batch_size=self.cfg.batch_size, steps=self.cfg.steps,
                                                              optimizer=self.cfg.optimizer, eot=self.cfg.eot)
        return self._runners[side]

    def chosen(self, faces: list[photos.PhotoFace]) -> np.ndarray:
        """[n] bool: the photos to protect (the first per person, in input order; with a reference)."""
        count: dict[str, int] = {}
        out = np.zeros(len(faces), bool)
        for i, f in enumerate(faces):
            has = self.clean.refs(self.cfg.eval_models[0])[1][self.clean.index[f.path]]
            cap = self.cfg.max_protected_per_person
            if has and f.person in self.people and (cap == 0 or count.get(f.person, 0) < cap):
                out[i] = True
                count[f.person] = count.get(f.person, 0) + 1
        return out

    def frame_maps(self, faces: list[photos.PhotoFace]) -> dict[str, dict[str, np.ndarray]]:
        """model -> {weighting or ``last_layer``: [n, F, F]} for the photos given."""
        rows = np.array([self.clean.index[f.path] for f in faces])
        out = {}
        for m, wk in self.workers.items():
            t = self.templates[m]
            x = np.stack([f.crops[t] for f in faces]).astype(np.float32)
            f2m = np.stack([f.frame_to_model[t] for f in faces]).astype(np.float32)
            g = self.galleries[m]
            ids, gv = wk.gallery_inputs([f.person for f in faces], g)
            out[m] = wk.frame_maps(x, f2m, self.clean.refs(m)[0][rows], ids, gv)
        return out

    def shard(self, faces: list[photos.PhotoFace], shard_key: str) -> dict[str, np.ndarray]:
        n = len(faces)
        chosen = self.chosen(faces)
        arrays: dict[str, np.ndarray] = {"protected": chosen, "side": np.array([f.side for f in faces], np.int32),
                                         "face_px": np.array([int(f.footprint().sum()) for f in faces], np.int32)}
        rows = np.array([self.clean.index[f.path] for f in faces])
        for m in self.cfg.eval_models:
            ref = self.clean.refs(m)[0][rows]
            arrays[f"clean_cos/{m}"] = np.sum(self.clean.emb[m][rows] * ref, axis=1).astype(np.float32)
        sel = np.flatnonzero(chosen)
        if len(sel):
            maps = self.frame_maps([faces[i] for i in sel])
            by_side: dict[int, list[int]] = {}
            for j, i in enumerate(sel):
                by_side.setdefault(faces[i].side, []).append(j)
            for side, js in sorted(by_side.items()):
                for s in chunks(len(js), self.cfg.batch_size):
                    batch = js[s]
                    self._batch([faces[sel[j]] for j in batch], [int(sel[j]) for j in batch],
                                {m: {k: v[batch] for k, v in mm.items()} for m, mm in maps.items()},
                                side, arrays, n, shard_key)
        return arrays

    def _mean_map(self, maps, members, name: str, j: int) -> np.ndarray:
        """The members' mean of their normalised frame maps (each a distribution)."""
        return np.mean([maps[m][name][j] / max(float(maps[m][name][j].sum()), 1e-30) for m in members], axis=0)

    def _batch(self, faces, idx, maps, side, arrays, n, shard_key) -> None:
        cfg = self.cfg
        regions = np.stack([f.region() for f in faces]).astype(np.float32)
        rows = np.array([self.clean.index[f.path] for f in faces])
        affines = tuple(np.stack([f.model_affines[self.templates[m]] for f in faces]) for m in cfg.source_models)
        refs = tuple(self.clean.refs(m)[0][rows] for m in cfg.source_models)
        weighting = cfg.weighting
        for v in self.variants:
            masks = np.stack([photos.mask(v.kind, f, v.percent, seed=cfg.seed,
                                          leam_map=self._mean_map(maps, v.members, weighting, j),
                                          gradcam_map=self._mean_map(maps, v.members, "last_layer", j))
                              for j, f in enumerate(faces)])
            member = np.array([m in v.members for m in cfg.source_models])
            runner, t0 = self.runner(side), time.perf_counter()
            traces = runner.trace_count
            res = runner(regions, masks, affines, refs, epsilon=v.epsilon, weights=np.where(member, self.scale, 0.0),
                         floors=self.floors,
                         key=compute._key(cfg.seed, shard_key, v.key, idx[0]))
            q = np.asarray(protection.quantise(regions, res.delta, masks=masks, epsilon=v.epsilon))
            # seconds per photo of a compiled call (a call that compiled is not a measure of speed)
            seconds = (time.perf_counter() - t0) / len(faces) if runner.trace_count == traces else np.nan
            for j, f in enumerate(faces):
                self._measure(v, f, idx[j], q[j], masks[j], seconds, arrays, n)

    def _put(self, arrays, key: str, n: int, i: int, value, shape=()) -> None:
        if key not in arrays:
            arrays[key] = np.full((n, *shape), np.nan, np.float32)
        arrays[key][i] = value

    def _measure(self, v: Variant, f: photos.PhotoFace, i: int, region: np.ndarray, mask: np.ndarray,
                 seconds: float, arrays, n: int) -> None:
        """Write (the product) and measure one protected photo on every evaluation model."""
        prot = f.paste(region)
        if written(v):
            path = self.out / "protected" / budget_dir(v) / self.names[f.path]
            ok, buf = cv2.imencode(".png", cv2.cvtColor(prot, cv2.COLOR_RGB2BGR))
            path.parent.mkdir(parents=True, exist_ok=True)
            files.write_atomic(path, buf.tobytes())
            if self.cfg.jpeg:
                ok, jbuf = cv2.imencode(".jpg", cv2.cvtColor(prot, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                files.write_atomic(path.with_suffix(".jpg"), jbuf.tobytes())
            prot = evaluate.read_back(path)  # every figure of the product is measured on the written file
        x0, y0, x1, y1 = f.box
        a, b = f.photo[y0:y1, x0:x1][None], prot[y0:y1, x0:x1][None]
        self._put(arrays, f"psnr/{v.key}", n, i, float(quality.psnr(a, b)[0]))
        self._put(arrays, f"ssim/{v.key}", n, i, float(quality.ssim(a, b)[0]) if min(a.shape[1:3]) >= 11 else np.nan)
        self._put(arrays, f"seconds/{v.key}", n, i, seconds)
        self._put(arrays, f"mask_px/{v.key}", n, i, float(mask.sum()))
        diff = np.abs(prot.astype(np.int16) - f.photo.astype(np.int16)).max(axis=2)
        inside = np.zeros(diff.shape, bool)
        inside[y0:y1, x0:x1] = mask[: y1 - y0, : x1 - x0]
        self._put(arrays, f"linf/{v.key}", n, i, float(diff.max()))
        self._put(arrays, f"changed_outside/{v.key}", n, i, float(np.count_nonzero(diff[~inside])))
        views = {NONE: (prot, f.face)}
        if robust(self.cfg, v):
            for t in TRANSFORMS:
                if t == "redetect":
                    face = evaluate.redetected_face(self.pipeline, prot, f.path)
                    self._put(arrays, f"found/{v.key}", n, i, float(face is not None))
                    if face is not None:
                        views[t] = (prot, face)
                else:
                    views[t] = (evaluate.transform(prot, t), f.face)
        rows = self.clean.index[f.path]
        for m, emb in self.embedders.items():
            crops = np.stack([self.pipeline.model_input(photo, face, self.templates[m])[0]
                              for photo, face in views.values()])
            e = emb(crops)
            ref = self.clean.refs(m)[0][rows]
            for t, e_t in zip(views, e):
                self._put(arrays, f"cos/{v.key}/{t}/{m}", n, i, float(e_t @ ref))
            if robust(self.cfg, v):
                self._put(arrays, f"emb/{v.key}/{m}", n, i, e[0], shape=e[0].shape)


# ---------------------------------------------------------------------------
# The run.


def _sources(cfg: ProtectConfig):
    caps = dict(max_people=cfg.max_people, max_images_per_person=cfg.max_images_per_person)
    listed = (inputs.from_manifest(cfg.manifest, **caps) if cfg.manifest else inputs.from_data_dir(cfg.data_dir, **caps))
    return inputs.drop_duplicates(inputs.with_digests(listed, cfg.loader_threads))


def _check_models(cfg: ProtectConfig) -> tuple[str, ...]:
    names = tuple(dict.fromkeys((*cfg.source_models, *cfg.eval_models)))
    for m in names:
        if m not in REGISTRY:
            raise ValueError(f"unknown model {m!r}; known: {sorted(REGISTRY)}")
        if REGISTRY[m].template not in TEMPLATES:
            raise ValueError(f"model template {REGISTRY[m].template!r} unknown to the face pipeline")
    for m in (*names, *PIPELINE_MODELS):
        weights.check_available(m)
    return names


def settings(cfg: ProtectConfig) -> dict:
    d = dataclasses.asdict(cfg)
    for k in ("output_dir", "resume", "loader_threads", "report", "stop_after_shards", "data_dir", "manifest"):
        d.pop(k)
    return json.loads(json.dumps(d))  # as run.json holds it (tuples are lists there)


def run(cfg: ProtectConfig, log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the protection of ``cfg``; returns the summary (``summary.json``)."""
    t0 = time.perf_counter()
    cfg.validate()
    names = _check_models(cfg)
    out = Path(cfg.output_dir)
    with sweep.OutputLock(out) as lock:
        if lock.note:
            log(f"leam_jax.protect: {lock.note}")
        return _run_locked(cfg, names, out, log, t0)


def _run_locked(cfg: ProtectConfig, names, out: Path, log, t0: float) -> dict:
    from leam_jax.protect import tables  # the report's imports stay off the compute path

    sources, dropped = _sources(cfg)
    shards = sweep.plan_shards(sources, cfg.shard_size)
    store = sweep.ShardStore(out)
    store.open(sweep.fingerprint(settings(cfg), shards), resume=cfg.resume)
    whole = sweep.inputs_digest(sources)
    own = {sweep.shard_name(i): sweep.inputs_digest(s) for i, s in enumerate(shards)}
    clean_store = store.stage(CLEAN)
    clean_store.expect(own)
    store.expect({k: whole for k in own})  # references, maps and thresholds depend on every photo
    log(f"leam_jax.protect: {len(sources)} photos of {len({s.person for s in sources})} people in {len(shards)} shards")
    models = {m: weights.load(m) for m in names}
    templates = {m: REGISTRY[m].template for m in names}
    pipeline = FacePipeline()
    loader = Loader(pipeline, sorted(set(templates.values())), threads=cfg.loader_threads,
                    max_pixels=cfg.max_image_pixels)
    embedders = {m: evaluate.Embedder(models[m], templates[m]) for m in names}
    try:
        sweep.run_shards(shards, clean_store, loader.iterate,
                         lambda faces, key: {f"emb/{m}": e(np.stack([f.crops[templates[m]] for f in faces]))
                                             for m, e in embedders.items()},
                         progress=sweep.Progress(len(sources), label="photos (clean pass)"))
        clean = _collect_clean(clean_store, len(shards), names)
        loader.prepare = photos.prepare_photo
        people = list(dict.fromkeys(s.person for s in sources))
        people = set(people[: cfg.max_protected_people] if cfg.max_protected_people else people)
        protector = Protector(cfg, models, clean, pipeline, out, output_names(sources), people)
        sweep.run_shards(shards, store, loader.iterate, protector.shard,
                         progress=sweep.Progress(len(sources), label="photos (protection)"),
                         stop_after=cfg.stop_after_shards)
    finally:
        loader.close()
    if len(store.done()) < len(shards):
        return {"stopped": True}
    summary = tables.write(out, cfg, clean, store, len(shards), dropped, variants(cfg),
                           seconds=time.perf_counter() - t0)
    log(f"leam_jax.protect: done in {time.perf_counter() - t0:.0f} s; tables in {out / 'tables'}")
    return summary
