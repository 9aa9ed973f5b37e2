"""Per-person tables, maps and report section against brute-force numpy (float64) on fake shards
with known maps: one person's maps identical (consistency 1), another's disjoint (consistency 0)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from leam_jax.face import regions
from leam_jax.study import people, people_report, schema, tables

MODELS = ("m1", "m2")
WEIGHTINGS = ("gradcam", "layercam")
S = 16  # stored map side (any size works; small keeps the tests fast)
C = len(regions.CLASSES)
SCRIPT, FORMULA = "<script>x</script>", '=HYPERLINK("x")'
# Two shards; C is split across them and its second face is flagged (all-zero map) in every model.
SHARDS = (["A", "A", "A", "B", "B", "B", "C", "C"], ["C", "C", "D", SCRIPT, SCRIPT, FORMULA, FORMULA])
FLAGGED = 7  # global row of C's second face
SETTINGS = {"seed": 3, "models": list(MODELS), "weightings": list(WEIGHTINGS), "top_percents": [1, 5],
            "occlusion_percents": [1], "occlusion_fills": ["mean"], "taps": {m: ["t"] for m in MODELS},
            "transfer_percent": 1.0}
RTOL = 2e-5


def _maps(rng, persons):
    """A: one fixed map three times; B: three maps on disjoint row bands; everyone else random."""
    fixed = rng.random((S, S)) ** 3
    out, b = [], 0
    for p in persons:
        if p == "A":
            out.append(fixed)
        elif p == "B":
            m = np.zeros((S, S))
            m[4 * b:4 * b + 4] = rng.random((4, S)) + 0.1
            out.append(m)
            b += 1
        else:
            out.append(rng.random((S, S)) ** 4)
    return np.stack(out)


def _shard(rng, persons, offset):
    n = len(persons)
    out = {schema.meta("path"): np.array([f"/d/{p}/{offset + i}.jpg" for i, p in enumerate(persons)]),
           schema.meta("person"): np.array(persons), schema.meta("face_index"): np.arange(n, dtype=np.int32) % 2,
           schema.meta("attrs"): np.array([json.dumps([]) for _ in persons]),
           schema.meta("labels"): rng.integers(0, C, (n, 8, 8)).astype(np.uint8),
           schema.failure("path"): np.zeros(0, str), schema.failure("reason"): np.zeros(0, str)}
    for m in MODELS:
        for w in WEIGHTINGS:
            maps, flags = _maps(rng, persons), np.zeros(n, bool)
            if offset <= FLAGGED < offset + n:
                maps[FLAGGED - offset], flags[FLAGGED - offset] = 0, True
            out[schema.per_map("overall", m, w)] = maps.astype(np.float16)
            out[schema.per_map("overall_flags", m, w)] = flags
            out[schema.per_map("share", m, w)] = rng.dirichlet(np.ones(C), (n, 2)).astype(np.float32)
    return out


@pytest.fixture(scope="module")
def run():
    rng = np.random.default_rng(11)
    shards = [_shard(rng, SHARDS[0], 0), _shard(rng, SHARDS[1], len(SHARDS[0]))]
    col, study = tables.collect(shards), tables.Study.from_settings(SETTINGS)
    return col, study, people.people_rows(col, study)


def _write_people(out, col, study, *, cap):
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "maps").mkdir(parents=True, exist_ok=True)
    people.write_people(out, col, study, cap=cap)


# -- the oracle ---------------------------------------------------------------------------


def _unit(maps):
    m = maps.astype(np.float64).reshape(len(maps), -1)
    return m / m.sum(1, keepdims=True)


def _bc(p, q):
    return float(np.sqrt(p * q).sum())


def _oracle(col, m, w):
    """Per person: n, consistency, vs others, mean map, distinctiveness, [R] shares at top 1%."""
    valid = np.flatnonzero(~col.arrays[schema.per_map("overall_flags", m, w)])
    unit = dict(zip(valid.tolist(), _unit(col.arrays[schema.per_map("overall", m, w)][valid])))
    share = col.arrays[schema.per_map("share", m, w)].astype(np.float64)[:, 0]
    out = {}
    for p in sorted(set(col.person[valid].tolist())):
        own = [i for i in valid if col.person[i] == p]
        others = [j for j in valid if col.person[j] != p]
        pairs = [_bc(unit[i], unit[j]) for i, j in itertools.combinations(own, 2)]
        mean = np.mean([unit[i] for i in own], 0)
        shares = [share[own][:, [regions.CLASS_ID[c] for c in members]].sum(1).mean()
                  for members in tables.REGIONS.values()]
        out[p] = {"n": len(own), "consistency": np.mean(pairs) if pairs else math.nan,
                  "vs": np.mean([_bc(unit[i], unit[j]) for i in own for j in others]), "mean": mean / mean.sum(),
                  "share": np.array(shares)}
    pop = np.mean([o["mean"] for o in out.values()], 0)
    pop_share = np.mean([o["share"] for o in out.values()], 0)
    for o in out.values():
        o["distinct"] = 1 - _bc(o["mean"], pop / pop.sum())
    return out, pop / pop.sum(), pop_share


def _close(got, want):
    if isinstance(want, float) and math.isnan(want):
        assert math.isnan(got), (got, want)
    else:
        assert got == pytest.approx(want, rel=RTOL, abs=1e-6)


# -- people_rows ---------------------------------------------------------------------------


def test_rows_equal_brute_force(run):
    col, study, rows = run
    assert len(rows) == len(MODELS) * len(WEIGHTINGS) * 6
    crit = list(tables.REGIONS).index(regions.CRITICAL_REGION)
    for m, w in itertools.product(MODELS, WEIGHTINGS):
        want, _, pop_share = _oracle(col, m, w)
        got = {r[2]: dict(zip(people.PEOPLE_HEADER, r)) for r in rows if r[:2] == [m, w]}
        assert list(got) == sorted(want)
        for p, o in want.items():
            r = got[p]
            assert r["n_images"] == o["n"] and r["n_pairs"] == o["n"] * (o["n"] - 1) // 2
            _close(r["consistency"], o["consistency"])
            _close(r["consistency_vs_others"], o["vs"])
            _close(r["distinctiveness"], o["distinct"])
            _close(r["critical_share"], o["share"][crit])
            _close(r["critical_share_population"], pop_share[crit])
            ok = [k for k in range(len(pop_share)) if pop_share[k] > people.MIN_POPULATION_SHARE]
            best = max(ok, key=lambda k: (o["share"][k] / pop_share[k], -k))
            assert r["top_region"] == list(tables.REGIONS)[best]
            _close(r["top_region_ratio"], o["share"][best] / pop_share[best])
            _close(r["top_region_share"], o["share"][best])


def test_known_consistency_and_intervals(run):
    _, _, rows = run
    by = {(r[0], r[1], r[2]): dict(zip(people.PEOPLE_HEADER, r)) for r in rows}
    for m, w in itertools.product(MODELS, WEIGHTINGS):
        a, b, c, d = (by[m, w, p] for p in "ABCD")
        assert a["consistency"] == pytest.approx(1.0, abs=1e-5)
        assert (a["consistency_ci_low"], a["consistency_ci_high"]) == pytest.approx((1.0, 1.0), abs=1e-5)
        assert b["consistency"] == pytest.approx(0.0, abs=1e-7) and b["consistency_ci_high"] == pytest.approx(0.0)
        assert c["n_images"] == 3 and c["consistency_ci_low"] <= c["consistency"] <= c["consistency_ci_high"]
        assert d["n_images"] == 1 and math.isnan(d["consistency"]) and d["n_pairs"] == 0
        assert math.isnan(by[m, w, SCRIPT]["consistency_ci_low"])  # two images: no interval
        assert 0 < a["distinctiveness"] < 1


def test_bootstrap_equals_explicit_resampling():
    rng = np.random.default_rng(0)
    x = rng.random((6, 6))
    bc = (x + x.T) / 2
    lo, hi = people.bootstrap_pairs(bc, seed=5)
    counts = np.random.default_rng(5).multinomial(6, np.full(6, 1 / 6), size=tables.N_BOOTSTRAP)
    means = []
    for w in counts:
        idx = np.repeat(np.arange(6), w)  # the resampled images, duplicates included
        vals = [bc[i, j] for a, i in enumerate(idx) for j in idx[a + 1:] if i != j]
        if vals:
            means.append(np.mean(vals))
    assert (lo, hi) == pytest.approx((np.percentile(means, 2.5), np.percentile(means, 97.5)), rel=1e-12)


def test_most_least_consistent():
    rows = [{"model": "m", "weighting": "w", "person": p, "consistency": c}
            for p, c in (("a", "0.5"), ("b", "0.9"), ("c", ""), ("d", "0.5"), ("e", "0.1"), ("f", "0.7"))]
    rows.append({"model": "x", "weighting": "w", "person": "z", "consistency": "1"})
    most, least = people.most_least_consistent(rows, model="m", weighting="w", k=2)
    assert [r["person"] for r in most] == ["b", "f"]
    assert [r["person"] for r in least] == ["e", "a"]  # ties by id; no one twice, no NaN
    most, least = people.most_least_consistent(rows, model="m", weighting="w", k=4)  # 5 people: 3 + 2
    assert [r["person"] for r in most] == ["b", "f", "a"] and [r["person"] for r in least] == ["e", "d"]


# -- people_maps ---------------------------------------------------------------------------


def test_maps_equal_brute_force_and_choice_rule(run):
    col, study, _ = run
    arrays = people.people_maps(col, study, cap=3)
    # C has 4 faces (one flagged); A and B tie at 3: A first by id.
    assert arrays["people"].tolist() == ["C", "A", "B"]
    assert str(arrays["weighting"]) == WEIGHTINGS[0] and arrays["models"].tolist() == list(MODELS)
    assert arrays["face_path"].tolist() == ["/d/C/6.jpg", "/d/A/0.jpg", "/d/B/3.jpg"]
    assert arrays["face_index"].tolist() == [0, 0, 1]
    w = WEIGHTINGS[0]
    for m in MODELS:
        want, pop, pop_share = _oracle(col, m, w)
        np.testing.assert_allclose(arrays[f"population/{m}/{w}"].reshape(-1), pop, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(arrays[f"population_share/{m}/{w}"], pop_share, rtol=1e-5)
        for i, p in enumerate(arrays["people"]):
            mean = arrays[f"mean/{m}/{w}/{i}"]
            assert mean.dtype == np.float32 and mean.shape == (S, S)
            np.testing.assert_allclose(mean.reshape(-1), want[p]["mean"], rtol=1e-5, atol=1e-9)
            np.testing.assert_allclose(arrays[f"diff/{m}/{w}/{i}"].reshape(-1), want[p]["mean"] - pop, atol=1e-7)
            np.testing.assert_allclose(arrays[f"share/{m}/{w}/{i}"], want[p]["share"], rtol=1e-5)
    assert not any(k.split("/")[2:3] == [WEIGHTINGS[1]] for k in arrays)  # the default weighting only
    assert people.people_maps(col, study, cap=0)["people"].tolist() == []
    everyone = people.people_maps(col, study, cap=100)["people"].tolist()
    assert everyone == ["C", "A", "B", SCRIPT, FORMULA, "D"]  # 2 faces each: by id ("<" < "=")


# -- figures and the report section --------------------------------------------------------


def test_person_panel_draws_with_a_face_and_refuses_nothing(tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.random((S, S)).astype(np.float32)
    mean /= mean.sum()
    cols = [people_report.PersonModel(m, mean, mean - 1 / S ** 2, rng.random(len(people.REGION_NAMES)),
                                      rng.random(len(people.REGION_NAMES)), 0.5, 3) for m in MODELS]
    face = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
    labels = rng.integers(0, C, (32, 32)).astype(np.int16)
    path = people_report.person_panel("$x$ <b>", cols, tmp_path / "p.png", face=face, labels=labels)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(people_report.NoData):
        people_report.person_panel("x", [], tmp_path / "q.png")


def test_section_renders_and_escapes(run, tmp_path):
    col, study, _ = run
    for d in ("tables", "maps", "figures"):
        (tmp_path / d).mkdir()
    (tmp_path / "figures" / "person_009.png").write_bytes(b"stale")
    (tmp_path / "figures" / "mean_maps.png").write_bytes(b"keep")
    _write_people(tmp_path, col, study, cap=10)
    html = people_report.people_section(tmp_path, tmp_path / "figures", faces=False)
    assert SCRIPT not in html and "&lt;script&gt;x&lt;/script&gt;" in html
    assert FORMULA not in html and "=HYPERLINK(&quot;x&quot;)" in html
    assert html.count('src="data:image/png;base64,') == 6
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "mean_maps.png", *(f"person_{i:03d}.png" for i in range(6))]
    assert "<script" not in html.lower()


def test_section_without_data(run, tmp_path):
    assert "No per-person data" in people_report.people_section(tmp_path, tmp_path / "f", faces=False)
    col, study, _ = run
    for d in ("tables", "maps"):
        (tmp_path / d).mkdir()
    _write_people(tmp_path, col, study, cap=2)
    (tmp_path / "maps" / "people.npz").unlink()
    html = people_report.people_section(tmp_path, tmp_path / "f", faces=False)
    assert "maps/people.npz not found" in html and "data:image" not in html


def test_outputs_are_byte_identical(run, tmp_path):
    col, study, _ = run
    for k in ("a", "b"):
        for d in ("tables", "maps"):
            (tmp_path / k / d).mkdir(parents=True)
        _write_people(tmp_path / k, col, study, cap=3)
    for f in ("tables/people.csv", "maps/people.npz"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


@pytest.mark.weights
@pytest.mark.faces
def test_aligned_face_on_a_real_photo(faces_dir):
    from leam_jax.face import alignment
    from leam_jax.face.pipeline import FacePipeline
    from leam_jax.weights import packages

    try:
        pipeline = FacePipeline(all_faces=True)
    except packages.SourceError as e:
        pytest.skip(f"face pipeline weights unavailable: {e}")
    photo = sorted((faces_dir / "dlib_johns").rglob("*.jpg"))[0]
    face = people_report.aligned_face(photo, 0, "", pipeline=pipeline)
    assert face.shape == (alignment.ANALYSIS_SIZE, alignment.ANALYSIS_SIZE, 3) and face.dtype == np.uint8
    np.testing.assert_array_equal(face, pipeline.read(photo)[0].frame)
    assert people_report.aligned_face(photo, 5, "", pipeline=pipeline) is None
    assert people_report.aligned_face(faces_dir / "missing.jpg", 0, "", pipeline=pipeline) is None


def test_person_bc_pads_without_changing_values():
    rng = np.random.default_rng(2)
    for n in (1, 2, 3, 5):
        maps = _unit(rng.random((n, S, S))).reshape(n, S, S).astype(np.float32)
        q = rng.random((S, S)).astype(np.float32)
        bc, to_q = people.person_bc(maps, q)
        flat = maps.reshape(n, -1).astype(np.float64)
        np.testing.assert_allclose(bc, [[_bc(a, b) for b in flat] for a in flat], rtol=1e-5)
        np.testing.assert_allclose(to_q, [_bc(a, q.reshape(-1)) for a in flat], rtol=1e-5)


def test_section_with_faces_draws_them_and_notes_misses(run, tmp_path, monkeypatch):
    col, study, _ = run
    for d in ("tables", "maps"):
        (tmp_path / d).mkdir()
    _write_people(tmp_path, col, study, cap=2)
    seen = []

    def fake_face(path, face_index, mode, *, pipeline):
        seen.append((path, face_index, mode))
        return np.full((256, 256, 3), 128, np.uint8) if path.endswith("6.jpg") else None

    monkeypatch.setattr(people_report, "_face_source", lambda out, faces: (object(), "crops", ""))
    monkeypatch.setattr(people_report, "aligned_face", fake_face)
    html = people_report.people_section(tmp_path, tmp_path / "f", faces=True)
    assert seen == [("/d/C/6.jpg", 0, "crops"), ("/d/A/0.jpg", 0, "crops")]
    assert "A: photo not readable or face not found again" in html and "contains face photos" in html
    assert html.count("data:image/png;base64,") == 2
