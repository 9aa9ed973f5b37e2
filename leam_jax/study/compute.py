"""Everything a sweep computes for one shard of faces, for every model (device work).

A :class:`ModelWorker` is the one driver of a model's work: it places the
params on the devices once and holds the compiled functions (embedding, LEAM
of every weighting and the two baselines from one pass through
:class:`leam_jax.core.LeamSetRunner`, occlusion), all over fixed ``[batch_size]`` shapes sharded along the batch
axis, so a sweep compiles once per model. Results are keyed by
:mod:`leam_jax.study.schema`.

Targets: ``identity`` explains each face against the leave-one-out mean of its
person's other faces (:func:`leam_jax.core.loo_references`; faces of a person
never straddle shards, so this equals the dataset-wide reference) and falls
back to ``self`` for a person with one face; ``self`` explains every face
against itself. ``population`` and ``identification`` also score against every
person of the run: the sweep's embedding pass builds the :class:`Gallery`
first. Occlusion measures ``Δcos = cos(e(x), r) - cos(e(x_occ), r)`` with the
leave-one-out ``r`` (the clean embedding itself where there is none).
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.batching import Placement, chunks
from leam_jax.face import alignment, regions
from leam_jax.study import schema
from leam_jax.study.loader import FaceInput

FRAME = alignment.ANALYSIS_SIZE
LAYER_GRID = 128  # per-layer maps are warped onto this grid of the frame, then pooled


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    """The device-side settings of a sweep (built from the study's config, which holds the defaults)."""

    weightings: tuple[str, ...]
    target: str  # a sweep target (config.SWEEP_TARGETS)
    top_percents: tuple[float, ...]
    occlusion_percents: tuple[float, ...]
    occlusion_fills: tuple[str, ...]
    random_seeds: int
    transfer_percent: float  # <= 0: no transfer matrix
    batch_size: int
    seed: int
    map_size: int = 128  # stored overall maps (sum-pooled from the 256 frame)
    layer_map_size: int = 32  # stored per-layer maps
    mean_layer_size: int = 64  # per-shard sums of per-layer maps (the mean-map figure)
    temperature: float = core.DEFAULT_TEMPERATURE  # identification's softmax temperature

    @property
    def occlusion(self) -> bool:
        return bool(self.occlusion_percents and self.occlusion_fills)


def _key(seed: int, *parts: str | int) -> jax.Array:
    key = jax.random.PRNGKey(seed)
    for p in parts:  # stable across processes and resumes (no Python hash())
        key = jax.random.fold_in(key, zlib.crc32(str(p).encode()) & 0x7FFFFFFF)
    return key


def _pool_sum(maps: jax.Array, size: int) -> jax.Array:
    """Sum-pool [..., S, S] maps to [..., size, size] (mass preserved; S a multiple of size)."""
    s = maps.shape[-1]
    f = s // size
    return maps.reshape(*maps.shape[:-2], size, f, size, f).sum(axis=(-3, -1))


def _grid_to_frame(size: int) -> jax.Array:
    """[3, 3] from a size x size grid's pixels to the frame pixels at the centres of its blocks."""
    f = FRAME / size
    return jnp.array([[f, 0.0, (f - 1) / 2], [0.0, f, (f - 1) / 2], [0.0, 0.0, 1.0]], jnp.float32)


def _to_frame(maps: jax.Array, frame_to_model: jax.Array) -> jax.Array:
    """Overall maps at the model input [B, S, S] -> the analysis frame [B, F, F], renormalised."""
    return jax.vmap(lambda m, a: alignment.warp_map(m, a, (FRAME, FRAME)))(maps, frame_to_model)


def _layers_to_frame(per_layer: jax.Array, frame_to_model: jax.Array, size: int) -> jax.Array:
    """Per-layer maps at the model input [B, L, S, S] -> the frame, sampled on a LAYER_GRID grid,
    sum-pooled to [B, L, size, size] and renormalised. All L layers share one gather (channels
    last): per-layer gathers, or reductions over the gathered maps in [L, h, w] layout, ran
    4-5x slower on CPU."""
    def one(m, a):
        out = alignment.warp_affine(jnp.moveaxis(m, 0, -1), a @ _grid_to_frame(LAYER_GRID), (LAYER_GRID, LAYER_GRID))
        f = LAYER_GRID // size
        out = out.reshape(size, f, size, f, -1).sum(axis=(1, 3))
        total = out.sum(axis=(0, 1))
        out = jnp.where(total > 0, out / jnp.where(total > 0, total, 1.0), 0.0)
        return jnp.moveaxis(out, -1, 0)
    return jax.vmap(one)(per_layer, frame_to_model)


@core.jit(static_argnames=("top_percents", "map_size", "layer_size", "mean_layer_size"))
def _post(overall, per_layer, f2m, labels, *, top_percents, map_size, layer_size, mean_layer_size):
    """Maps at the model input -> the analysis frame, pooled copies and region statistics (one batch)."""
    frame = _to_frame(overall, f2m)
    rs = stats.region_stats(frame, labels, num_classes=len(regions.CLASSES), percents=top_percents)
    layers = _layers_to_frame(per_layer, f2m, mean_layer_size)
    return {"frame": frame, "overall": _pool_sum(frame, map_size), "layers_mean": layers,
            "layers": _pool_sum(layers, layer_size), "share": rs.share, "mass": rs.mass, "area": rs.area}


_to_frame_jit = core.jit(_to_frame)


@core.jit(static_argnames=("side", "percent"))
def _frame_maps_to_model_masks(frame_maps, model_to_frame, *, side, percent):
    """Another model's frame maps [B, F, F] -> this model's input [B, side, side] (``warp_map``),
    then its top-p% there: the pixel count matches this model's own top-p% and random masks."""
    warped = jax.vmap(lambda m, a: alignment.warp_map(m, a, (side, side)))(frame_maps, model_to_frame)
    return stats.top_percent_mask(warped, percent)


def dense_ids(persons: Sequence[str]) -> tuple[np.ndarray, int]:
    """Person names -> (ids in [0, P), P)."""
    uniq, ids = np.unique(np.asarray(persons), return_inverse=True)
    return ids.reshape(-1).astype(np.int32), len(uniq)


@dataclasses.dataclass(frozen=True)
class Gallery:
    """Every person's reference of one model over a whole run (``population``, ``identification``)."""

    persons: tuple[str, ...]  # sorted names; row p of ``vectors`` is persons[p]
    vectors: np.ndarray  # [P, D] unit means of the person's embeddings (core.person_gallery)

    @classmethod
    def from_embeddings(cls, emb: np.ndarray, persons: Sequence[str]) -> Gallery:
        """The gallery of N faces' embeddings [N, D] and their person names (one batch: the oracle
        the sweep's sharded embedding pass must equal)."""
        ids, num = dense_ids(persons)
        g, _ = core.person_gallery(jnp.asarray(emb, jnp.float32), jnp.asarray(ids), num_people=num)
        return cls(tuple(np.unique(np.asarray(persons)).tolist()), np.asarray(g))

    def ids(self, persons: Sequence[str]) -> np.ndarray:
        """Rows of the given persons (each must be in the gallery)."""
        index = {p: i for i, p in enumerate(self.persons)}
        missing = sorted({p for p in persons if p not in index})
        if missing:
            raise ValueError(f"persons not in the gallery (embedding pass): {missing[:5]}")
        return np.array([index[p] for p in persons], np.int32)


@dataclasses.dataclass
class ModelShard:
    """One model's results on a shard: ``stored`` (schema keys) plus the working arrays the
    transfer matrix needs (never stored)."""

    stored: dict[str, np.ndarray]
    frame: dict[str, np.ndarray]  # weighting -> [N, F, F] overall maps in the analysis frame
    x: np.ndarray  # [N, S, S, 3] model inputs
    f2m: np.ndarray  # [N, 2, 3] frame -> model input
    occ_ref: np.ndarray  # [N, D] the reference occlusion is measured against
    emb: np.ndarray  # [N, D]


class _Rows:
    """Per-batch results of a shard, cut to their real rows and concatenated at the end."""

    def __init__(self):
        self._parts: dict[str, list[np.ndarray]] = {}

    def add(self, key: str, value, k: int, dtype=None) -> None:
        a = np.asarray(value)[:k]
        self._parts.setdefault(key, []).append(a if dtype is None else a.astype(dtype))

    def arrays(self) -> dict[str, np.ndarray]:
        return {key: np.concatenate(parts) for key, parts in self._parts.items()}


def _shard_sum(rows: np.ndarray) -> np.ndarray:
    """Sum over faces in float64, stored as float32 (the per-shard sums of the mean maps)."""
    return rows.astype(np.float64).sum(0).astype(np.float32)


class ModelWorker:
    """The one driver of a model's work: its params on the devices (one copy) and its compiled
    functions, all over fixed ``[batch_size, ...]`` shapes."""

    def __init__(self, model, *, template: str, taps: Sequence[str], config: ComputeConfig,
                 mesh: jax.sharding.Mesh | None = None):
        self.model, self.name, self.template, self.config = model, model.name, template, config
        self.taps = tuple(taps)
        self.place = Placement(config.batch_size, mesh)
        self.params = self.place.replicate(model.params)  # shared by every compiled function below
        kw = dict(batch_size=config.batch_size, target=config.target, taps=self.taps, mesh=self.place.mesh,
                  temperature=config.temperature)
        self.runner = core.LeamSetRunner(model.apply, self.params, weighting=config.weightings, **kw)
        apply = model.apply

        def embed(params, x):
            return apply(params, x)[0]

        def occlusion(params, x, maps, refs, clean, method_keys, random_keys, *, fills, percents):
            # Every occlusion of one batch in one program: maps [M, B, S, S], method_keys
            # [F, M, P] and random_keys [F, P, R] -> ([F, M, P, B], [F, P, B] random means).
            embed_p = functools.partial(embed, params)
            by_method, by_random = [], []
            for fi, fill in enumerate(fills):
                masks, keys = [], []
                for pi, p in enumerate(percents):
                    masks.append(stats.top_percent_mask(maps, p))
                    keys.append(method_keys[fi, :, pi])
                    rm, rk = stats.random_occlusion_masks(random_keys[fi, pi], x.shape[:3], p)
                    masks.append(rm)
                    keys.append(rk)
                d = stats.occlusion_deltas(embed_p, x, jnp.concatenate(masks), refs, fill=fill,
                                           keys=jnp.concatenate(keys), clean_embeddings=clean)
                m, r = maps.shape[0], random_keys.shape[2]
                d = d.reshape(len(percents), m + r, -1)
                by_method.append(jnp.moveaxis(d[:, :m], 0, 1))
                by_random.append(jnp.mean(d[:, m:], axis=1))
            return jnp.stack(by_method), jnp.stack(by_random)

        def transfer(params, x, frame_maps, model_to_frame, refs, clean, keys, *, fill, percent):
            # Every source's frame maps [V, B, F, F] -> this model's top-p% masks -> Δcos [V, B].
            masks = jax.vmap(lambda fm: _frame_maps_to_model_masks(fm, model_to_frame, side=x.shape[1],
                                                                   percent=percent))(frame_maps)
            return stats.occlusion_deltas(functools.partial(embed, params), x, masks, refs, fill=fill, keys=keys,
                                          clean_embeddings=clean)

        self._embed = core.jit(embed, cpu_options=core.FORWARD_CPU_OPTIONS)  # the occlusion's forward, so Δcos is
        # a difference of two embeddings from the same compiled arithmetic
        self._occlusion = core.jit(occlusion, static_argnames=("fills", "percents"), cpu_options=core.FORWARD_CPU_OPTIONS)
        self._transfer = core.jit(transfer, static_argnames=("fill", "percent"), cpu_options=core.FORWARD_CPU_OPTIONS)

    # -- whole sets ----------------------------------------------------------------------
    def embed(self, x: np.ndarray, params=None) -> np.ndarray:
        """[N, S, S, 3] model inputs -> [N, D] embeddings (``params``: other weights, same structure)."""
        params = self.params if params is None else self.place.replicate(params)
        return np.concatenate([np.asarray(self._embed(params, self.place.put(x[s])))[: s.stop - s.start]
                               for s in chunks(len(x), self.place.batch_size)])

    def references(self, emb: np.ndarray, persons: Sequence[str]) -> np.ndarray:
        """[N, D] what each face is explained against: leave-one-out means of the person's other
        faces (a zero row for a person with one face), zero rows for ``self``."""
        if self.config.target == "self":
            return np.zeros_like(emb)
        ids, num = dense_ids(persons)
        return np.asarray(core.loo_references(jnp.asarray(emb), jnp.asarray(ids), num_people=num)[0])

    def batches(self, *arrays: np.ndarray):
        """(index, real rows, the arrays' rows padded and placed) per fixed-shape batch."""
        for i, s in enumerate(chunks(len(arrays[0]), self.place.batch_size)):
            yield i, s.stop - s.start, [self.place.put(a[s]) for a in arrays]

    # -- one batch ----------------------------------------------------------------------
    def maps(self, x: jax.Array, refs: jax.Array, ids=None, gallery=None,
             params=None) -> tuple[dict[str, core.LeamMaps], dict[str, jax.Array]]:
        """Every weighting's maps of one placed batch and the overall maps of the two baselines
        (input-gradient saliency, last-layer Grad-CAM), all from one forward and backward pass
        (padded rows are computed too; callers cut). ``ids`` and ``gallery``: the gallery targets;
        ``params``: other weights (sanity checks)."""
        return self.runner(x, references=refs, person_ids=ids, gallery=gallery, params=params)

    def leam(self, x: jax.Array, refs: jax.Array, ids=None, gallery=None, params=None) -> dict[str, core.LeamMaps]:
        """Every weighting's maps of one placed batch (see :meth:`maps`)."""
        return self.maps(x, refs, ids, gallery, params)[0]

    def frame_maps(self, x: np.ndarray, f2m: np.ndarray, refs: np.ndarray, ids=None,
                   gallery: jax.Array | None = None) -> dict[str, np.ndarray]:
        """Overall maps in the analysis frame [N, F, F] of every weighting and of ``last_layer``
        (Grad-CAM), for N model inputs with their frame->model affines (the protection's masks)."""
        rows = _Rows()
        id_rows = np.zeros(len(x), np.int32) if ids is None else ids
        for _, k, (xb, rb, fb, ib) in self.batches(np.asarray(x, np.float32), refs, f2m, id_rows):
            ib = None if ids is None else ib
            leam, base = self.maps(xb, rb, ib, gallery)
            overall = {w: lm.overall for w, lm in leam.items()} | {"last_layer": base["last_layer"]}
            for name, m in overall.items():
                rows.add(name, _to_frame_jit(m, fb), k)
        return rows.arrays()

    def gallery_inputs(self, persons: Sequence[str], gallery: Gallery | None):
        """(gallery rows [N] or None, the gallery placed on the devices or None) for this target."""
        if self.config.target not in core.GALLERY_TARGETS:
            return None, None
        if gallery is None:
            raise ValueError(f"target {self.config.target!r} needs the run's gallery (embedding pass)")
        return gallery.ids(persons), self.place.replicate(jnp.asarray(gallery.vectors, jnp.float32))

    def occlusion(self, x, maps: dict[str, jax.Array], occ_ref, clean, *, seed_parts: tuple) -> dict[str, np.ndarray]:
        """Δcos of every method's top-p% mask and of matched random masks, per fill and percent:
        one compiled call and one transfer to the host per batch."""
        cfg, methods = self.config, tuple(maps)
        fills, percents = tuple(cfg.occlusion_fills), tuple(cfg.occlusion_percents)
        method_keys = jnp.stack([jnp.stack([jnp.stack([_key(cfg.seed, *seed_parts, self.name, m, f, p)
                                                       for p in percents]) for m in methods]) for f in fills])
        random_keys = jnp.stack([jnp.stack([jnp.stack([_key(cfg.seed, *seed_parts, self.name, "random", f, p, r)
                                                       for r in range(cfg.random_seeds)]) for p in percents])
                                 for f in fills])
        by_method, by_random = jax.device_get(self._occlusion(
            self.params, x, jnp.stack([maps[m] for m in methods]), occ_ref, clean, method_keys, random_keys,
            fills=fills, percents=percents))
        out = {}
        for fi, f in enumerate(fills):
            for pi, p in enumerate(percents):
                for mi, m in enumerate(methods):
                    out[schema.occlusion(self.name, m, f, p)] = by_method[fi, mi, pi]
                out[schema.occlusion(self.name, "random", f, p)] = by_random[fi, pi]
        return out

    # -- one shard ----------------------------------------------------------------------
    def _post_batch(self, rows: _Rows, maps: dict[str, core.LeamMaps], f2m, labels, k: int) -> None:
        """Maps -> the analysis frame, pooled copies and region statistics, into ``rows``."""
        cfg, m = self.config, self.name
        for w, lm in maps.items():
            post = _post(lm.overall, lm.per_layer, f2m, labels, top_percents=tuple(cfg.top_percents),
                         map_size=cfg.map_size, layer_size=cfg.layer_map_size, mean_layer_size=cfg.mean_layer_size)
            rows.add(schema.per_map("flags", m, w), lm.flags, k)
            rows.add(schema.per_map("overall_flags", m, w), lm.overall_flags, k)
            rows.add(f"frame/{w}", post["frame"], k)  # working array (transfer, shard sum)
            rows.add(f"layers_mean/{w}", post["layers_mean"], k)  # working array (shard sum)
            rows.add(schema.per_map("overall", m, w), post["overall"], k, np.float16)
            rows.add(schema.per_map("layers", m, w), post["layers"], k, np.float16)
            rows.add(schema.per_map("share", m, w), post["share"], k)
            rows.add(schema.per_map("mass", m, w), post["mass"], k)
            if w == cfg.weightings[0]:
                rows.add(schema.AREA, post["area"], k)

    def explain(self, faces: Sequence[FaceInput], shard_key: str, gallery: Gallery | None = None) -> ModelShard:
        """Embeddings, maps, region statistics, baselines and occlusion for the shard's faces
        (``gallery``: the run's, for the gallery targets)."""
        x = np.stack([f.crops[self.template] for f in faces]).astype(np.float32)
        f2m = np.stack([f.frame_to_model[self.template] for f in faces]).astype(np.float32)
        labels = np.stack([f.labels for f in faces]).astype(np.int32)
        persons = [f.person for f in faces]
        emb = self.embed(x)
        refs = self.references(emb, persons)
        ids, g = self.gallery_inputs(persons, gallery)
        has_ref = np.sum(refs * refs, axis=-1) > 0
        occ_ref = np.where(has_ref[:, None], refs, np.asarray(core.l2_normalize(jnp.asarray(emb)))).astype(np.float32)
        rows = _Rows()
        id_rows = np.zeros(len(x), np.int32) if ids is None else ids
        for i, k, (xb, rb, eb, ob, f2mb, lb, ib) in self.batches(x, refs, emb, occ_ref, f2m, labels, id_rows):
            ib = None if ids is None else ib
            maps, base = self.maps(xb, rb, ib, g)
            self._post_batch(rows, maps, f2mb, lb, k)
            if self.config.occlusion:
                overall = {w: lm.overall for w, lm in maps.items()} | base
                for key, d in self.occlusion(xb, overall, ob, eb, seed_parts=(shard_key, i)).items():
                    rows.add(key, d, k)
        out = rows.arrays()
        frame = {w: out.pop(f"frame/{w}") for w in self.config.weightings}
        for w in self.config.weightings:
            out[schema.per_map("overall_sum", self.name, w)] = _shard_sum(frame[w])
            out[schema.per_map("layers_sum", self.name, w)] = _shard_sum(out.pop(f"layers_mean/{w}"))
        out[schema.per_model("emb", self.name)] = emb.astype(np.float32)
        out[schema.per_model("has_ref", self.name)] = has_ref
        return ModelShard(out, frame, x, f2m, occ_ref, emb)

    def transfer(self, frame_maps: np.ndarray, mine: ModelShard, *, fill: str, keys: jax.Array) -> np.ndarray:
        """Δcos on this model when the top pixels of other models' frame maps [V, N, F, F] are
        occluded (``keys``: one per source) -> [V, N]; every source in one compiled call per batch."""
        inv = np.stack([alignment.invert_affine(a) for a in mine.f2m]).astype(np.float32)
        maps = np.moveaxis(np.asarray(frame_maps, np.float32), 0, 1)  # batches run along faces
        out = []
        for i, k, (fm, m2f, xb, ob, eb) in self.batches(maps, inv, mine.x, mine.occ_ref, mine.emb):
            batch_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, i)
            d = self._transfer(self.params, xb, jnp.moveaxis(fm, 1, 0), m2f, ob, eb, batch_keys, fill=fill,
                               percent=self.config.transfer_percent)
            out.append(np.asarray(d)[:, :k])
        return np.concatenate(out, axis=1)


