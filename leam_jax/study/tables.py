"""Finalise a sweep: shard files -> tables (CSV), mean maps and summary.json.

Runs in numpy over the stored shards, in shard order, with seeded resampling,
so the same shards always give byte-identical tables. Column meanings are in
BUILD.md ("Study outputs").
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leam_jax import verification
from leam_jax.face import regions

N_BOOTSTRAP = 1000
N_PERMUTATIONS = 1000
MAX_BC_FACES = 4000  # all-pairs BC above this many faces uses a seeded subset of people
MAX_GROUP_VALUES = 20  # attribute columns with more distinct values are not grouped by default
MAX_PAIR_ROWS = 2000  # per kind, in bc_pairs.csv (histograms)
CLASSES = regions.CLASSES
_C = {c: i for i, c in enumerate(CLASSES)}
# Derived regions (sums of classes) reported next to the classes themselves.
DERIVED = {
    "nose_all": ("nose", "nose_bridge", "nose_tip"),
    "eyes": ("l_eye", "r_eye"),
    "brows": ("l_brow", "r_brow"),
    "eyes_brows_nose": ("l_eye", "r_eye", "l_brow", "r_brow", "nose", "nose_bridge", "nose_tip"),
    "face": tuple(c for c in CLASSES if c != "background"),
}
REGIONS = {**{c: (c,) for c in CLASSES if c != "background"}, **DERIVED}


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
        failures += list(zip(arrays["fail/path"].tolist(), arrays["fail/reason"].tolist()))
        if len(arrays["meta/path"]) == 0:
            continue
        attrs += [dict(json.loads(a)) for a in arrays["meta/attrs"].tolist()]
        labels = arrays["meta/labels"]
        h = np.stack([(labels == c).sum(0) for c in range(len(CLASSES))]).astype(np.int64)
        hist = h if hist is None else hist + h
        for k, v in arrays.items():
            if k.startswith(("fail/", "meta/attrs", "meta/labels")):
                continue
            if k.startswith(("overall_sum/", "layers_sum/")):
                sums[k] = sums[k] + v.astype(np.float64) if k in sums else v.astype(np.float64)
            else:
                per_face.setdefault(k, []).append(v)
    cat = {k: np.concatenate(v) for k, v in per_face.items()}
    empty = np.array([], dtype=str)
    return Collected(cat.pop("meta/path", empty), cat.pop("meta/person", empty),
                     cat.pop("meta/face_index", np.zeros(0, np.int32)), attrs,
                     hist if hist is not None else np.zeros((len(CLASSES), 1, 1), np.int64), cat, sums, failures)


# -- small statistics -------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (float, np.floating)):
        return "" if not np.isfinite(v) else f"{float(v):.6g}"
    return str(v)


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        w.writerow([_fmt(v) for v in r])
    path.write_text(buf.getvalue(), encoding="utf-8")


def mean_ci(values: np.ndarray, seed: int) -> tuple[float, float, float]:
    """Mean and a 95% percentile-bootstrap interval over rows (seeded: reproducible)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    idx = np.random.default_rng(seed).integers(0, v.size, (N_BOOTSTRAP, v.size))
    boot = v[idx].mean(axis=1)
    return float(v.mean()), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def _bc_matrix(maps: np.ndarray) -> np.ndarray:
    roots = np.sqrt(np.maximum(maps.reshape(len(maps), -1).astype(np.float64), 0))
    return roots @ roots.T


def _normalise(maps: np.ndarray) -> np.ndarray:
    m = maps.astype(np.float64)
    s = m.reshape(len(m), -1).sum(1)
    return m / np.where(s > 0, s, 1.0).reshape(-1, *([1] * (m.ndim - 1)))


