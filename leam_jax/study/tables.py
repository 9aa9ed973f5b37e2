"""Finalise a sweep: shard files -> tables (CSV), mean maps and summary.json.

Every number is computed by the same tested functions the API exposes
(:mod:`leam_jax.stats`, :mod:`leam_jax.core`): BC matrices, same/different
means, layer diversity, model agreement, verification AUC and TAR. Numpy
stays for what it is the right tool for: seeded bootstrap and permutation
loops over those precomputed values, aggregation over rows, and CSV writing.
The same shards always give byte-identical tables. Column meanings are in
BUILD.md ("Study outputs").
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from leam_jax import batching, core, stats
from leam_jax.face import regions
from leam_jax.study import files, schema

N_BOOTSTRAP = 1000
N_PERMUTATIONS = 1000
PERMUTATION_CHUNK = 100  # relabellings gathered at once (memory ~ chunk x same-person pairs x 12 bytes)
MAX_BC_FACES = 4000  # all-pairs BC above this many faces uses a seeded subset of people
MAX_GROUP_VALUES = 20  # attribute columns with more distinct values are not grouped by default
MAX_PAIR_ROWS = 2000  # per kind, in bc_pairs.csv (histograms)
CHUNK = 256  # faces per compiled call of the per-face statistics (fixed shape, bounded memory)
CLASSES = regions.CLASSES
_C = {c: i for i, c in enumerate(CLASSES)}
# Every class but background, then the groups of classes (nose_all, eyes_brows_nose, ...).
REGIONS = {**{c: (c,) for c in CLASSES if c != "background"}, **regions.REGION_GROUPS}
METHODS = ("leam", "input_gradient", "last_layer", "random")
SPARSITIES = (None, 1.0, 5.0, 10.0, 20.0)  # person-specificity at full maps and top-p% (LEAM_SPEC section 6)
# Person-bootstrap draws of the specificity AUC and d (~0.1 ms a draw at 466 faces of 50 people on 2
# cores, grouped; ~1 ms pair by pair, for more than stats.GROUPED_MAX_PEOPLE people): N_BOOTSTRAP for
# the overall map at the headline sparsity, fewer elsewhere, and the per-layer
# rows away from full maps give the point estimates only (empty intervals).
N_OTHER_DRAWS = 200
PAIRS_WITHIN_AUTO = ("source_repo", "source", "dataset", "set")  # --pairs_within=auto looks for these
# The validity criteria (LEAM_SPEC section 6) a default must meet, fixed before any measurement.
MIN_AUC = 0.75
MAX_RANDOM_SPEARMAN = 0.3
MIN_OCCLUSION_RATIO = 2.0
HEADLINE_SPARSITY = "full"  # the sparsity of the headline's person-specificity (fixed; every one is in specificity.csv)


@dataclasses.dataclass
class Collected:
    """All shards of a run, concatenated in shard order (rows are faces)."""

    path: np.ndarray
    person: np.ndarray
    face_index: np.ndarray
    attrs: list[dict[str, str]]
    labels_hist: np.ndarray  # [C, F, F] how many faces have class c at each pixel
    arrays: dict[str, np.ndarray]  # per-face arrays, concatenated
    sums: dict[str, np.ndarray]  # per-shard sums, added up
    failures: list[tuple[str, str]]


def collect(shard_arrays: Sequence[dict[str, np.ndarray]]) -> Collected:
    per_face: dict[str, list] = {}
    sums: dict[str, np.ndarray] = {}
    failures, attrs, hist = [], [], None
    for arrays in shard_arrays:
        failures += list(zip(arrays[schema.failure("path")].tolist(), arrays[schema.failure("reason")].tolist()))
        if len(arrays[schema.meta("path")]) == 0:
            continue
        attrs += [dict(json.loads(a)) for a in arrays[schema.meta("attrs")].tolist()]
        labels = arrays[schema.meta("labels")]
        h = np.stack([(labels == c).sum(0) for c in range(len(CLASSES))]).astype(np.int64)
        hist = h if hist is None else hist + h
        for k, v in arrays.items():
            key = schema.parse(k)
            if key.kind == "fail" or k in (schema.meta("attrs"), schema.meta("labels")):
                continue
            if key.summed:
                sums[k] = sums[k] + v.astype(np.float64) if k in sums else v.astype(np.float64)
            else:
                per_face.setdefault(k, []).append(v)
    cat = {k: np.concatenate(v) for k, v in per_face.items()}
    empty = np.array([], dtype=str)
    return Collected(cat.pop(schema.meta("path"), empty), cat.pop(schema.meta("person"), empty),
                     cat.pop(schema.meta("face_index"), np.zeros(0, np.int32)), attrs,
                     hist if hist is not None else np.zeros((len(CLASSES), 1, 1), np.int64), cat, sums, failures)


@dataclasses.dataclass(frozen=True)
class Study:
    """What the tables need from a run's settings (``run.json``)."""

    models: tuple[str, ...]
    weightings: tuple[str, ...]
    top_percents: tuple[float, ...]
    occlusion_percents: tuple[float, ...]
    fills: tuple[str, ...]
    taps: dict[str, list[str]]
    seed: int
    transfer_percent: float
    group_by: tuple[str, ...] = ()
    pairs_within: str = "none"
    target: str = "identity"

    @classmethod
    def from_settings(cls, s: dict) -> Study:
        return cls(tuple(s["models"]), tuple(s["weightings"]), tuple(float(p) for p in s["top_percents"]),
                   tuple(float(p) for p in s["occlusion_percents"]), tuple(s["occlusion_fills"]), s["taps"],
                   int(s["seed"]), float(s["transfer_percent"]), tuple(s.get("group_by") or ()),
                   s.get("pairs_within", "none"), s.get("target", "identity"))

    @property
    def fill0(self) -> str:
        """The fill of the transfer matrix and the headline."""
        return (self.fills or ("",))[0]

    @property
    def headline_top(self) -> float:
        return 1.0 if 1.0 in self.top_percents else self.top_percents[0]

    @property
    def headline_occlusion(self) -> float:
        return 1.0 if 1.0 in self.occlusion_percents else (self.occlusion_percents or (0.0,))[0]

    def pairs(self, col: Collected):
        """(model, weighting) pairs with results, in table order."""
        return [(m, w) for m in self.models for w in self.weightings
                if schema.per_map("share", m, w) in col.arrays]


