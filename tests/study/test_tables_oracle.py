"""Every published table against a direct (numpy, float64, brute-force) computation on a small
synthetic shard set with known maps, labels and embeddings; and the tables follow ``stats``:
a statistic changed there changes the report."""

import csv
import itertools
import json

import numpy as np
import pytest

from leam_jax import stats
from leam_jax.face import regions
from leam_jax.study import schema, tables

MODELS = ("m1", "m2")
W = "gradcam"
TAPS = {"m1": ["t1", "t2"], "m2": ["u1", "u2", "u3"]}
PERSONS = (["a", "a", "a", "b", "b"], ["c", "c", "d", "d", "e"])  # two shards, whole people; e has one face
GENDER = {"a": "f", "b": "m", "c": "f", "d": "m", "e": "f"}
SETTINGS = {"seed": 0, "models": list(MODELS), "weightings": [W], "top_percents": [1, 5, 10],
            "occlusion_percents": [1, 5], "occlusion_fills": ["mean"], "taps": TAPS, "transfer_percent": 1.0,
            "group_by": ["gender"]}
C = len(regions.CLASSES)
RTOL = 2e-5  # float32 statistics against float64 oracles, printed with 6 significant digits


def _maps(rng, persons, shape):
    """Person-structured maps: a shared face prior, a per-person bump, noise."""
    centres = {p: rng.random(shape) ** 6 for p in "abcde"}
    return np.stack([0.2 + centres[p] + 0.2 * rng.random(shape) for p in persons])


def _shard(rng, persons, flagged=()):
    n = len(persons)
    out = {schema.meta("path"): np.array([f"/d/{p}/{i}.jpg" for i, p in enumerate(persons)]),
           schema.meta("person"): np.array(persons), schema.meta("face_index"): np.zeros(n, np.int32),
           schema.meta("attrs"): np.array([json.dumps([["gender", GENDER[p]]]) for p in persons]),
           schema.meta("labels"): rng.integers(0, C, (n, 256, 256)).astype(np.uint8),
           schema.failure("path"): np.zeros(0, str), schema.failure("reason"): np.zeros(0, str),
           schema.AREA: rng.dirichlet(np.ones(C), n).astype(np.float32)}
    emb_centres = {p: rng.normal(size=8) for p in "abcde"}
    for m in MODELS:
        out[schema.per_model("emb", m)] = np.stack([emb_centres[p] + 0.7 * rng.normal(size=8)
                                                    for p in persons]).astype(np.float32)
        out[schema.per_map("share", m, W)] = rng.dirichlet(np.ones(C), (n, 3)).astype(np.float32)
        out[schema.per_map("mass", m, W)] = rng.dirichlet(np.ones(C), n).astype(np.float32)
        overall = _maps(rng, persons, (128, 128)).astype(np.float16)
        flags = np.zeros(n, bool)
        for i in flagged:
            overall[i], flags[i] = 0, True
        out[schema.per_map("overall", m, W)] = overall
        out[schema.per_map("overall_flags", m, W)] = flags
        layers = np.stack([_maps(rng, persons, (32, 32)) for _ in TAPS[m]], axis=1).astype(np.float16)
        out[schema.per_map("layers", m, W)] = layers
        out[schema.per_map("flags", m, W)] = np.zeros((n, len(TAPS[m])), bool)
        out[schema.per_map("overall_sum", m, W)] = rng.random((256, 256)).astype(np.float32)
        out[schema.per_map("layers_sum", m, W)] = rng.random((len(TAPS[m]), 64, 64)).astype(np.float32)
        for p in (1, 5):
            for method in (W, *schema.BASELINES):
                out[schema.occlusion(m, method, "mean", p)] = rng.normal(0.05, 0.02, n).astype(np.float32)
        for dst in MODELS:
            out[schema.transfer(W, m, dst)] = rng.normal(0.03, 0.01, n).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(7)
    shards = [_shard(rng, PERSONS[0], flagged=(4,)), _shard(rng, PERSONS[1])]
    out = tmp_path_factory.mktemp("tables")
    tables.write_tables(out, shards, SETTINGS)
    cat = {k: np.concatenate([s[k] for s in shards]) for k in shards[0] if not schema.parse(k).summed}
    return out, cat


