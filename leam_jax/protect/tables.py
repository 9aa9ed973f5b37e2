"""The protection run's tables, summary and report, from its shards (host side).

Every rate is over the protected photos, with a 95% person-bootstrap interval
(:func:`leam_jax.protect.evaluate.bootstrap`). ``success`` at FAR f: the
photo's cosine to its person's reference is not above the model's threshold at
f (for ``redetect``, a photo where the face pipeline finds no face counts as
protected: nothing is there to match; ``faces_found`` says how often).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leam_jax.protect import evaluate
from leam_jax.protect.config import TRANSFORMS, ProtectConfig
from leam_jax.protect.variants import robust
from leam_jax.study import files, schema, sweep
from leam_jax.study.tables import write_csv

ROLES = {"white-box": "the model is in the ensemble", "left out": "the ensemble is every other source model",
         "black-box": "the model is not a source model"}


def collect(store: sweep.ShardStore, n_shards: int) -> dict[str, np.ndarray]:
    """Every shard's arrays concatenated (a key missing from a shard is NaN there)."""
    parts = [store.load(i) for i in range(n_shards)]
    keys = sorted({k for p in parts for k in p})
    out = {}
    for k in keys:
        cols = []
        for p in parts:
            n = len(p.get(schema.meta("path"), []))
            if k in p:
                cols.append(p[k])
            else:
                like = next(q[k] for q in parts if k in q)
                cols.append(np.full((n, *like.shape[1:]), np.nan if like.dtype.kind == "f" else 0, like.dtype))
        out[k] = np.concatenate(cols) if cols else np.zeros(0)
    return out


def _mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")  # e.g. seconds when every call compiled


def _min(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.min()) if x.size else float("nan")


def role(v, model: str) -> str:
    if model in v.members:
        return "white-box"
    return "left out" if v.ensemble == f"without_{model}" else "black-box"


def _rate(values: np.ndarray, persons: np.ndarray, seed: int) -> tuple[float, float, float]:
    ok = np.isfinite(values)
    return evaluate.bootstrap(values[ok], persons[ok], seed)


def protection_rows(col, cfg: ProtectConfig, thresholds, variants, robust) -> list[list]:
    sel = col["protected"].astype(bool)
    persons = col[schema.meta("person")][sel]
    rows = []
    for v in variants:
        for m in cfg.eval_models:
            for t in (("none",) + TRANSFORMS) if robust(cfg, v) else ("none",):
                cos = col.get(f"cos/{v.key}/{t}/{m}")
                if cos is None:
                    continue
                cos = cos[sel]
                lost = (np.zeros(len(cos), bool) if t != "redetect"
                        else col[f"found/{v.key}"][sel] == 0)  # no face found: nothing to match
                row = [v.ensemble, "+".join(v.members), v.kind, v.percent, v.epsilon, m, role(v, m), t,
                       int(np.sum(np.isfinite(cos) | lost)), len(set(persons[np.isfinite(cos) | lost]))]
                for far in evaluate.FARS:
                    ok = np.where(lost, 1.0, np.where(np.isfinite(cos), (cos <= thresholds[m][far]).astype(float),
                                                      np.nan))
                    row += list(_rate(ok, persons, cfg.seed))
                row += list(_rate(col[f"clean_cos/{m}"][sel] - cos, persons, cfg.seed))
                q = [col[f"{k}/{v.key}"][sel] for k in ("psnr", "ssim", "seconds")]
                row += [_mean(q[0]), _min(q[0]), _mean(q[1]), _min(q[1]), _mean(q[2])]
                row += [_mean(col[f"found/{v.key}"][sel]) if t == "redetect" else ""]
                rows.append(row)
    return rows


def _ci(name: str) -> list[str]:
    return [name, f"{name}_low", f"{name}_high"]


PROTECTION_HEADER = ["ensemble", "members", "mask", "percent", "epsilon", "model", "role", "transform", "photos",
                     "people", *_ci("success_far1e-2"), *_ci("success_far1e-3"), *_ci("dcos"), "psnr_mean",
                     "psnr_min", "ssim_mean", "ssim_min", "seconds_per_photo", "faces_found"]


def transfer_rows(prot_rows: list[list]) -> list[list]:
    """Leave-one-model-out at each budget: each mask kind's success at FAR 1e-3 and Δcos on the left-out
    model, and whether LEAM's interval lies wholly above random's (success; Δcos, the finer effect size)."""
    left = [r for r in prot_rows if r[6] == "left out" and r[7] == "none"]
    out = []
    for r in left:
        rand = next((q for q in left if q[5] == r[5] and q[2] == "random" and q[3:5] == r[3:5]), None)
        beats = "" if r[2] != "leam" or rand is None else ("yes" if r[14] > rand[15] else "no")
        beats_dcos = "" if r[2] != "leam" or rand is None else ("yes" if r[17] > rand[18] else "no")
        out.append([r[5], r[2], r[3], r[4], r[8], r[13], r[14], r[15], r[16], r[17], r[18], beats, beats_dcos])
    return out