# -- small statistics -------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return files.safe_cell(str(v))  # person ids, paths and attribute values are the user's strings


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    """Every table of the study (atomic; strings neutralised against spreadsheet formulas)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    files.write_atomic(path, buf.getvalue().encode("utf-8"))


def mean_ci(values: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Mean and a 95% percentile-bootstrap interval over rows (seeded: reproducible)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, v.size, (N_BOOTSTRAP, v.size))
    boot = v[idx].mean(axis=1)
    return float(v.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _normalise(maps: jax.Array) -> jax.Array:
    return core.normalize_maps(maps)[0]


def normalised(maps: np.ndarray) -> np.ndarray:
    """Stored (float16, pooled) maps renormalised to sum 1 (``core.normalize_maps``), float32."""
    return np.asarray(_compiled(_normalise, ())(jnp.asarray(maps, jnp.float32)))


def bc_of(maps: np.ndarray, top_percent: float | None = None) -> np.ndarray:
    """All-pairs BC (``stats.bc_matrix``) of stored maps [n, H, W], renormalised; one program per shape."""
    return np.asarray(_compiled(stats.bc_matrix, ("top_percent",))(jnp.asarray(normalised(maps)),
                                                                    top_percent=top_percent))


def dense_ids(persons: np.ndarray) -> np.ndarray:
    return np.unique(persons, return_inverse=True)[1].reshape(-1).astype(np.int32)


def permutation_p(values: np.ndarray, ids: np.ndarray, seed: int) -> float | None:
    """One-sided permutation p-value (person labels shuffled) that same-person pairs i < j of a
    pairwise matrix exceed different-person pairs on average; None without both kinds."""
    n = len(ids)
    iu = np.triu_indices(n, 1)
    vals = values[iu].astype(np.float64)
    same = ids[iu[0]] == ids[iu[1]]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    if not (n_same and n_diff):
        return None
    a, b = iu[0][same], iu[1][same]
    total, s_sum = vals.sum(), vals[same].sum()
    observed = s_sum / n_same - (total - s_sum) / n_diff
    rng, hits = np.random.default_rng(seed), 0
    for start in range(0, N_PERMUTATIONS, PERMUTATION_CHUNK):  # vectorised over a chunk of relabellings
        inv = np.stack([rng.permutation(n) for _ in range(min(PERMUTATION_CHUNK, N_PERMUTATIONS - start))])
        ps = values[inv[:, a], inv[:, b]].astype(np.float64).sum(axis=1)  # face k takes the label of inv[k]
        hits += int(np.sum((ps / n_same - (total - ps) / n_diff) >= observed - 1e-15))
    return (1 + hits) / (1 + N_PERMUTATIONS)


def bc_summary(bc: np.ndarray, persons: np.ndarray, keep: np.ndarray, seed: int) -> dict:
    """Same- vs different-person means over the ``keep`` rows of a BC matrix (``stats.same_different``;
    the matrix keeps its shape, so one compiled program serves every layer and group), pair counts
    and the permutation p-value."""
    out = {"bc_same_mean": float("nan"), "bc_diff_mean": float("nan"), "n_same": 0, "n_diff": 0, "p_value": None}
    if keep.sum() < 2:
        return out
    ids = dense_ids(persons)
    s = _compiled(stats.same_different, ())(jnp.asarray(bc), jnp.asarray(ids), valid=jnp.asarray(keep))
    k = np.flatnonzero(keep)
    return {"bc_same_mean": float(s.mean_same), "bc_diff_mean": float(s.mean_diff), "n_same": int(s.n_same),
            "n_diff": int(s.n_diff), "p_value": permutation_p(bc[np.ix_(k, k)], ids[k], seed)}


def pair_sample(bc: np.ndarray, persons: np.ndarray, seed: int) -> list[tuple[str, float]]:
    """Up to ``MAX_PAIR_ROWS`` seeded same- and different-person pair values (histograms)."""
    n = len(persons)
    if n < 2:
        return []
    iu = np.triu_indices(n, 1)
    ids = dense_ids(persons)
    same = ids[iu[0]] == ids[iu[1]]
    rng = np.random.default_rng(seed)
    rows = []
    for kind, sel in (("same", same), ("different", ~same)):
        idx = np.flatnonzero(sel)
        if idx.size > MAX_PAIR_ROWS:
            idx = np.sort(rng.choice(idx, MAX_PAIR_ROWS, replace=False))
        rows += [(kind, float(bc[iu[0][k], iu[1][k]])) for k in idx]
    return rows


def _subset_for_bc(persons: np.ndarray, seed: int) -> np.ndarray:
    if len(persons) <= MAX_BC_FACES:
        return np.arange(len(persons))
    people = np.unique(persons)
    order = np.random.default_rng(seed).permutation(len(people))
    keep, count = [], 0
    for k in order:
        rows = np.flatnonzero(persons == people[k])
        if count + len(rows) > MAX_BC_FACES:
            continue
        keep.append(rows)
        count += len(rows)
    return np.sort(np.concatenate(keep))


def group_columns(attrs: list[dict[str, str]], names: list[str], wanted: Sequence[str]) -> list[str]:
    """Attribute columns to break statistics down by: ``wanted`` if given (each must exist),
    else every column with at most ``MAX_GROUP_VALUES`` distinct values (ids, sizes and
    hashes would make one group per image)."""
    if wanted:
        unknown = [w for w in wanted if w not in names]
        if unknown:
            raise ValueError(f"--group_by {unknown}: no such manifest column (columns: {names})")
        return list(wanted)
    return [k for k in names if len({a.get(k, "") for a in attrs}) <= MAX_GROUP_VALUES]


def attribute_names(col: Collected) -> list[str]:
    names: list[str] = []
    for a in col.attrs:
        names += [k for k in a if k not in names]
    return names


def groups(col: Collected, study: Study) -> list[tuple[str, np.ndarray]]:
    """("all", every face) and one (``column=value``, rows) per value of each grouped column."""
    out: list[tuple[str, np.ndarray]] = [("all", np.arange(len(col.path)))]
    for k in group_columns(col.attrs, attribute_names(col), study.group_by):
        values = np.array([a.get(k, "") for a in col.attrs])
        for v in sorted(set(values.tolist())):
            out.append((f"{k}={v}", np.flatnonzero(values == v)))
    return out


# -- the tables, one function each --------------------------------------------------------


def region_rows(col: Collected, study: Study, grouped) -> list[list]:
    """region_shares.csv: share of each map's top-p% pixels per region (bootstrap CI), map mass,
    area share and enrichment = mean share / mean area share."""
    area, rows_out = col.arrays.get(schema.AREA), []
    for m, w in study.pairs(col):
        share, mass = col.arrays[schema.per_map("share", m, w)], col.arrays[schema.per_map("mass", m, w)]
        for g, rows in grouped:
            for pi, p in enumerate(study.top_percents):
                for region, members in REGIONS.items():
                    ci = [_C[c] for c in members]
                    sm, lo, hi = mean_ci(share[rows][:, pi, ci].sum(1), study.seed)
                    a_mean = float(area[rows][:, ci].sum(1).mean()) if len(rows) else float("nan")
                    mass_mean = float(mass[rows][:, ci].sum(1).mean()) if len(rows) else float("nan")
                    rows_out.append([m, w, g, p, region, sm, lo, hi, mass_mean, a_mean,
                                     sm / a_mean if a_mean > 0 else float("nan"), len(rows)])
    return rows_out


def bc_rows(col: Collected, study: Study, grouped) -> tuple[list[list], list[list]]:
    """bc.csv (overall maps per group, layer maps for all faces) and bc_pairs.csv (a sample). Matrices
    cover every face of the subset (fixed shapes); flagged maps are left out by ``bc_summary``."""
    subset = _subset_for_bc(col.person, study.seed) if len(col.path) else np.zeros(0, int)
    persons = col.person[subset]
    out, pairs = [], []
    for m, w in study.pairs(col):
        ok = ~col.arrays[schema.per_map("overall_flags", m, w)][subset]
        bc = bc_of(col.arrays[schema.per_map("overall", m, w)][subset])
        for g, rows in grouped:
            r = bc_summary(bc, persons, ok & np.isin(subset, rows), study.seed)
            out.append([m, w, "overall", g, r["bc_same_mean"], r["bc_diff_mean"], r["n_same"], r["n_diff"],
                        r["p_value"]])
            if g == "all":
                v = np.flatnonzero(ok)
                pairs += [[m, w, kind, x] for kind, x in pair_sample(bc[np.ix_(v, v)], persons[v], study.seed)]
        layers, flags = col.arrays[schema.per_map("layers", m, w)], col.arrays[schema.per_map("flags", m, w)]
        for li, tap in enumerate(study.taps[m]):
            r = bc_summary(bc_of(layers[subset, li]), persons, ~flags[subset, li], study.seed)
            out.append([m, w, tap, "all", r["bc_same_mean"], r["bc_diff_mean"], r["n_same"], r["n_diff"],
                        r["p_value"]])
    return out, pairs


def pairs_column(col: Collected, study: Study) -> str | None:
    """The manifest column same-person statistics also take pairs within (``--pairs_within``)."""
    names = attribute_names(col)
    if study.pairs_within == "none":
        return None
    if study.pairs_within == "auto":
        return next((c for c in PAIRS_WITHIN_AUTO if c in names), None)
    return study.pairs_within if study.pairs_within in names else None


def pair_scopes(col: Collected, study: Study, rows: np.ndarray) -> list[tuple[str, np.ndarray | None]]:
    """("all", None) and, with a pairs column, ("within <column>", [n, n] same-value mask) over ``rows``."""
    column = pairs_column(col, study)
    if column is None:
        return [("all", None)]
    values = np.array([col.attrs[i].get(column, "") for i in rows])
    return [("all", None), (f"within {column}", values[:, None] == values[None, :])]


@functools.cache
def _compiled(fn, static: tuple[str, ...]):
    """``core.jit(fn)``, built once per function: looked up at call time, so the tables follow ``stats``.
    Eager calls of functions with loops inside (``top_percent_mask``) retrace and recompile every time."""
    return core.jit(fn, static_argnames=static)


def specificity(values: np.ndarray, persons: np.ndarray, valid: np.ndarray, seed: int, *, draws: int,
                pair_masks: Sequence[np.ndarray | None] = (None,)) -> list[list[float]]:
    """AUC of a pairwise matrix as a same-person score with its bootstrap interval over people, Cohen's d
    with its interval, the same/different means and pair counts (``stats.person_specificity``): one row
    per pair scope (``pair_masks``: [n, n] bool, None for all pairs), all from one sort of the pairs."""
    run = _compiled(stats.person_specificity, ("num_draws", "chunk", "level", "max_people"))
    ids = dense_ids(persons)
    people = int(ids.max(initial=-1)) + 1
    # Many draws over few people: the grouped bootstrap (same statistics, ~10x faster at 1000 draws).
    grouped = draws > 1 and people <= stats.GROUPED_MAX_PEOPLE
    n = len(ids)
    masks = np.stack([np.ones((n, n), bool) if m is None else np.asarray(m, bool) for m in pair_masks])
    r = jax.device_get(run(jnp.asarray(values), jnp.asarray(ids), key=jax.random.PRNGKey(seed), num_draws=draws,
                           valid=jnp.asarray(valid), pair_mask=jnp.asarray(masks),
                           max_people=people if grouped else None))
    return [[float(r.auc[k]), float(r.auc_low[k]), float(r.auc_high[k]), float(r.d[k]), float(r.d_low[k]),
             float(r.d_high[k]), float(r.mean_same[k]), float(r.mean_diff[k]), int(r.n_same[k]), int(r.n_diff[k])]
            for k in range(len(masks))]


def _sparsity_label(percent: float | None) -> str:
    return "full" if percent is None else schema.percent_label(percent)


def _draws(layer: str, sparsity: str) -> int:
    """Bootstrap draws of a specificity row (0: point estimate only)."""
    if sparsity == HEADLINE_SPARSITY:
        return N_BOOTSTRAP if layer == "overall" else N_OTHER_DRAWS
    return N_OTHER_DRAWS if layer == "overall" else 0


def _specificity_of(maps: np.ndarray, valid: np.ndarray, col: Collected, rows: np.ndarray, study: Study,
                    scopes, layer: str) -> list[list]:
    """[layer, sparsity, scope, *specificity] rows of one set of maps [n, H, W] (flagged maps: ``valid``
    False; shapes stay fixed so one compiled program serves every layer)."""
    out = []
    for sp in SPARSITIES:
        bc = bc_of(maps, sp)
        label = _sparsity_label(sp)
        draws = _draws(layer, label)
        results = specificity(bc, col.person[rows], valid, study.seed, draws=max(draws, 1),
                              pair_masks=[mask for _, mask in scopes])
        for (scope, _), r in zip(scopes, results):
            if not draws:
                r[1:3] = r[4:6] = [float("nan")] * 2
            out.append([layer, label, scope, *r])
    return out


def specificity_rows(col: Collected, study: Study) -> list[list]:
    """specificity.csv: is a map person-specific? Per model, weighting, layer (overall first), sparsity
    and pair scope: AUC of BC as a same-person score and Cohen's d, with bootstrap intervals over people."""
    rows = _subset_for_bc(col.person, study.seed) if len(col.path) else np.zeros(0, int)
    out: list[list] = []
    if len(rows) < 2:
        return out
    scopes = pair_scopes(col, study, rows)
    for m, w in study.pairs(col):
        valid = ~col.arrays[schema.per_map("overall_flags", m, w)][rows]
        overall = col.arrays[schema.per_map("overall", m, w)][rows]
        out += [[m, w, *r] for r in _specificity_of(overall, valid, col, rows, study, scopes, "overall")]
        layers, flags = col.arrays[schema.per_map("layers", m, w)], col.arrays[schema.per_map("flags", m, w)]
        for li, tap in enumerate(study.taps[m]):
            out += [[m, w, *r] for r in _specificity_of(layers[rows, li], ~flags[rows, li], col, rows, study,
                                                         scopes, tap)]
    return out