def embed_shard(workers: Sequence[ModelWorker], faces: Sequence[FaceInput]) -> dict[str, np.ndarray]:
    """The embedding pass: every model's embeddings of the shard's faces (forward only)."""
    return {schema.per_model("emb", wk.name): wk.embed(np.stack([f.crops[wk.template] for f in faces])
                                                        .astype(np.float32)).astype(np.float32)
            for wk in workers}


def compute_shard(workers: Sequence[ModelWorker], faces: Sequence[FaceInput], shard_key: str,
                  config: ComputeConfig, galleries: dict[str, Gallery] | None = None) -> dict[str, np.ndarray]:
    """All models on one shard, then the A x B transfer matrix: the arrays to store."""
    galleries = galleries or {}
    shards = {wk.name: wk.explain(faces, shard_key, galleries.get(wk.name)) for wk in workers}
    out = {k: v for ms in shards.values() for k, v in ms.stored.items()}
    if config.transfer_percent <= 0 or not config.occlusion_fills:
        return out
    fill = config.occlusion_fills[0]
    pairs = [(w, src.name) for w in config.weightings for src in workers]
    for dst in workers:
        keys = jnp.stack([_key(config.seed, shard_key, "transfer", w, src, dst.name) for w, src in pairs])
        deltas = dst.transfer(np.stack([shards[src].frame[w] for w, src in pairs]), shards[dst.name], fill=fill,
                              keys=keys)
        for (w, src), d in zip(pairs, deltas):
            out[schema.transfer(w, src, dst.name)] = d
    return out


