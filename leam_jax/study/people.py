"""Person-by-person views of a sweep: one table row per person and their mean maps.

The paper is about individuals: how consistently a model looks at one
person's face across photos, and where that differs from everyone else.
This module turns a :class:`~leam_jax.study.tables.Collected` into

* ``tables/people.csv`` (:func:`people_rows`, columns :data:`PEOPLE_HEADER`),
  one row per (model, weighting, person) with at least one valid overall map
  (``overall_flags`` false);
* ``maps/people.npz`` (:func:`people_maps`), mean maps, differences from the
  population and region shares of up to ``cap`` people for the default
  weighting (``study.weightings[0]``).

Definitions (all on maps renormalised with ``core.normalize_maps``):

* **consistency**: mean BC (``stats.bc_matrix``) over the pairs i < j of the
  person's own maps; 95% CI by a seeded bootstrap over the person's *images*
  (images resampled with replacement, pairs of the same original image
  dropped), given from 3 images up (with 2 there is one pair and nothing to
  resample).
* **consistency_vs_others**: mean BC over the pairs (a face of this person,
  a face of anyone else). BC is linear in sqrt(Q), so the mean over a set of
  maps Q_j equals ``stats.bhattacharyya(P, q)`` with
  ``q = (mean_j sqrt(Q_j))^2``: one [S, S] sum instead of an [n_p, N] matrix.
* **population**: every person counted once (as the spec's ``population``
  target): the population mean map is the mean of the people's mean maps, and
  the population share of a region is the mean of the people's mean shares.
  (``region_shares.csv`` averages over faces instead, so a person with many
  photos weighs more there.) The person is part of the population.
* **distinctiveness**: ``1 - BC(person mean map, population mean map)``.
* **critical share**: the person's mean share of the top ``study.headline_top``
  % pixels in ``regions.CRITICAL_REGION``, and the population's.
* **top region**: the region (classes other than background, and the groups of
  ``regions.REGION_GROUPS``) with the largest ratio person share / population
  share among those whose population share exceeds
  :data:`MIN_POPULATION_SHARE`; ties go to the first in :data:`REGIONS`.

:func:`write_people` writes both; the study calls it after ``tables.write_tables``
(which does not import this module).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from leam_jax import batching, core, stats
from leam_jax.face import regions
from leam_jax.study import schema
from leam_jax.study.tables import CHUNK, N_BOOTSTRAP, REGIONS, Collected, Study, normalised, save_npz, write_csv

PEOPLE_HEADER = [
    "model", "weighting", "person", "n_images", "consistency", "consistency_ci_low", "consistency_ci_high",
    "n_pairs", "consistency_vs_others", "distinctiveness", "critical_share", "critical_share_population",
    "top_region", "top_region_share", "top_region_population_share", "top_region_ratio",
]
MIN_POPULATION_SHARE = 0.01  # a region rarer than this in the population gives unstable ratios
MIN_CI_IMAGES = 3  # fewer images: no bootstrap interval (two images are one pair)
REGION_NAMES = tuple(REGIONS)  # the order of every region vector below
_MEMBERS = [[regions.CLASS_ID[c] for c in members] for members in REGIONS.values()]


@dataclasses.dataclass
class Population:
    """One (model, weighting): every valid map, and what each person is compared with."""

    maps: np.ndarray  # [V, S, S] float32 the valid overall maps, normalised, in run order
    faces: np.ndarray  # [V] their rows in the Collected
    index: dict[str, np.ndarray]  # person -> positions in ``maps`` (people sorted by id)
    mean_map: np.ndarray  # [S, S] mean of the people's mean maps, normalised
    root_sum: np.ndarray  # [S, S] float64 sum over all valid maps of sqrt(map)
    shares: dict[str, np.ndarray]  # person -> [P, R] mean share of the top-p% pixels per region
    share_mean: np.ndarray  # [P, R] mean of the people's shares

    def person(self, p: str) -> np.ndarray:
        """One person's normalised maps, [n, S, S]."""
        return self.maps[self.index[p]]


def mean_map(maps: np.ndarray) -> np.ndarray:
    """Mean of normalised maps [n, S, S], renormalised -> [S, S]."""
    return normalised(maps.astype(np.float64).mean(0, keepdims=True))[0]


def region_shares(share: np.ndarray) -> np.ndarray:
    """Per-face class shares [n, P, C] -> the mean share per region of ``REGION_NAMES``, [P, R]."""
    mean = share.astype(np.float64).mean(0)
    return np.stack([mean[:, ci].sum(1) for ci in _MEMBERS], axis=1)