def sanity_rows(sanity: dict[str, np.ndarray] | None, study: Study) -> list[list]:
    """sanity.csv: each cascade step's maps against the trained model's (Spearman and BC, mean over the
    subset's faces with a bootstrap interval)."""
    out: list[list] = []
    if sanity is None:
        return out
    for m in study.models:
        steps, taps = sanity.get(schema.sanity_steps(m)), sanity.get(schema.sanity_taps(m))
        if steps is None:
            continue
        for w in study.weightings:
            sp, bc = sanity.get(schema.sanity(m, w, "spearman")), sanity.get(schema.sanity(m, w, "bc"))
            if sp is None:
                continue
            for i, k in enumerate(steps.tolist()):
                first = str(taps[len(taps) - k]) if 0 < k <= len(taps) else ""
                out.append([m, w, k, len(taps), k / len(taps), first, *mean_ci(sp[i], study.seed),
                            *mean_ci(bc[i], study.seed), sp.shape[1]])
    return out


def deletion_rows(col: Collected, study: Study, grouped) -> list[list]:
    """deletion.csv: area under each method's deletion curve Δcos(p) over the occlusion percents
    (``stats.deletion_area``: the curve's mean height, Δcos units), per face, mean with a bootstrap CI."""
    out: list[list] = []
    percents = tuple(sorted(study.occlusion_percents))
    if len(percents) < 2:
        return out
    for m, w in study.pairs(col):
        for fill in study.fills:
            for method in METHODS:
                keys = [schema.occlusion(m, w if method == "leam" else method, fill, p) for p in percents]
                if not all(k in col.arrays for k in keys):
                    continue
                curves = np.stack([col.arrays[k] for k in keys], axis=-1)
                area = np.asarray(stats.deletion_area(percents, jnp.asarray(curves)))
                for g, rows in grouped:
                    out.append([m, w, g, fill, percents[0], percents[-1], method, *mean_ci(area[rows], study.seed),
                                len(rows)])
    return out


