"""Everything a sweep computes for one shard of faces, for every model (device work).

A :class:`ModelWorker` holds one model's compiled functions (embedding, LEAM
per weighting, the two baselines, occlusion), all over fixed-shape batches
sharded along the batch axis, so a sweep compiles once per model. Results are
numpy arrays keyed ``<kind>/<model>/...`` for the shard file.

Targets: ``identity`` explains each face against the leave-one-out mean of its
person's other faces (faces of a person never straddle shards, so this equals
the dataset-wide reference) and falls back to ``self`` for a person with one
face; ``self`` explains every face against itself. Occlusion measures
``Δcos = cos(e(x), r) - cos(e(x_occ), r)`` with the same ``r`` (the clean
embedding itself for ``self``).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import core, stats
from leam_jax.face import alignment, regions
from leam_jax.study.loader import FaceInput

FRAME = alignment.ANALYSIS_SIZE
LAYER_GRID = 128  # per-layer maps are warped onto this grid of the frame, then pooled


@dataclasses.dataclass(frozen=True)
class ComputeConfig:
    weightings: tuple[str, ...] = core.WEIGHTINGS
    target: str = "identity"  # identity | self
    top_percents: tuple[float, ...] = (1.0, 5.0, 10.0)
    occlusion_percents: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0)
    occlusion_fills: tuple[str, ...] = (stats.DEFAULT_FILL,)
    random_seeds: int = 3
    transfer_percent: float = 1.0  # <= 0: no transfer matrix
    map_size: int = 128  # stored overall maps (sum-pooled from the 256 frame)
    layer_map_size: int = 32  # stored per-layer maps
    mean_layer_size: int = 64  # per-shard sums of per-layer maps (the mean-map figure)
    batch_size: int = 32
    seed: int = 0


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


_top_mask = core.jit(stats.top_percent_mask, static_argnames=("percent",))
_random_masks = core.jit(stats.random_masks, static_argnums=(1, 2))


@core.jit(static_argnames=("side", "percent"))
def _frame_maps_to_model_masks(frame_maps, model_to_frame, *, side, percent):
    """Another model's frame maps [B, F, F] -> this model's input [B, side, side] (``warp_map``),
    then its top-p% there: the pixel count matches this model's own top-p% and random masks."""
    warped = jax.vmap(lambda m, a: alignment.warp_map(m, a, (side, side)))(frame_maps, model_to_frame)
    return stats.top_percent_mask(warped, percent)


def _pad(a: np.ndarray, bs: int) -> np.ndarray:
    """Pad rows to ``bs`` by repeating row 0 (finite everywhere; the extra rows are cut off)."""
    n = a.shape[0]
    return a if n == bs else np.concatenate([a, np.repeat(a[:1], bs - n, axis=0)])


def loo_references_np(emb: np.ndarray, persons: Sequence[str]) -> np.ndarray:
    """Leave-one-out mean of the unit embeddings of each face's person, renormalised; zero rows
    for a person with one face (as ``core.loo_references``)."""
    unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
    ids = np.unique(np.asarray(persons), return_inverse=True)[1].reshape(-1)
    sums = np.zeros((ids.max() + 1, emb.shape[1]))
    np.add.at(sums, ids, unit.astype(np.float64))
    counts = np.bincount(ids)
    others = sums[ids] - unit
    ref = others / np.maximum(np.linalg.norm(others, axis=-1, keepdims=True), 1e-12)
    return np.where((counts[ids] >= 2)[:, None], ref, 0.0).astype(np.float32)