def bc_same_diff(maps: np.ndarray, persons: np.ndarray, seed: int) -> dict:
    """Mean BC over same-person and different-person pairs i < j, and a one-sided
    permutation p-value (person labels shuffled) for same > different."""
    n = len(maps)
    out = {"bc_same_mean": float("nan"), "bc_diff_mean": float("nan"), "n_same": 0, "n_diff": 0, "p_value": None}
    if n < 2:
        return out
    bc = _bc_matrix(maps)
    iu = np.triu_indices(n, 1)
    ids = np.unique(persons, return_inverse=True)[1].reshape(-1)
    same = ids[iu[0]] == ids[iu[1]]
    vals = bc[iu]
    n_same, n_diff = int(same.sum()), int((~same).sum())
    total = vals.sum()
    s_sum = vals[same].sum()
    out.update(n_same=n_same, n_diff=n_diff)
    if n_same:
        out["bc_same_mean"] = float(s_sum / n_same)
    if n_diff:
        out["bc_diff_mean"] = float((total - s_sum) / n_diff)
    if n_same and n_diff:
        a, b = iu[0][same], iu[1][same]
        rng = np.random.default_rng(seed)
        observed = s_sum / n_same - (total - s_sum) / n_diff
        hits = 0
        for _ in range(N_PERMUTATIONS):
            inv = rng.permutation(n)  # relabel: face k takes the label of face inv[k]
            ps = bc[inv[a], inv[b]].sum()
            hits += (ps / n_same - (total - ps) / n_diff) >= observed - 1e-15
        out["p_value"] = (1 + hits) / (1 + N_PERMUTATIONS)
    return out


def pair_sample(maps: np.ndarray, persons: np.ndarray, seed: int) -> list[tuple[str, float]]:
    n = len(maps)
    if n < 2:
        return []
    bc = _bc_matrix(maps)
    iu = np.triu_indices(n, 1)
    ids = np.unique(persons, return_inverse=True)[1].reshape(-1)
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


# -- the tables -------------------------------------------------------------------------------