@functools.cache
def _layer_bc(diversity: Callable) -> Callable:
    """Compiled BC between a face's layer maps, built once per ``stats.layer_diversity`` (looked up at call time)."""
    return core.jit(lambda layers: diversity(layers)[0])


@functools.cache
def _model_bc(agreement: Callable) -> Callable:
    """Compiled BC between two models' maps of a face [n, 2, H, W], once per ``stats.model_agreement``."""
    return core.jit(lambda both: agreement(both[:, 0], both[:, 1]))


def layer_diversity_rows(col: Collected, study: Study) -> list[list]:
    """layer_diversity.csv: BC between layer maps of one face (``stats.layer_diversity``), mean over faces."""
    out = []
    for m, w in study.pairs(col):
        layers = normalised(col.arrays[schema.per_map("layers", m, w)])
        if not len(layers):
            continue
        div = batching.batched(_layer_bc(stats.layer_diversity), layers, min(CHUNK, len(layers)))
        mean = div.astype(np.float64).mean(0)
        taps = study.taps[m]
        out += [[m, w, ta, tb, mean[a, b]] for a, ta in enumerate(taps) for b, tb in enumerate(taps)]
    return out


def model_agreement_rows(col: Collected, study: Study) -> list[list]:
    """model_agreement.csv: BC between two models' overall maps of the same face (``stats.model_agreement``)."""
    out, n = [], len(col.path)
    for w in study.weightings:
        for i, a in enumerate(study.models):
            for b in study.models[i + 1:]:
                ka, kb = schema.per_map("overall", a, w), schema.per_map("overall", b, w)
                if ka in col.arrays and kb in col.arrays and n:
                    both = np.stack([normalised(col.arrays[ka]), normalised(col.arrays[kb])], axis=1)
                    bc = batching.batched(_model_bc(stats.model_agreement), both, min(CHUNK, n))
                    out.append([w, a, b, float(bc.astype(np.float64).mean()), n])
    return out