TRANSFER_HEADER = ["left_out_model", "mask", "percent", "epsilon", "photos", *_ci("success_far1e-3"), *_ci("dcos"),
                   "leam_above_random", "leam_dcos_above_random"]


def pair_rows(col, cfg: ProtectConfig, pair_thr, variants, robust) -> list[list]:
    """Protected versus protected: same-person pairs of two protected photos, matched at the clean pair
    thresholds; beside them, the same pairs clean."""
    sel = np.flatnonzero(col["protected"].astype(bool))
    persons = col[schema.meta("person")]
    pairs = [(a, b) for k, a in enumerate(sel) for b in sel[k + 1:] if persons[a] == persons[b]]
    rows = []
    if not pairs:
        return rows
    a, b = np.array(pairs).T
    for v in (v for v in variants if robust(cfg, v)):
        for m in cfg.eval_models:
            e = col.get(f"emb/{v.key}/{m}")
            if e is None:
                continue
            prot = np.sum(e[a] * e[b], axis=1)
            clean = col["clean_emb/" + m]
            clean_s = np.sum(clean[a] * clean[b], axis=1)
            row = [v.kind, v.percent, v.epsilon, m, len(pairs)]
            for far in evaluate.FARS:
                row += [float(np.mean(clean_s > pair_thr[m][far])), float(np.mean(prot > pair_thr[m][far]))]
            rows.append(row)
    return rows


PAIR_HEADER = ["mask", "percent", "epsilon", "model", "pairs", "clean_match_far1e-2", "protected_match_far1e-2",
               "clean_match_far1e-3", "protected_match_far1e-3"]


def write(out: Path, cfg: ProtectConfig, clean, store: sweep.ShardStore, n_shards: int, dropped, variants,
          *, seconds: float) -> dict:
    from leam_jax.protect import report

    col = collect(store, n_shards)
    for m in cfg.eval_models:
        col["clean_emb/" + m] = clean.emb[m][[clean.index[p] for p in col[schema.meta("path")]]]
    thr = {m: evaluate.thresholds(clean.emb[m], clean.persons) for m in cfg.eval_models}
    pair_thr = {m: evaluate.pair_thresholds(clean.emb[m], clean.persons) for m in cfg.eval_models}
    tdir = out / "tables"
    tdir.mkdir(parents=True, exist_ok=True)
    write_csv(tdir / "thresholds.csv", ["model", "far", "photo_vs_reference", "photo_vs_photo"],
              [[m, f, thr[m][f], pair_thr[m][f]] for m in cfg.eval_models for f in evaluate.FARS])
    prot = protection_rows(col, cfg, thr, variants, robust)
    write_csv(tdir / "protection.csv", PROTECTION_HEADER, prot)
    transfer = transfer_rows(prot)
    write_csv(tdir / "transfer.csv", TRANSFER_HEADER, transfer)
    pairs = pair_rows(col, cfg, pair_thr, variants, robust)
    write_csv(tdir / "pairs.csv", PAIR_HEADER, pairs)
    integrity = [[v.key, int(np.nanmax(col[f"linf/{v.key}"][col["protected"].astype(bool)])), v.epsilon,
                  int(np.nansum(col[f"changed_outside/{v.key}"]))] for v in variants if f"linf/{v.key}" in col]
    write_csv(tdir / "integrity.csv", ["variant", "max_abs_change", "epsilon", "pixels_changed_outside_mask"], integrity)
    failures = [(p, r) for p, r in zip(col.get(schema.failure("path"), []), col.get(schema.failure("reason"), []))]
    write_csv(out / "failures.csv", ["path", "reason"], [*dropped, *failures])
    sel = col["protected"].astype(bool)
    summary = {
        "photos": int(len(clean.paths)), "protected": int(sel.sum()),
        "people_protected": len(set(col[schema.meta("person")][sel].tolist())),
        "failures": len(dropped) + len(failures), "seconds": round(seconds, 1),
        "white_box": [dict(zip(PROTECTION_HEADER, r)) for r in prot
                      if r[0] == "all" and r[2] == "leam" and r[7] == "none"
                      and r[3] == cfg.robust_percent and r[4] == cfg.robust_epsilon],
        "transfer": [dict(zip(TRANSFER_HEADER, r)) for r in transfer],
    }
    files.write_json(out / "summary.json", _plain(summary))
    if cfg.report:
        summary["report"] = str(report.write(out, cfg, summary))
        files.write_json(out / "summary.json", _plain(summary))
    return summary


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x