def _read(out, name):
    with open(out / "tables" / f"{name}.csv") as f:
        return list(csv.DictReader(f))


def _unit(maps):
    m = maps.astype(np.float64).reshape(len(maps), -1)
    s = m.sum(1, keepdims=True)
    return m / np.where(s > 0, s, 1)


def _bc(p, q):
    return float(np.sqrt(p * q).sum())


def _groups(cat):
    persons = cat[schema.meta("person")]
    gender = np.array([GENDER[p] for p in persons])
    return {"all": np.arange(len(persons)), "gender=f": np.flatnonzero(gender == "f"),
            "gender=m": np.flatnonzero(gender == "m")}


def _same_diff(maps, persons):
    same, diff = [], []
    for i, j in itertools.combinations(range(len(maps)), 2):
        (same if persons[i] == persons[j] else diff).append(_bc(maps[i], maps[j]))
    return (np.mean(same) if same else np.nan), (np.mean(diff) if diff else np.nan), len(same), len(diff)


def _close(got: str, want: float):
    if not np.isfinite(want):
        assert got == "", (got, want)
    else:
        assert float(got) == pytest.approx(want, rel=RTOL, abs=1e-9)


def test_region_shares_equal_direct_sums(run):
    out, cat = run
    rows = _read(out, "region_shares")
    groups = _groups(cat)
    assert len(rows) == len(MODELS) * len(groups) * 3 * len(tables.REGIONS)
    area = cat[schema.AREA].astype(np.float64)
    for r in rows:
        share = cat[schema.per_map("share", r["model"], W)].astype(np.float64)
        mass = cat[schema.per_map("mass", r["model"], W)].astype(np.float64)
        idx = groups[r["group"]]
        pi = [1, 5, 10].index(int(float(r["top_percent"])))
        ci = [regions.CLASS_ID[c] for c in tables.REGIONS[r["region"]]]
        s = share[idx][:, pi, ci].sum(1).mean()
        a = area[idx][:, ci].sum(1).mean()
        _close(r["share_mean"], s)
        _close(r["mass_mean"], mass[idx][:, ci].sum(1).mean())
        _close(r["area_share_mean"], a)
        _close(r["enrichment_mean"], s / a)
        assert float(r["share_ci_low"]) <= float(r["share_mean"]) <= float(r["share_ci_high"])
        assert int(r["n_images"]) == len(idx)
    assert {"eyes_brows_nose", "nose_all", "face"} <= {r["region"] for r in rows}


def test_bc_equals_brute_force_pairs(run):
    out, cat = run
    persons = cat[schema.meta("person")]
    rows = _read(out, "bc")
    groups = _groups(cat)
    for r in rows:
        m = r["model"]
        if r["layer"] == "overall":
            valid = ~cat[schema.per_map("overall_flags", m, W)]
            idx = np.array([i for i in groups[r["group"]] if valid[i]])
            maps = _unit(cat[schema.per_map("overall", m, W)][idx])
        else:
            li = TAPS[m].index(r["layer"])
            idx = np.arange(len(persons))
            maps = _unit(cat[schema.per_map("layers", m, W)][idx, li])
        s, d, ns, nd = _same_diff(maps, persons[idx])
        _close(r["bc_same_mean"], s)
        _close(r["bc_diff_mean"], d)
        assert (int(r["n_same"]), int(r["n_diff"])) == (ns, nd)
        assert r["p_value"] == "" or 0 < float(r["p_value"]) <= 1
    overall_all = [r for r in rows if r["layer"] == "overall" and r["group"] == "all"]
    assert len(overall_all) == 2 and all(float(r["p_value"]) < 0.01 for r in overall_all)  # person structure
    assert int(overall_all[0]["n_same"]) == 3 + 1 + 1  # a: 3, c: 1, d: 1 (b has one face left: one is flagged)
    pairs = _read(out, "bc_pairs")
    assert sum(p["kind"] == "same" for p in pairs) == 2 * 5