def occlusion_rows(col: Collected, study: Study, grouped) -> list[list]:
    """occlusion.csv: mean Δcos (bootstrap CI) of LEAM's, the baselines' and random top-p% pixels."""
    out = []
    for m, w in study.pairs(col):
        for g, rows in grouped:
            for fill in study.fills:
                for p in study.occlusion_percents:
                    for method in METHODS:
                        arr = col.arrays.get(schema.occlusion(m, w if method == "leam" else method, fill, p))
                        if arr is not None:
                            out.append([m, w, g, fill, p, method, *mean_ci(arr[rows], study.seed), len(rows)])
    return out


def transfer_rows(col: Collected, study: Study) -> list[list]:
    """transfer.csv: Δcos on the target model of the source model's top pixels."""
    out, n = [], len(col.path)
    for m in study.models:
        for w in study.weightings:
            for dst in study.models:
                arr = col.arrays.get(schema.transfer(w, m, dst))
                if arr is not None:
                    out.append([w, study.fill0, study.transfer_percent, m, dst,
                                float(np.mean(arr)) if n else float("nan"), n])
    return out


def verification_rows(col: Collected, study: Study) -> list[list]:
    """verification.csv: AUC and TAR at FAR 1% of cosine scores over all pairs (``stats``)."""
    out = []
    for m in study.models:
        emb = col.arrays.get(schema.per_model("emb", m))
        if emb is None or len(emb) < 2:
            continue
        scores, same = _compiled(stats.pair_scores, ("metric",))(jnp.asarray(emb), jnp.asarray(dense_ids(col.person)))
        n_same = int(jnp.sum(same))
        auc = float(_compiled(stats.roc_auc, ())(scores, same)) if n_same else float("nan")
        tar = float(_compiled(stats.tar_at_far, ("far",))(scores, same, far=0.01)) if n_same else float("nan")
        out.append([m, auc, tar, n_same, int(same.shape[0]) - n_same])
    return out