# -- the same driver over an in-memory set (tests, benchmarks, notebooks) -------------------


@dataclasses.dataclass
class SetMaps:
    """LEAM over a set of N images of one model and weighting (numpy arrays)."""

    overall: np.ndarray  # [N, S, S]
    per_layer: np.ndarray  # [N, L, S, S]
    flags: np.ndarray  # [N, L]
    overall_flags: np.ndarray  # [N]
    embeddings: np.ndarray  # [N, D]
    references: np.ndarray  # [N, D] leave-one-out references (zero: none)
    used_self: np.ndarray  # [N]
    taps: tuple[str, ...]


def set_worker(model, *, weighting: str | Sequence[str] = core.DEFAULT_WEIGHTING, batch_size: int = 32, taps=None,
               target: str = core.DEFAULT_TARGET, fill: str = stats.DEFAULT_FILL, percent: float = 1.0, seeds: int = 5,
               seed: int = 0, temperature: float = core.DEFAULT_TEMPERATURE) -> ModelWorker:
    """A :class:`ModelWorker` for one (or several) weightings, one fill and occlusion percent over an
    in-memory set of model inputs (no face pipeline)."""
    weightings = (weighting,) if isinstance(weighting, str) else tuple(weighting)
    cfg = ComputeConfig(weightings=weightings, target=target, top_percents=(1.0,), occlusion_percents=(percent,),
                        occlusion_fills=(fill,), random_seeds=seeds, transfer_percent=0.0, batch_size=batch_size,
                        seed=seed, temperature=temperature)
    return ModelWorker(model, template="", taps=taps or model.taps, config=cfg)