def test_layer_diversity_and_model_agreement_equal_brute_force(run):
    out, cat = run
    n = len(cat[schema.meta("person")])
    for r in _read(out, "layer_diversity"):
        layers = cat[schema.per_map("layers", r["model"], W)]
        a, b = TAPS[r["model"]].index(r["layer_a"]), TAPS[r["model"]].index(r["layer_b"])
        want = np.mean([_bc(_unit(layers[i:i + 1, a])[0], _unit(layers[i:i + 1, b])[0]) for i in range(n)])
        _close(r["bc_mean"], want)
    (agree,) = _read(out, "model_agreement")
    pa, pb = (_unit(cat[schema.per_map("overall", m, W)]) for m in MODELS)
    _close(agree["bc_mean"], np.mean([_bc(pa[i], pb[i]) for i in range(n)]))
    assert int(agree["n"]) == n


def test_occlusion_transfer_and_headline_equal_direct_means(run):
    out, cat = run
    groups = _groups(cat)
    occ = _read(out, "occlusion")
    assert len(occ) == len(MODELS) * len(groups) * 2 * 4
    for r in occ:
        method = W if r["method"] == "leam" else r["method"]
        v = cat[schema.occlusion(r["model"], method, r["fill"], float(r["percent"]))][groups[r["group"]]]
        _close(r["dcos_mean"], v.astype(np.float64).mean())
        assert float(r["dcos_ci_low"]) <= float(r["dcos_mean"]) <= float(r["dcos_ci_high"])
    for r in _read(out, "transfer"):
        _close(r["dcos_mean"], cat[schema.transfer(W, r["source_model"], r["target_model"])].astype(np.float64).mean())
    shares = {(r["model"], r["group"], r["top_percent"], r["region"]): r for r in _read(out, "region_shares")}
    bc = {(r["model"], r["layer"], r["group"]): r for r in _read(out, "bc")}
    for h in _read(out, "headline"):
        m = h["model"]
        crit = shares[(m, "all", "1", "eyes_brows_nose")]
        assert (h["critical_share"], h["critical_area_share"]) == (crit["share_mean"], crit["area_share_mean"])
        assert (h["bc_same"], h["bc_diff"]) == (bc[(m, "overall", "all")]["bc_same_mean"],
                                                bc[(m, "overall", "all")]["bc_diff_mean"])
        leam = cat[schema.occlusion(m, W, "mean", 1)].astype(np.float64).mean()
        rnd = cat[schema.occlusion(m, "random", "mean", 1)].astype(np.float64).mean()
        _close(h["dcos_leam_1"], leam)
        _close(h["dcos_random_1"], rnd)
        _close(h["leam_over_random_1"], leam / rnd)


def test_verification_equals_brute_force_auc_and_tar(run):
    out, cat = run
    persons = cat[schema.meta("person")]
    for r in _read(out, "verification"):
        e = cat[schema.per_model("emb", r["model"])].astype(np.float64)
        u = e / np.linalg.norm(e, axis=1, keepdims=True)
        pairs = list(itertools.combinations(range(len(e)), 2))
        s = np.array([u[i] @ u[j] for i, j in pairs])
        same = np.array([persons[i] == persons[j] for i, j in pairs])
        pos, neg = s[same], s[~same]
        auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
        threshold = np.sort(neg)[::-1][int(np.floor(0.01 * len(neg)))]
        _close(r["auc"], auc)
        _close(r["tar_at_far_1pct"], np.mean(pos > threshold))
        assert (int(r["n_same"]), int(r["n_diff"])) == (int(same.sum()), int((~same).sum()))