def _find(rows, match: dict[int, object]):
    """The first row whose columns (by index) hold the given values."""
    hit = [r for r in rows if all(r[i] == v for i, v in match.items())]
    return hit[0] if hit else None


def _headline_specificity(spec_out: list[list], m: str, w: str) -> list:
    """[scope, auc, low, high, d] at the headline sparsity: within the pairs column where there is one."""
    cands = [r for r in spec_out if r[0] == m and r[1] == w and r[2] == "overall" and r[3] == HEADLINE_SPARSITY]
    r = next((c for c in cands if c[4] != "all"), cands[0] if cands else None)
    return [r[4], r[5], r[6], r[7], r[8]] if r else ["", float("nan")] + [float("nan")] * 3


def _random_spearman(sanity_out: list[list], m: str, w: str) -> tuple[float, float]:
    """(Spearman to the trained maps at the first cascade step, with every layer randomised)."""
    steps = [r for r in sanity_out if r[0] == m and r[1] == w]
    if not steps:
        return float("nan"), float("nan")
    last = [r for r in steps if r[2] == r[3]]
    return steps[0][6], (last[0][6] if last else float("nan"))


def headline_rows(study: Study, regions_out: list[list], bc_out: list[list], occ_out: list[list],
                  spec_out: list[list] = (), sanity_out: list[list] = ()) -> list[list]:
    """headline.csv per model and weighting, taken from the rows of the other tables (group "all"):
    person-specificity (AUC with its interval, Cohen's d; BC same vs different and the permutation
    p-value), the randomisation check, the critical region's share of the top pixels against its
    area share, and Δcos of LEAM's top pixels against random."""
    out = []
    for m, w in dict.fromkeys((r[0], r[1]) for r in regions_out):
        bc = _find(bc_out, {0: m, 1: w, 2: "overall", 3: "all"})
        crit = _find(regions_out, {0: m, 1: w, 2: "all", 3: study.headline_top, 4: regions.CRITICAL_REGION})
        occ = {meth: _find(occ_out, {0: m, 1: w, 2: "all", 3: study.fill0, 4: study.headline_occlusion, 5: meth})
               for meth in ("leam", "random")}
        dl, dr = (occ[k][6] if occ[k] is not None else float("nan") for k in ("leam", "random"))
        scope, auc, lo, hi, d = _headline_specificity(spec_out, m, w)
        sp_first, sp_random = _random_spearman(sanity_out, m, w)
        out.append([m, w, study.target, HEADLINE_SPARSITY, scope, auc, lo, hi, d, bc[4], bc[5], bc[8],
                    sp_first, sp_random, crit[5], crit[9], dl, dr, dl / dr if dr > 0 else float("nan")])
    return out