class ModelWorker:
    """One model's compiled functions for a sweep (all over fixed [batch_size, ...] shapes)."""

    def __init__(self, model, *, template: str, taps: Sequence[str], config: ComputeConfig,
                 mesh: jax.sharding.Mesh):
        self.model = model
        self.name = model.name
        self.template = template
        self.taps = tuple(taps)
        self.config = config
        self.bs = config.batch_size
        self._sharded = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
        self.params = jax.device_put(model.params, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))
        kw = dict(batch_size=self.bs, target=config.target, taps=self.taps, mesh=mesh)
        self.runners = {w: core.LeamRunner(model.apply, model.params, weighting=w, **kw) for w in config.weightings}
        self.last_layer = core.LeamRunner(model.apply, model.params, weighting="gradcam",
                                          **{**kw, "taps": (self.taps[-1],)})
        apply = model.apply
        target = config.target

        def embed(params, x):
            return apply(params, x)[0]

        def score_fn(refs):
            def score(e):
                if target == "self":
                    return core.self_score(e)
                has_ref = jnp.sum(refs * refs, axis=-1) > 0
                return jnp.where(has_ref, core.identity_score(e, refs), core.self_score(e))
            return score

        def input_grad(params, x, refs):
            return core.input_gradient_saliency(apply, params, x, score_fn(refs))[0]

        def occlusion(params, x, masks, refs, clean, key, fill):
            return stats.occlusion_delta(lambda z: embed(params, z), x, masks, refs, fill=fill, key=key,
                                         clean_embeddings=clean)

        self._embed = core.jit(embed)
        self._input_grad = core.jit(input_grad)
        self._occlusion = core.jit(occlusion, static_argnames=("fill",))

    def _put(self, x: np.ndarray) -> jax.Array:
        return jax.device_put(jnp.asarray(_pad(np.asarray(x), self.bs)), self._sharded)

    def chunks(self, n: int) -> list[slice]:
        return [slice(i, min(i + self.bs, n)) for i in range(0, n, self.bs)]

    def embed(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(self._embed(self.params, self._put(x[s])))[: s.stop - s.start]
                               for s in self.chunks(len(x))])

    def occlusion(self, x, masks, refs, clean, *, fill: str, key: jax.Array) -> np.ndarray:
        """Δcos for one batch (arrays already padded and on device)."""
        return np.asarray(self._occlusion(self.params, x, masks, refs, clean, key, fill=fill))

    # -- one shard -------------------------------------------------------------------------
    def explain(self, faces: Sequence[FaceInput], shard_key: str) -> dict[str, np.ndarray]:
        """Embeddings, maps, baselines, occlusion and region statistics for the shard's faces."""
        cfg, m = self.config, self.name
        n = len(faces)
        x = np.stack([f.crops[self.template] for f in faces]).astype(np.float32)
        f2m = np.stack([f.frame_to_model[self.template] for f in faces]).astype(np.float32)
        labels = np.stack([f.labels for f in faces]).astype(np.int32)
        emb = self.embed(x)
        refs = np.zeros_like(emb) if cfg.target == "self" else loo_references_np(emb, [f.person for f in faces])
        has_ref = np.sum(refs * refs, axis=-1) > 0
        unit = emb / np.maximum(np.linalg.norm(emb, axis=-1, keepdims=True), 1e-12)
        occ_ref = np.where(has_ref[:, None], refs, unit).astype(np.float32)
        acc: dict[str, list] = {}

        def add(key, value, k):
            acc.setdefault(key, []).append(np.asarray(value)[:k])

        side = x.shape[1]
        for ci, s in enumerate(self.chunks(n)):
            k = s.stop - s.start
            xb, rb, eb, ob = (self._put(a[s]) for a in (x, refs, emb, occ_ref))
            f2mb, lb = jnp.asarray(_pad(f2m[s], self.bs)), jnp.asarray(_pad(labels[s], self.bs))
            maps = {}
            for w, runner in self.runners.items():
                lm = runner(xb, references=rb)  # padded rows are real rows here; cut below
                post = _post(lm.overall, lm.per_layer, f2mb, lb, top_percents=tuple(cfg.top_percents),
                             map_size=cfg.map_size, layer_size=cfg.layer_map_size,
                             mean_layer_size=cfg.mean_layer_size)
                maps[w] = lm.overall
                add(f"flags/{m}/{w}", lm.flags, k)
                add(f"overall_flags/{m}/{w}", lm.overall_flags, k)
                add(f"frame/{m}/{w}", post["frame"], k)
                add(f"overall/{m}/{w}", np.asarray(post["overall"], np.float16), k)
                add(f"layers/{m}/{w}", np.asarray(post["layers"], np.float16), k)
                add(f"_layers_mean/{m}/{w}", post["layers_mean"], k)
                add(f"share/{m}/{w}", post["share"], k)
                add(f"mass/{m}/{w}", post["mass"], k)
                if w == cfg.weightings[0]:
                    add("area", post["area"], k)
            if cfg.occlusion_percents and cfg.occlusion_fills:  # the baselines only enter occlusion
                maps["input_gradient"] = self._input_grad(self.params, xb, rb)
                maps["last_layer"] = self.last_layer(xb, references=rb).overall
            for fill in cfg.occlusion_fills:
                for p in cfg.occlusion_percents:
                    for method, mp in maps.items():
                        key = _key(cfg.seed, shard_key, ci, m, method, fill, p)
                        add(f"occ/{m}/{method}/{fill}/{p:g}",
                            self.occlusion(xb, _top_mask(mp, percent=p), ob, eb, fill=fill, key=key), k)
                    draws = []
                    for r in range(cfg.random_seeds):
                        mk, fk = jax.random.split(_key(cfg.seed, shard_key, ci, m, "random", fill, p, r))
                        masks = jax.device_put(_random_masks(mk, (self.bs, side, side), p), self._sharded)
                        draws.append(self.occlusion(xb, masks, ob, eb, fill=fill, key=fk))
                    add(f"occ/{m}/random/{fill}/{p:g}", np.mean(draws, axis=0), k)
        out = {key: np.concatenate(v) for key, v in acc.items()}
        for w in cfg.weightings:
            out[f"overall_sum/{m}/{w}"] = out[f"frame/{m}/{w}"].astype(np.float64).sum(0).astype(np.float32)
            out[f"layers_sum/{m}/{w}"] = out.pop(f"_layers_mean/{m}/{w}").astype(np.float64).sum(0).astype(np.float32)
        out[f"emb/{m}"] = emb.astype(np.float32)
        out[f"has_ref/{m}"] = has_ref
        out[f"_x/{m}"], out[f"_occ_ref/{m}"], out[f"_f2m/{m}"] = x, occ_ref, f2m
        return out

    def transfer(self, frame_maps: np.ndarray, x: np.ndarray, f2m: np.ndarray, occ_ref: np.ndarray,
                 emb: np.ndarray, *, fill: str, key: jax.Array) -> np.ndarray:
        """Δcos on this model when the top pixels of another model's frame maps are occluded."""
        inv = np.stack([alignment.invert_affine(a) for a in f2m]).astype(np.float32)
        out = []
        for ci, s in enumerate(self.chunks(len(x))):
            masks = _frame_maps_to_model_masks(jnp.asarray(_pad(frame_maps[s], self.bs)), jnp.asarray(_pad(inv[s], self.bs)),
                                          side=x.shape[1], percent=self.config.transfer_percent)
            d = self.occlusion(self._put(x[s]), jax.device_put(masks, self._sharded), self._put(occ_ref[s]),
                               self._put(emb[s]), fill=fill, key=jax.random.fold_in(key, ci))
            out.append(d[: s.stop - s.start])
        return np.concatenate(out)


def compute_shard(workers: Sequence[ModelWorker], faces: Sequence[FaceInput], shard_key: str,
                  config: ComputeConfig) -> dict[str, np.ndarray]:
    """All models on one shard, then the A x B transfer matrix. Keys starting ``_`` or
    ``frame/`` are working arrays, not for storage."""
    out: dict[str, np.ndarray] = {}
    for wk in workers:
        out.update(wk.explain(faces, shard_key))
    if config.transfer_percent <= 0 or not config.occlusion_fills:
        return {k: v for k, v in out.items() if not (k.startswith("_") or k.startswith("frame/"))}
    fill = config.occlusion_fills[0]
    for w in config.weightings:
        for src in workers:
            for dst in workers:
                key = _key(config.seed, shard_key, "transfer", w, src.name, dst.name)
                d = dst.transfer(out[f"frame/{src.name}/{w}"], out[f"_x/{dst.name}"], out[f"_f2m/{dst.name}"],
                                 out[f"_occ_ref/{dst.name}"], out[f"emb/{dst.name}"], fill=fill, key=key)
                out[f"transfer/{w}/{src.name}/{dst.name}"] = d
    return {k: v for k, v in out.items() if not (k.startswith("_") or k.startswith("frame/"))}