def test_a_statistic_changed_in_stats_changes_the_tables(tmp_path, monkeypatch):
    """The tables call the stats module (no private copies): patch a statistic there and the
    published numbers follow."""
    rng = np.random.default_rng(7)
    shards = [_shard(rng, PERSONS[0]), _shard(rng, PERSONS[1])]
    tables.write_tables(tmp_path / "before", shards, SETTINGS)
    bc_matrix, auc, diversity, agreement = stats.bc_matrix, stats.roc_auc, stats.layer_diversity, stats.model_agreement
    monkeypatch.setattr(stats, "bc_matrix", lambda maps, **kw: 0.5 * bc_matrix(maps, **kw))
    monkeypatch.setattr(stats, "roc_auc", lambda s, p: 0.25 + 0 * auc(s, p))
    monkeypatch.setattr(stats, "layer_diversity", lambda x, **kw: tuple(2 * v for v in diversity(x, **kw)))
    monkeypatch.setattr(stats, "model_agreement", lambda a, b, **kw: 3 * agreement(a, b, **kw))
    tables.write_tables(tmp_path / "after", shards, SETTINGS)

    def col(name, key):
        return [float(r[key]) for r in _read(tmp_path / name.split(":")[0], name.split(":")[1])]

    np.testing.assert_allclose(col("after:bc", "bc_same_mean"), 0.5 * np.array(col("before:bc", "bc_same_mean")), rtol=1e-5)
    assert col("after:verification", "auc") == [0.25, 0.25]
    np.testing.assert_allclose(col("after:layer_diversity", "bc_mean"),
                               2 * np.array(col("before:layer_diversity", "bc_mean")), rtol=1e-5)
    np.testing.assert_allclose(col("after:model_agreement", "bc_mean"),
                               3 * np.array(col("before:model_agreement", "bc_mean")), rtol=1e-5)
    head_before, head_after = _read(tmp_path / "before", "headline"), _read(tmp_path / "after", "headline")
    np.testing.assert_allclose([float(r["bc_same"]) for r in head_after],
                               [0.5 * float(r["bc_same"]) for r in head_before], rtol=1e-5)


def test_collect_refuses_unknown_keys():
    rng = np.random.default_rng(0)
    shard = _shard(rng, ["a", "a"])
    shard["occ/m1/gradcam/mean"] = np.zeros(2)  # a percent short
    with pytest.raises(ValueError, match="not a shard key: 'occ/m1/gradcam/mean'"):
        tables.collect([shard])


def _auc_d(values, same):
    """Brute-force AUC (ties half) and Cohen's d of same- vs different-person pair values."""
    pos, neg = values[same], values[~same]
    auc = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    pooled = np.sqrt(((len(pos) - 1) * pos.var(ddof=1) + (len(neg) - 1) * neg.var(ddof=1)) / (len(pos) + len(neg) - 2))
    return auc, (pos.mean() - neg.mean()) / pooled


def _top(maps, percent):
    """Each map's top-p% pixels kept and renormalised (ties by index, as stats.top_percent_mask)."""
    out = np.zeros_like(maps)
    k = max(1, int(np.floor(maps.shape[1] * percent / 100 + 0.5)))
    for i, m in enumerate(maps):
        keep = np.argsort(-m, kind="stable")[:k]
        out[i, keep] = m[keep]
    return out / out.sum(1, keepdims=True)


@pytest.mark.parametrize("sparsity", ["full", "10"])
def test_specificity_equals_brute_force_auc_and_d(run, sparsity):
    out, cat = run
    rows = {(r["model"], r["layer"], r["sparsity"], r["pairs"]): r for r in _read(out, "specificity")}
    persons = cat[schema.meta("person")]
    for m in MODELS:
        valid = ~cat[schema.per_map("overall_flags", m, W)]
        maps = _unit(cat[schema.per_map("overall", m, W)][valid])
        if sparsity != "full":
            maps = _top(maps, float(sparsity))
        pairs = list(itertools.combinations(range(len(maps)), 2))
        values = np.array([_bc(maps[i], maps[j]) for i, j in pairs])
        same = np.array([persons[valid][i] == persons[valid][j] for i, j in pairs])
        auc, d = _auc_d(values, same)
        r = rows[(m, "overall", sparsity, "all")]
        _close(r["auc"], auc)
        # d divides by a small pooled SD here (same-person maps are alike): float32 variance, 1e-4
        assert float(r["cohens_d"]) == pytest.approx(d, rel=1e-4)
        assert float(r["auc_ci_low"]) <= float(r["auc"]) <= float(r["auc_ci_high"])
        assert (int(r["n_same"]), int(r["n_diff"])) == (int(same.sum()), int((~same).sum()))
    assert {k[1] for k in rows} == {"overall", *TAPS["m1"], *TAPS["m2"]}
    assert {k[2] for k in rows} == {"full", "1", "5", "10", "20"}