def validity_rows(headline_out: list[list]) -> list[list]:
    """validity.csv: the four criteria of LEAM_SPEC section 6 per model and weighting, from the headline:
    person-specific (AUC >= MIN_AUC), survives randomisation (Spearman with every layer random
    <= MAX_RANDOM_SPEARMAN and below the first step's), beats random pixels (top-p% Δcos >=
    MIN_OCCLUSION_RATIO x random), critical region enriched (share of the top pixels > area share).
    A criterion without its measurement is empty, not passed."""
    out = []
    for r in headline_out:
        auc, sp_first, sp_random, share, area, ratio = r[5], r[12], r[13], r[14], r[15], r[18]
        checks = [auc >= MIN_AUC if np.isfinite(auc) else None,
                  (sp_random <= MAX_RANDOM_SPEARMAN and sp_random < sp_first) if np.isfinite(sp_random) else None,
                  ratio >= MIN_OCCLUSION_RATIO if np.isfinite(ratio) else None,
                  share > area if np.isfinite(share) and np.isfinite(area) else None]
        out.append([r[0], r[1], r[2], auc, sp_random, ratio, share, area,
                    *["" if c is None else int(c) for c in checks], sum(bool(c) for c in checks)])
    return out


def mean_maps(col: Collected, study: Study) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The mean overall map (frame) and mean layer maps per model/weighting, from the shard sums."""
    overall, layers = {}, {}
    if not len(col.path):
        return overall, layers
    for m, w in study.pairs(col):
        key = f"{m}/{w}"
        s = col.sums[schema.per_map("overall_sum", m, w)]
        overall[key] = (s / max(s.sum(), 1e-30)).astype(np.float32)
        ls = col.sums[schema.per_map("layers_sum", m, w)]
        layers[key] = (ls / np.maximum(ls.sum(axis=(1, 2), keepdims=True), 1e-30)).astype(np.float32)
    return overall, layers


HEADERS = {
    "region_shares": ["model", "weighting", "group", "top_percent", "region", "share_mean", "share_ci_low",
                      "share_ci_high", "mass_mean", "area_share_mean", "enrichment_mean", "n_images"],
    "bc": ["model", "weighting", "layer", "group", "bc_same_mean", "bc_diff_mean", "n_same", "n_diff", "p_value"],
    "bc_pairs": ["model", "weighting", "kind", "bc"],
    "layer_diversity": ["model", "weighting", "layer_a", "layer_b", "bc_mean"],
    "model_agreement": ["weighting", "model_a", "model_b", "bc_mean", "n"],
    "occlusion": ["model", "weighting", "group", "fill", "percent", "method", "dcos_mean", "dcos_ci_low",
                  "dcos_ci_high", "n"],
    "transfer": ["weighting", "fill", "percent", "source_model", "target_model", "dcos_mean", "n"],
    "headline": ["model", "weighting", "target", "sparsity", "pairs", "auc", "auc_ci_low", "auc_ci_high", "cohens_d",
                 "bc_same", "bc_diff", "bc_p_value", "spearman_first_step", "spearman_all_random", "critical_share",
                 "critical_area_share", "dcos_leam_1", "dcos_random_1", "leam_over_random_1"],
    "specificity": ["model", "weighting", "layer", "sparsity", "pairs", "auc", "auc_ci_low", "auc_ci_high",
                    "cohens_d", "d_ci_low", "d_ci_high", "bc_same_mean", "bc_diff_mean", "n_same", "n_diff"],
    "sanity": ["model", "weighting", "step", "num_layers", "fraction_randomised", "first_randomised_layer",
               "spearman_mean", "spearman_ci_low", "spearman_ci_high", "bc_mean", "bc_ci_low", "bc_ci_high", "n"],
    "deletion": ["model", "weighting", "group", "fill", "percent_from", "percent_to", "method", "area_mean",
                 "area_ci_low", "area_ci_high", "n"],
    "validity": ["model", "weighting", "target", "auc", "spearman_all_random", "leam_over_random_1", "critical_share",
                 "critical_area_share", "person_specific", "survives_randomisation", "beats_random_pixels",
                 "critical_region_enriched", "criteria_met"],
    "verification": ["model", "auc", "tar_at_far_1pct", "n_same", "n_diff"],
}


def compute_tables(col: Collected, study: Study, sanity: dict[str, np.ndarray] | None = None) -> dict[str, list[list]]:
    """Every table's rows (table name -> rows in ``HEADERS`` order)."""
    grouped = groups(col, study)
    out = {"region_shares": region_rows(col, study, grouped)}
    out["bc"], out["bc_pairs"] = bc_rows(col, study, grouped)
    out["layer_diversity"] = layer_diversity_rows(col, study)
    out["model_agreement"] = model_agreement_rows(col, study)
    out["occlusion"] = occlusion_rows(col, study, grouped)
    out["transfer"] = transfer_rows(col, study)
    out["specificity"] = specificity_rows(col, study)
    out["sanity"] = sanity_rows(sanity, study)
    out["deletion"] = deletion_rows(col, study, grouped)
    out["headline"] = headline_rows(study, out["region_shares"], out["bc"], out["occlusion"], out["specificity"],
                                    out["sanity"])
    out["validity"] = validity_rows(out["headline"])
    out["verification"] = verification_rows(col, study)
    return out