def _normalised_with_roots(stored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored maps [V, S, S] -> (normalised float32, sum of their square roots [S, S] float64), in
    chunks of ``CHUNK`` (two compiled shapes; one float32 copy of the maps, no more)."""
    out = np.empty(stored.shape, np.float32)
    roots = np.zeros(stored.shape[1:])
    for s in batching.chunks(len(stored), CHUNK):
        out[s] = normalised(stored[s])
        roots += np.sqrt(np.maximum(out[s], 0)).sum(0, dtype=np.float64)
    return out, roots


def population(col: Collected, model: str, weighting: str) -> Population:
    """Normalises the valid maps of one (model, weighting) once and sums what the rows need.

    Memory: one float32 copy of the valid maps (as ``tables.bc_rows`` makes), never [N, N, S, S].
    """
    faces = np.flatnonzero(~col.arrays[schema.per_map("overall_flags", model, weighting)])
    stored = col.arrays[schema.per_map("overall", model, weighting)]
    maps, root_sum = (_normalised_with_roots(stored[faces]) if len(faces)
                      else (np.zeros((0, *stored.shape[1:]), np.float32), np.zeros(stored.shape[1:])))
    ids, inverse = np.unique(col.person[faces], return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    index = dict(zip(ids.tolist(), np.split(order, np.cumsum(np.bincount(inverse.reshape(-1)))[:-1])))
    share = col.arrays[schema.per_map("share", model, weighting)]
    shares = {p: region_shares(share[faces[i]]) for p, i in index.items()}
    n = max(len(index), 1)
    map_sum = sum((maps[i].astype(np.float64).mean(0) for i in index.values()), np.zeros(stored.shape[1:]))
    share_mean = sum(shares.values(), np.zeros((share.shape[1], len(REGION_NAMES)))) / n
    return Population(maps, faces, index, mean_map(map_sum[None] / n), root_sum, shares, share_mean)


@core.jit
def _bc_person(maps, q):
    return stats.bc_matrix(maps), stats.bhattacharyya(maps, q[None])


def person_bc(maps: np.ndarray, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(``stats.bc_matrix`` of one person's maps [n, n], ``stats.bhattacharyya`` of each with
    ``q`` [n]), float64. Rows are zero-padded to a power of two: one compile per size class,
    not per person (a zero map has BC 0 with everything and is cut off)."""
    n = len(maps)
    padded = np.zeros((max(2, 1 << (n - 1).bit_length()), *maps.shape[1:]), np.float32)
    padded[:n] = maps
    bc, to_q = _bc_person(padded, np.asarray(q, np.float32))
    return np.asarray(bc, np.float64)[:n, :n], np.asarray(to_q, np.float64)[:n]


def bootstrap_pairs(bc: np.ndarray, seed: int) -> tuple[float, float]:
    """95% percentile CI of the mean off-diagonal entry of a symmetric [n, n] matrix when the n
    items are resampled with replacement; pairs of one item with a copy of itself are left out.

    A draw with counts w has mean (w' B0 w) / ((sum w)^2 - sum w^2), B0 = B with a zero diagonal.
    """
    n = len(bc)
    off = np.asarray(bc, np.float64) * (1 - np.eye(n))
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1 / n), size=N_BOOTSTRAP).astype(np.float64)
    den = w.sum(1) ** 2 - (w ** 2).sum(1)
    ok = den > 0  # a draw of one image only has no pair
    means = ((w @ off) * w).sum(1)[ok] / den[ok]
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def consistency(bc: np.ndarray, seed: int) -> tuple[float, float, float, int]:
    """(mean over pairs i < j, CI low, CI high, number of pairs) of one person's [n, n] BC matrix."""
    n = len(bc)
    if n < 2:
        return math.nan, math.nan, math.nan, 0
    mean = float(bc[np.triu_indices(n, 1)].mean())
    lo, hi = bootstrap_pairs(bc, seed) if n >= MIN_CI_IMAGES else (math.nan, math.nan)
    return mean, lo, hi, n * (n - 1) // 2


def top_region(person: np.ndarray, pop: np.ndarray) -> tuple[str, float, float, float]:
    """(region, person share, population share, ratio) of the most over-represented region among
    those with a population share above ``MIN_POPULATION_SHARE``; ("", nan...) when none."""
    best = ("", math.nan, math.nan, math.nan)
    for k, name in enumerate(REGION_NAMES):
        if pop[k] > MIN_POPULATION_SHARE:
            ratio = float(person[k] / pop[k])
            if not best[0] or ratio > best[3]:  # strictly larger: ties keep the earlier region
                best = (name, float(person[k]), float(pop[k]), ratio)
    return best


def _row(study: Study, m: str, w: str, pop: Population, p: str) -> list:
    """One people.csv row."""
    maps = pop.person(p)
    n_others = len(pop.maps) - len(maps)
    own_roots = np.sqrt(np.maximum(maps, 0)).sum(0, dtype=np.float64)
    # BC is linear in sqrt(Q): mean_j BC(P, Q_j) = BC(P, (mean_j sqrt Q_j)^2), no [n, N] matrix.
    q = ((pop.root_sum - own_roots) / max(n_others, 1)) ** 2
    bc, to_others = person_bc(maps, q)
    c, lo, hi, n_pairs = consistency(bc, study.seed)
    distinct = 1.0 - float(stats.bhattacharyya(jnp.asarray(mean_map(maps)), jnp.asarray(pop.mean_map)))
    pi = study.top_percents.index(study.headline_top)
    crit = REGION_NAMES.index(regions.CRITICAL_REGION)
    own, everyone = pop.shares[p][pi], pop.share_mean[pi]
    return [m, w, p, len(maps), c, lo, hi, n_pairs, float(to_others.mean()) if n_others else math.nan, distinct,
            float(own[crit]), float(everyone[crit]), *top_region(own, everyone)]