def test_pairs_within_a_column_keep_only_those_pairs(tmp_path):
    rng = np.random.default_rng(3)
    shards = [_shard(rng, PERSONS[0]), _shard(rng, PERSONS[1])]
    tables.write_tables(tmp_path, shards, {**SETTINGS, "pairs_within": "gender"})
    cat = {k: np.concatenate([s[k] for s in shards]) for k in shards[0] if not schema.parse(k).summed}
    persons = cat[schema.meta("person")]
    gender = np.array([GENDER[p] for p in persons])
    maps = _unit(cat[schema.per_map("overall", "m1", W)])
    pairs = [(i, j) for i, j in itertools.combinations(range(len(maps)), 2) if gender[i] == gender[j]]
    values = np.array([_bc(maps[i], maps[j]) for i, j in pairs])
    same = np.array([persons[i] == persons[j] for i, j in pairs])
    auc, d = _auc_d(values, same)
    (r,) = [r for r in _read(tmp_path, "specificity")
            if (r["model"], r["layer"], r["sparsity"], r["pairs"]) == ("m1", "overall", "full", "within gender")]
    _close(r["auc"], auc)
    assert float(r["cohens_d"]) == pytest.approx(d, rel=1e-4)
    (h,) = [h for h in _read(tmp_path, "headline") if h["model"] == "m1"]
    assert (h["pairs"], h["auc"]) == ("within gender", r["auc"])  # the headline takes the within-set figure


def test_deletion_area_equals_trapezoid_of_each_face(run):
    out, cat = run
    for r in _read(out, "deletion"):
        if r["group"] != "all":
            continue
        method = W if r["method"] == "leam" else r["method"]
        curves = np.stack([cat[schema.occlusion(r["model"], method, "mean", p)].astype(np.float64) for p in (1, 5)], 1)
        area = (curves[:, 0] + curves[:, 1]) / 2  # trapezoid over [1, 5] divided by the span
        _close(r["area_mean"], area.mean())


def test_sanity_and_validity_tables_follow_their_inputs(tmp_path):
    rng = np.random.default_rng(5)
    shards = [_shard(rng, PERSONS[0]), _shard(rng, PERSONS[1])]
    steps = {m: list(range(1, len(TAPS[m]) + 1)) for m in MODELS}
    sp = {m: rng.uniform(-0.2, 1, (len(steps[m]), 6)).astype(np.float32) for m in MODELS}
    sanity = {}
    for m in MODELS:
        sanity[schema.sanity_steps(m)] = np.array(steps[m], np.int32)
        sanity[schema.sanity_taps(m)] = np.array(TAPS[m])
        sanity[schema.sanity(m, W, "spearman")] = sp[m]
        sanity[schema.sanity(m, W, "bc")] = rng.uniform(0.5, 1, sp[m].shape).astype(np.float32)
        sanity[schema.sanity(m, W, "maps")] = rng.random((1, 1 + len(steps[m]), 64, 64)).astype(np.float16)
    tables.write_tables(tmp_path, shards, SETTINGS, sanity=sanity)
    rows = _read(tmp_path, "sanity")
    assert len(rows) == sum(len(s) for s in steps.values())
    for r in rows:
        i = steps[r["model"]].index(int(r["step"]))
        _close(r["spearman_mean"], sp[r["model"]][i].astype(np.float64).mean())
        assert r["first_randomised_layer"] == TAPS[r["model"]][len(TAPS[r["model"]]) - int(r["step"])]
    head = {h["model"]: h for h in _read(tmp_path, "headline")}
    for v in _read(tmp_path, "validity"):
        h, s = head[v["model"]], sp[v["model"]].astype(np.float64).mean(1)
        _close(h["spearman_all_random"], s[-1])
        assert v["survives_randomisation"] == str(int(s[-1] <= tables.MAX_RANDOM_SPEARMAN and s[-1] < s[0]))
        assert v["person_specific"] == str(int(float(h["auc"]) >= tables.MIN_AUC))
        assert v["beats_random_pixels"] == str(int(float(h["leam_over_random_1"]) >= tables.MIN_OCCLUSION_RATIO))
        assert v["critical_region_enriched"] == str(int(float(h["critical_share"]) > float(h["critical_area_share"])))
        assert int(v["criteria_met"]) == sum(v[c] == "1" for c in ("person_specific", "survives_randomisation",
                                                                  "beats_random_pixels", "critical_region_enriched"))