def _write_inputs(out_dir: Path, col: Collected, rejected: Sequence[tuple[str, str]]) -> None:
    write_csv(out_dir / "failures.csv", ["path", "reason"], [*col.failures, *rejected])
    names = attribute_names(col)
    write_csv(out_dir / "tables" / "images.csv", ["image_id", "path", "person", "face_index", *names],
              [[i, col.path[i], col.person[i], int(col.face_index[i]), *[col.attrs[i].get(k, "") for k in names]]
               for i in range(len(col.path))])


def write_tables(out_dir: Path, shard_arrays: Sequence[dict[str, np.ndarray]], settings: dict,
                 sanity: dict[str, np.ndarray] | None = None,
                 writers: Sequence[Callable[[Path, Collected, Study], None]] = (),
                 rejected: Sequence[tuple[str, str]] = ()) -> dict:
    """Write tables/, maps/ and failures.csv (``sanity``: the randomisation check's arrays, if run;
    ``writers``: more outputs from the same collected shards, e.g. the per-person tables;
    ``rejected``: (path, reason) of inputs dropped before the sweep, e.g. duplicates);
    return counts for summary.json."""
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    col, study = collect(shard_arrays), Study.from_settings(settings)
    _write_inputs(out_dir, col, rejected)
    for name, rows in compute_tables(col, study, sanity).items():
        write_csv(out_dir / "tables" / f"{name}.csv", HEADERS[name], rows)
    overall, layers = mean_maps(col, study)
    save_npz(out_dir / "maps" / "mean_overall.npz", overall)
    save_npz(out_dir / "maps" / "mean_layers.npz",
              {**layers, **{f"taps/{m}": np.array(study.taps[m], dtype=str) for m in study.models}})
    if sanity is not None:
        save_npz(out_dir / "maps" / "sanity.npz", sanity)  # the report's randomisation figure
    buf = io.BytesIO()
    np.save(buf, col.labels_hist.argmax(0).astype(np.int16))
    files.write_atomic(out_dir / "maps" / "mean_labels.npy", buf.getvalue())
    for write in writers:
        write(out_dir, col, study)
    return {"faces": len(col.path), "people": len(set(col.person.tolist())),
            "failures": len(col.failures) + len(rejected),
            "images_with_faces": len(set(col.path.tolist()))}


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz whose bytes depend only on the arrays (fixed zip timestamps), so reruns compare equal."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    files.write_atomic(path, buf.getvalue())