def write_tables(out_dir: Path, shard_arrays: Sequence[dict[str, np.ndarray]], settings: dict) -> dict:
    """Write tables/, maps/ and failures.csv; return counts for summary.json."""
    out_dir = Path(out_dir)
    (out_dir / "tables").mkdir(parents=True, exist_ok=True)
    (out_dir / "maps").mkdir(parents=True, exist_ok=True)
    col = collect(shard_arrays)
    seed = int(settings["seed"])
    models = list(settings["models"])
    weightings = list(settings["weightings"])
    top_percents = [float(p) for p in settings["top_percents"]]
    occ_percents = [float(p) for p in settings["occlusion_percents"]]
    fills = list(settings["occlusion_fills"])
    fill0 = (fills or [""])[0]  # the fill of the transfer matrix and the headline
    taps = settings["taps"]
    n = len(col.path)
    t = out_dir / "tables"

    with open(out_dir / "failures.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "reason"])
        w.writerows(col.failures)

    attr_names: list[str] = []
    for a in col.attrs:
        attr_names += [k for k in a if k not in attr_names]
    write_csv(t / "images.csv", ["image_id", "path", "person", "face_index", *attr_names],
              [[i, col.path[i], col.person[i], int(col.face_index[i]), *[col.attrs[i].get(k, "") for k in attr_names]]
               for i in range(n)])
    groups: list[tuple[str, np.ndarray]] = [("all", np.arange(n))]
    for k in group_columns(col.attrs, attr_names, settings.get("group_by") or []):
        values = np.array([a.get(k, "") for a in col.attrs])
        for v in sorted(set(values.tolist())):
            groups.append((f"{k}={v}", np.flatnonzero(values == v)))

    region_rows, bc_rows, pair_rows, div_rows, occ_rows, agree_rows, transfer_rows = [], [], [], [], [], [], []
    headline, mean_overall, mean_layers = [], {}, {}
    area = col.arrays.get("area", np.zeros((0, len(CLASSES))))
    bc_rows_idx = _subset_for_bc(col.person, seed) if n else np.zeros(0, int)
    for m in models:
        for w in weightings:
            key = f"{m}/{w}"
            if f"share/{key}" not in col.arrays:
                continue
            share, mass = col.arrays[f"share/{key}"], col.arrays[f"mass/{key}"]
            for g, rows in groups:
                for pi, p in enumerate(top_percents):
                    for region, members in REGIONS.items():
                        ci = [_C[c] for c in members]
                        s = share[rows][:, pi, ci].sum(1)
                        sm, lo, hi = mean_ci(s, seed)
                        a_mean = float(area[rows][:, ci].sum(1).mean()) if len(rows) else float("nan")
                        region_rows.append([m, w, g, p, region, sm, lo, hi, float(mass[rows][:, ci].sum(1).mean())
                                            if len(rows) else float("nan"), a_mean,
                                            sm / a_mean if a_mean > 0 else float("nan"), len(rows)])
            overall = _normalise(col.arrays[f"overall/{key}"].astype(np.float32))
            valid = ~col.arrays[f"overall_flags/{key}"]
            for g, rows in groups:
                rows = np.intersect1d(rows, bc_rows_idx)
                rows = rows[valid[rows]]
                r = bc_same_diff(overall[rows], col.person[rows], seed)
                bc_rows.append([m, w, "overall", g, r["bc_same_mean"], r["bc_diff_mean"], r["n_same"], r["n_diff"],
                                r["p_value"]])
                if g == "all":
                    head_bc = r
                    pair_rows += [[m, w, kind, v] for kind, v in pair_sample(overall[rows], col.person[rows], seed)]
            layers = _normalise(col.arrays[f"layers/{key}"].astype(np.float32))  # [N, L, s, s]
            rows = bc_rows_idx
            for li, tap in enumerate(taps[m]):
                lv = rows[~col.arrays[f"flags/{key}"][rows, li]]
                r = bc_same_diff(layers[lv, li], col.person[lv], seed)
                bc_rows.append([m, w, tap, "all", r["bc_same_mean"], r["bc_diff_mean"], r["n_same"], r["n_diff"],
                                r["p_value"]])
            if n:
                roots = np.sqrt(np.maximum(layers.reshape(n, len(taps[m]), -1), 0))
                div = np.einsum("nlp,nkp->lk", roots, roots) / n
                for a_i, ta in enumerate(taps[m]):
                    for b_i, tb in enumerate(taps[m]):
                        div_rows.append([m, w, ta, tb, div[a_i, b_i]])
            for g, rows in groups:
                for fill in fills:
                    for p in occ_percents:
                        for method in ("leam", "input_gradient", "last_layer", "random"):
                            arr = col.arrays.get(f"occ/{m}/{w if method == 'leam' else method}/{fill}/{p:g}")
                            if arr is None:
                                continue
                            mu, lo, hi = mean_ci(arr[rows], seed)
                            occ_rows.append([m, w, g, fill, p, method, mu, lo, hi, len(rows)])
            # Headline: the paper's three findings at 1% (or the nearest percent run).
            p_top = 1.0 if 1.0 in top_percents else top_percents[0]
            ci = [_C[c] for c in DERIVED["eyes_brows_nose"]]
            crit = float(share[:, top_percents.index(p_top), ci].sum(1).mean()) if n else float("nan")
            crit_area = float(area[:, ci].sum(1).mean()) if n else float("nan")
            p_occ = 1.0 if 1.0 in occ_percents else (occ_percents or [0.0])[0]
            leam = col.arrays.get(f"occ/{m}/{w}/{fill0}/{p_occ:g}")
            rnd = col.arrays.get(f"occ/{m}/random/{fill0}/{p_occ:g}")
            dl = float(np.mean(leam)) if leam is not None and n else float("nan")
            dr = float(np.mean(rnd)) if rnd is not None and n else float("nan")
            headline.append([m, w, head_bc["bc_same_mean"], head_bc["bc_diff_mean"], head_bc["p_value"], crit,
                             crit_area, dl, dr, dl / dr if dr > 0 else float("nan")])
            if n:
                s = col.sums[f"overall_sum/{key}"]
                mean_overall[key] = (s / max(s.sum(), 1e-30)).astype(np.float32)
                ls = col.sums[f"layers_sum/{key}"]
                mean_layers[key] = (ls / np.maximum(ls.sum(axis=(1, 2), keepdims=True), 1e-30)).astype(np.float32)
        for w in weightings:
            for dst in models:
                arr = col.arrays.get(f"transfer/{w}/{m}/{dst}")
                if arr is not None:
                    transfer_rows.append([w, fill0, settings["transfer_percent"], m, dst,
                                          float(np.mean(arr)) if n else float("nan"), n])
    for w in weightings:
        for i, a in enumerate(models):
            for b in models[i + 1:]:
                ka, kb = f"overall/{a}/{w}", f"overall/{b}/{w}"
                if ka in col.arrays and kb in col.arrays and n:
                    pa, pb = _normalise(col.arrays[ka]), _normalise(col.arrays[kb])
                    bc = np.sqrt(np.maximum(pa * pb, 0)).reshape(n, -1).sum(1)
                    agree_rows.append([w, a, b, float(bc.mean()), n])

    write_csv(t / "region_shares.csv", ["model", "weighting", "group", "top_percent", "region", "share_mean",
                                        "share_ci_low", "share_ci_high", "mass_mean", "area_share_mean",
                                        "enrichment_mean", "n_images"], region_rows)
    write_csv(t / "bc.csv", ["model", "weighting", "layer", "group", "bc_same_mean", "bc_diff_mean", "n_same",
                             "n_diff", "p_value"], bc_rows)
    write_csv(t / "bc_pairs.csv", ["model", "weighting", "kind", "bc"], pair_rows)
    write_csv(t / "layer_diversity.csv", ["model", "weighting", "layer_a", "layer_b", "bc_mean"], div_rows)
    write_csv(t / "model_agreement.csv", ["weighting", "model_a", "model_b", "bc_mean", "n"], agree_rows)
    write_csv(t / "occlusion.csv", ["model", "weighting", "group", "fill", "percent", "method", "dcos_mean",
                                    "dcos_ci_low", "dcos_ci_high", "n"], occ_rows)
    write_csv(t / "transfer.csv", ["weighting", "fill", "percent", "source_model", "target_model", "dcos_mean", "n"],
              transfer_rows)
    write_csv(t / "headline.csv", ["model", "weighting", "bc_same", "bc_diff", "bc_p_value", "critical_share",
                                   "critical_area_share", "dcos_leam_1", "dcos_random_1", "leam_over_random_1"],
              headline)
    ver_rows = []
    for m in models:
        emb = col.arrays.get(f"emb/{m}")
        if emb is None or len(emb) < 2:
            continue
        scores, same = verification.pair_scores(emb, col.person)
        ver_rows.append([m, verification.roc_auc(scores, same) if same.any() else float("nan"),
                         verification.tar_at_far(scores, same, 0.01) if same.any() else float("nan"),
                         int(same.sum()), int((~same).sum())])
    write_csv(t / "verification.csv", ["model", "auc", "tar_at_far_1pct", "n_same", "n_diff"], ver_rows)

    _save_npz(out_dir / "maps" / "mean_overall.npz", mean_overall)
    _save_npz(out_dir / "maps" / "mean_layers.npz",
              {**mean_layers, **{f"taps/{m}": np.array(taps[m], dtype=str) for m in models}})
    buf = io.BytesIO()
    np.save(buf, col.labels_hist.argmax(0).astype(np.int16))
    (out_dir / "maps" / "mean_labels.npy").write_bytes(buf.getvalue())
    return {"faces": n, "people": len(set(col.person.tolist())), "failures": len(col.failures),
            "images_with_faces": len(set(col.path.tolist()))}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz whose bytes depend only on the arrays (fixed zip timestamps), so reruns compare equal."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        for name in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name]), allow_pickle=False)
            z.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue())
    path.write_bytes(buf.getvalue())