def people_rows(col: Collected, study: Study) -> list[list]:
    """tables/people.csv rows (``PEOPLE_HEADER`` order): per model and weighting with results,
    per person with at least one valid map, people sorted by id."""
    out = []
    for m, w in study.pairs(col):
        pop = population(col, m, w)
        out += [_row(study, m, w, pop, p) for p in pop.index]
    return out


def choose_people(col: Collected, cap: int) -> list[str]:
    """The ``cap`` people with the most faces in the run (the best-measured consistency), ties by id."""
    ids, counts = np.unique(col.person, return_counts=True)
    order = sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: (-t[1], t[0]))
    return [p for p, _ in order[:max(cap, 0)]]


def people_maps(col: Collected, study: Study, *, cap: int) -> dict[str, np.ndarray]:
    """maps/people.npz: the chosen people's mean maps for the default weighting.

    Keys (``i`` indexes ``people``; a person without a valid map for a model has no keys there):

    ==============================  ===================================================
    ``people``                      [K] str, :func:`choose_people` order
    ``face_path``, ``face_index``   [K] the person's first face in run order (for
                                    ``--report_faces``: a path, never pixels)
    ``weighting``, ``top_percent``  0-d: the weighting shown, the share threshold
    ``models``, ``regions``         [M] models with results, [R] ``REGION_NAMES``
    ``population/{m}/{w}``          [S, S] float32 population mean map (each person once)
    ``population_share/{m}/{w}``    [R] float32 population mean share at ``top_percent``
    ``mean/{m}/{w}/{i}``            [S, S] float32 the person's mean map (normalised)
    ``diff/{m}/{w}/{i}``            [S, S] float32 mean minus population (sums to 0)
    ``share/{m}/{w}/{i}``           [R] float32 the person's mean share at ``top_percent``
    ==============================  ===================================================
    """
    chosen = choose_people(col, cap)
    w = study.weightings[0] if study.weightings else ""
    models = [m for m, w2 in study.pairs(col) if w2 == w]
    first = [int(np.flatnonzero(col.person == p)[0]) for p in chosen]
    pi = study.top_percents.index(study.headline_top)
    out = {"people": np.array(chosen, dtype=str), "weighting": np.array(w, dtype=str),
           "face_path": np.array([str(col.path[i]) for i in first], dtype=str),
           "face_index": np.array([int(col.face_index[i]) for i in first], np.int32),
           "models": np.array(models, dtype=str), "regions": np.array(REGION_NAMES, dtype=str),
           "top_percent": np.array(study.headline_top, np.float64)}
    for m in models:
        pop = population(col, m, w)
        out[f"population/{m}/{w}"] = pop.mean_map.astype(np.float32)
        out[f"population_share/{m}/{w}"] = pop.share_mean[pi].astype(np.float32)
        for i, p in enumerate(chosen):
            if p in pop.index:
                mean = mean_map(pop.person(p))
                out[f"mean/{m}/{w}/{i}"] = mean.astype(np.float32)
                out[f"diff/{m}/{w}/{i}"] = (mean - pop.mean_map).astype(np.float32)
                out[f"share/{m}/{w}/{i}"] = pop.shares[p][pi].astype(np.float32)
    return out


def _number(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def most_least_consistent(rows: Sequence[Mapping[str, object]], *, model: str, weighting: str,
                          k: int = 5) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
    """The most and the least consistent people of one model and weighting, up to ``k`` each.

    ``rows`` are people.csv rows as mappings (``csv.DictReader`` strings, or
    ``dict(zip(PEOPLE_HEADER, row))``); people without a consistency (one image)
    are left out. Most: descending; least: ascending; ties by person id. No one
    is in both lists: with fewer than 2k people, the upper half (rounded up) is
    "most" and the rest "least".
    """
    sel = [r for r in rows if r["model"] == model and r["weighting"] == weighting
           and math.isfinite(_number(r["consistency"]))]
    ranked = sorted(sel, key=lambda r: (-_number(r["consistency"]), str(r["person"])))
    n_most = min(k, math.ceil(len(ranked) / 2))
    n_least = min(k, len(ranked) - n_most)
    least = sorted(ranked[n_most:], key=lambda r: (_number(r["consistency"]), str(r["person"])))[:n_least]
    return ranked[:n_most], least


def write_people(out_dir, col: Collected, study: Study, *, cap: int) -> None:
    """``tables/people.csv`` and ``maps/people.npz`` (``cap``: people with maps of their own)."""
    write_csv(out_dir / "tables" / "people.csv", PEOPLE_HEADER, people_rows(col, study))
    save_npz(out_dir / "maps" / "people.npz", people_maps(col, study, cap=cap))