def explain_set_all(worker: ModelWorker, images: np.ndarray, persons: Sequence[str], *,
                    params=None) -> dict[str, SetMaps]:
    """Every weighting of the worker over N model inputs: references leave-one-out over the set and,
    for the gallery targets, the set's own gallery. ``params``: other weights of the same structure
    (references and gallery then come from their embeddings too)."""
    x = np.asarray(images, np.float32)
    emb = worker.embed(x, params)
    refs = worker.references(emb, persons)
    gallery = Gallery.from_embeddings(emb, persons) if worker.config.target in core.GALLERY_TARGETS else None
    ids, g = worker.gallery_inputs(persons, gallery)
    rows, taps = {w: _Rows() for w in worker.config.weightings}, worker.taps
    for _, k, (xb, rb, ib) in worker.batches(x, refs, np.zeros(len(x), np.int32) if ids is None else ids):
        for w, lm in worker.leam(xb, rb, None if ids is None else ib, g, params).items():
            taps = lm.taps
            for name in ("overall", "per_layer", "flags", "overall_flags", "used_self"):
                rows[w].add(name, getattr(lm, name), k)
    out = {}
    for w, r in rows.items():
        a = r.arrays()
        out[w] = SetMaps(a["overall"], a["per_layer"], a["flags"], a["overall_flags"], emb, refs, a["used_self"], taps)
    return out


def explain_set(worker: ModelWorker, images: np.ndarray, persons: Sequence[str]) -> SetMaps:
    """The worker's first weighting over N model inputs (see :func:`explain_set_all`)."""
    return explain_set_all(worker, images, persons)[worker.config.weightings[0]]


def occlusion_comparison(worker: ModelWorker, images: np.ndarray, maps: np.ndarray,
                         references: np.ndarray) -> dict[str, np.ndarray]:
    """Δcos per image when the top pixels of ``maps`` [N, S, S] are occluded (``leam``) and for as many
    random pixels (``random``, mean over the worker's draws), at the worker's first percent and fill,
    measured against ``references``: the same compiled occlusion as the sweep."""
    cfg = worker.config
    fill, p = cfg.occlusion_fills[0], cfg.occlusion_percents[0]
    x = np.asarray(images, np.float32)
    rows = _Rows()
    for i, k, (xb, mb, rb, eb) in worker.batches(x, np.asarray(maps, np.float32), np.asarray(references),
                                                  worker.embed(x)):
        deltas = worker.occlusion(xb, {"leam": mb}, rb, eb, seed_parts=("set", i))
        for method in ("leam", "random"):
            rows.add(method, deltas[schema.occlusion(worker.name, method, fill, p)], k)
    return rows.arrays()
