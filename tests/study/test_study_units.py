"""The study tool's parts without weights: inputs, shard plan, resume store, statistics, tables."""

import csv
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core, stats
from leam_jax.face import regions
from leam_jax.study import inputs, schema, sweep, tables
from leam_jax.study.job import select_taps


def test_plan_shards_keeps_people_whole_and_in_order():
    src = [inputs.Source(f"{p}/{i}.jpg", p) for p, k in (("a", 3), ("b", 2), ("c", 5), ("d", 1)) for i in range(k)]
    shards = sweep.plan_shards(src, 4)
    assert [[s.person for s in sh] for sh in shards] == [["a"] * 3, ["b"] * 2, ["c"] * 5, ["d"]]
    assert [s for sh in shards for s in sh] == src
    assert [len(sh) for sh in sweep.plan_shards(src, 100)] == [11]
    with pytest.raises(ValueError, match="shard_size"):
        sweep.plan_shards(src, 0)


def test_manifest_inputs(tmp_path):
    (tmp_path / "m.csv").write_text("path,person,gender\nx/1.jpg,p1,female\n/abs/2.jpg,p1,female\nx/3.jpg,p2,male\n"
                                    "x/4.jpg,p3,male\n")
    got = inputs.from_manifest(tmp_path / "m.csv", max_people=2, max_images_per_person=1)
    assert [(s.path, s.person, s.attrs) for s in got] == [
        (str(tmp_path / "x/1.jpg"), "p1", (("gender", "female"),)), (str(tmp_path / "x/3.jpg"), "p2", (("gender", "male"),))]
    (tmp_path / "bad.csv").write_text("file,who\na,b\n")
    with pytest.raises(inputs.InputError, match=r"bad.csv: missing column\(s\) \['path', 'person'\]"):
        inputs.from_manifest(tmp_path / "bad.csv")
    (tmp_path / "empty.csv").write_text("path,person\n")
    with pytest.raises(inputs.InputError, match="empty.csv: no rows"):
        inputs.from_manifest(tmp_path / "empty.csv")
    with pytest.raises(inputs.InputError, match="nothere.csv: cannot read manifest"):
        inputs.from_manifest(tmp_path / "nothere.csv")
    with pytest.raises(inputs.InputError, match="data directory not found"):
        inputs.from_data_dir(tmp_path / "nodir")


def test_select_taps():
    taps = {"a": ("t1", "t2", "t3"), "b": ("t1", "u2")}
    assert select_taps(taps, ()) == taps
    assert select_taps(taps, ("t1",)) == {"a": ("t1",), "b": ("t1",)}
    assert select_taps(taps, ("a/t3", "t1")) == {"a": ("t1", "t3"), "b": ("t1",)}
    with pytest.raises(ValueError, match="selects no tap of model b"):
        select_taps(taps, ("t2",))
    with pytest.raises(ValueError, match=r"\['zz'\] match no tap"):
        select_taps(taps, ("t1", "zz"))


def test_region_stats_matches_numpy():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 16, 16)).astype(np.float32)
    maps /= maps.sum(axis=(1, 2), keepdims=True)
    labels = rng.integers(0, 5, (3, 16, 16))
    rs = stats.region_stats(jnp.asarray(maps), jnp.asarray(labels), num_classes=5, percents=(1.0, 10.0))
    for b in range(3):
        for pi, p in enumerate((1.0, 10.0)):
            k = core.top_k_count(256, p)
            top = np.argsort(-maps[b].ravel(), kind="stable")[:k]
            want = np.bincount(labels[b].ravel()[top], minlength=5) / k
            np.testing.assert_allclose(rs.share[b, pi], want, atol=1e-6)
        np.testing.assert_allclose(rs.mass[b], np.bincount(labels[b].ravel(), maps[b].ravel(), 5), atol=1e-6)
        np.testing.assert_allclose(rs.area[b], np.bincount(labels[b].ravel(), minlength=5) / 256, atol=1e-7)
    with pytest.raises(ValueError, match="must both be"):
        stats.region_stats(jnp.asarray(maps), jnp.asarray(labels[:, :8]), num_classes=5, percents=(1.0,))


def _brute_bc(maps, persons):
    same, diff = [], []
    for i, j in itertools.combinations(range(len(maps)), 2):
        bc = float(np.sum(np.sqrt(maps[i] * maps[j])))
        (same if persons[i] == persons[j] else diff).append(bc)
    return np.mean(same), np.mean(diff), len(same), len(diff)


def test_bc_summary_oracle_and_permutation_test():
    rng = np.random.default_rng(2)
    persons = np.array([p for p in "abcdef" for _ in range(3)])
    centres = {p: rng.random((8, 8)) ** 4 for p in "abcdef"}
    maps = np.stack([centres[p] + 0.3 * rng.random((8, 8)) for p in persons])
    maps /= maps.sum(axis=(1, 2), keepdims=True)

    def summary(m, keep=None):
        keep = np.ones(len(persons), bool) if keep is None else keep
        return tables.bc_summary(np.asarray(stats.bc_matrix(jnp.asarray(m, jnp.float32))), persons, keep, seed=0)

    r = summary(maps)
    s, d, ns, nd = _brute_bc(maps, persons)
    assert (r["n_same"], r["n_diff"]) == (ns, nd) == (18, 135)
    assert r["bc_same_mean"] == pytest.approx(s, rel=1e-6) and r["bc_diff_mean"] == pytest.approx(d, rel=1e-6)
    assert r["p_value"] < 0.01  # person-specific maps: same > different, significant
    shuffled = summary(rng.permuted(maps.reshape(18, -1), axis=1).reshape(maps.shape))
    assert shuffled["p_value"] > 0.05  # no person structure
    assert tables.bc_summary(np.ones((1, 1)), persons[:1], np.ones(1, bool), seed=0)["p_value"] is None
    # Rows left out by ``keep`` (flagged maps, other groups) count as if the matrix had only the kept rows.
    keep = np.arange(len(persons)) % 4 != 1
    s, d, ns, nd = _brute_bc(maps[keep], persons[keep])
    r = summary(maps, keep)
    assert (r["n_same"], r["n_diff"]) == (ns, nd)
    assert r["bc_same_mean"] == pytest.approx(s, rel=1e-6) and r["bc_diff_mean"] == pytest.approx(d, rel=1e-6)
    sub = tables.bc_summary(np.asarray(stats.bc_matrix(jnp.asarray(maps[keep], jnp.float32))), persons[keep],
                            np.ones(int(keep.sum()), bool), seed=0)
    assert r["p_value"] == sub["p_value"]


def test_mean_ci_is_seeded_and_brackets_the_mean():
    v = np.random.default_rng(3).normal(size=200)
    m, lo, hi = tables.mean_ci(v, seed=5)
    assert lo < m < hi and m == pytest.approx(v.mean())
    assert tables.mean_ci(v, seed=5) == (m, lo, hi)


def _fake_shard(rng, persons, models=("m1",), weightings=("gradcam",), n_taps=2):
    n = len(persons)
    c = len(regions.CLASSES)
    out = {schema.meta("path"): np.array([f"/d/{p}/{i}.jpg" for i, p in enumerate(persons)]),
           schema.meta("person"): np.array(persons), schema.meta("face_index"): np.zeros(n, np.int32),
           schema.meta("attrs"): np.array([json.dumps([["gender", "f" if p < "c" else "m"]]) for p in persons]),
           schema.meta("labels"): rng.integers(0, c, (n, 256, 256)).astype(np.uint8),
           schema.failure("path"): np.array(["/d/bad.jpg"]), schema.failure("reason"): np.array(["not a decodable image"]),
           schema.AREA: rng.random((n, c)).astype(np.float32) / c}
    for m in models:
        out[schema.per_model("emb", m)] = rng.normal(size=(n, 4)).astype(np.float32)
        for w in weightings:
            out[schema.per_map("share", m, w)] = rng.random((n, 3, c)).astype(np.float32) / c
            out[schema.per_map("mass", m, w)] = rng.random((n, c)).astype(np.float32) / c
            out[schema.per_map("overall", m, w)] = rng.random((n, 128, 128)).astype(np.float16)
            out[schema.per_map("overall_flags", m, w)] = np.zeros(n, bool)
            out[schema.per_map("flags", m, w)] = np.zeros((n, n_taps), bool)
            out[schema.per_map("layers", m, w)] = rng.random((n, n_taps, 32, 32)).astype(np.float16)
            out[schema.per_map("overall_sum", m, w)] = rng.random((256, 256)).astype(np.float32)
            out[schema.per_map("layers_sum", m, w)] = rng.random((n_taps, 64, 64)).astype(np.float32)
            for method in (w, "input_gradient", "last_layer", "random"):
                out[schema.occlusion(m, method, "mean", 1)] = rng.random(n).astype(np.float32)
            out[schema.transfer(w, m, m)] = rng.random(n).astype(np.float32)
    return out


@pytest.mark.slow  # suite time; byte-identical tables across runs are also checked end to end in test_study.py
def test_write_tables_is_deterministic_and_groups(tmp_path):
    rng = np.random.default_rng(4)
    shards = [_fake_shard(rng, ["a", "a", "b"]), _fake_shard(rng, ["c", "c", "d", "d"])]
    settings = {"seed": 0, "models": ["m1"], "weightings": ["gradcam"], "top_percents": [1, 5, 10],
                "occlusion_percents": [1], "occlusion_fills": ["mean"], "taps": {"m1": ["t1", "t2"]},
                "transfer_percent": 1.0}
    counts = tables.write_tables(tmp_path / "a", shards, settings)
    tables.write_tables(tmp_path / "b", shards, settings)
    assert counts == {"faces": 7, "people": 4, "failures": 2, "images_with_faces": 7}
    for f in sorted((tmp_path / "a").rglob("*.*")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f
    with open(tmp_path / "a" / "tables" / "bc.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["group"] for r in rows} == {"all", "gender=f", "gender=m"}
    assert {r["layer"] for r in rows} == {"overall", "t1", "t2"}
    with open(tmp_path / "a" / "failures.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    mean = np.load(tmp_path / "a" / "maps" / "mean_overall.npz")["m1/gradcam"]
    assert mean.shape == (256, 256) and mean.sum() == pytest.approx(1.0, rel=1e-5)


def test_store_refuses_another_run_and_redoes_damaged_shards(tmp_path):
    store = sweep.ShardStore(tmp_path)
    fp = {"settings": {"seed": 0}, "plan_sha256": "x", "shards": 2}
    store.open(fp, resume=False)
    store.write(0, {"a": np.arange(3)}, {"faces": 3})
    store.write(1, {"a": np.arange(4)}, {"faces": 4})
    assert set(store.done()) == {"00000", "00001"}
    with pytest.raises(sweep.SweepError, match="already holds a run; pass --resume"):
        sweep.ShardStore(tmp_path).open(fp, resume=False)
    with pytest.raises(sweep.SweepError, match=r"settings differ: \['seed'\]"):
        sweep.ShardStore(tmp_path).open({**fp, "settings": {"seed": 1}}, resume=True)
    sweep.ShardStore(tmp_path).open(fp, resume=True)
    (tmp_path / "shards" / "00001.npz").write_bytes(b"damaged")
    assert set(store.done()) == {"00000"}  # a damaged shard is recomputed on resume


def test_model_worker_places_params_once_and_explains_like_the_core():
    """Every compiled function of a model shares one copy of its params; explain_set gives the
    core's maps with leave-one-out references over the whole set."""
    import jax

    from leam_jax.models import FaceModel
    from leam_jax.study import compute
    from tests.references.tiny_models import DIM, SIZE, nnx_model

    apply_fn, params = nnx_model()
    model = FaceModel("tiny", apply_fn, params, ("c1", "c2", "c3"), SIZE, DIM)
    worker = compute.set_worker(model, weighting="layercam", batch_size=4)
    leaves = jax.tree_util.tree_leaves
    for runner in [worker.runner]:
        assert all(a is b for a, b in zip(leaves(worker.params), leaves(runner.params)))
    images = np.random.default_rng(0).uniform(0, 255, (6, SIZE, SIZE, 3)).astype(np.float32)
    persons = ["p", "p", "q", "q", "q", "r"]
    got = compute.explain_set(worker, images, persons)
    ids, num = compute.dense_ids(persons)
    want = core.leam_maps(apply_fn, params, jnp.asarray(images), person_ids=jnp.asarray(ids), num_people=num,
                          weighting="layercam", taps=("c1", "c2", "c3"))
    np.testing.assert_allclose(got.overall, want.overall, atol=1e-6)
    np.testing.assert_array_equal(got.used_self, [False] * 5 + [True])


def test_permutation_p_equals_one_relabelling_at_a_time():
    """The chunked permutation test gives the p-value of the plain loop (same seeded relabellings)."""
    rng = np.random.default_rng(4)
    ids = np.repeat(np.arange(7), 3)
    values = rng.random((21, 21)) + 0.15 * (ids[:, None] == ids[None, :])
    values = (values + values.T) / 2
    iu = np.triu_indices(21, 1)
    same = ids[iu[0]] == ids[iu[1]]
    a, b = iu[0][same], iu[1][same]
    total, s_sum = values[iu].sum(), values[iu][same].sum()
    observed = s_sum / same.sum() - (total - s_sum) / (~same).sum()
    loop, hits = np.random.default_rng(9), 0
    for _ in range(tables.N_PERMUTATIONS):
        inv = loop.permutation(21)
        ps = values[inv[a], inv[b]].sum()
        hits += (ps / same.sum() - (total - ps) / (~same).sum()) >= observed - 1e-15
    assert tables.permutation_p(values, ids, seed=9) == (1 + hits) / (1 + tables.N_PERMUTATIONS)


def test_compile_cache_is_used_and_an_environment_folder_wins(tmp_path):
    from leam_jax.study import job

    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_persistent_cache_min_compile_time_secs)
    try:
        jax.config.update("jax_compilation_cache_dir", None)
        job.use_compile_cache("")
        assert jax.config.jax_compilation_cache_dir is None  # empty: off
        job.use_compile_cache(str(tmp_path / "xla"))
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        job.use_compile_cache(str(tmp_path / "other"))  # a folder already set (the environment's) is kept
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.jit(lambda x: jnp.sin(x) * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
        assert any((tmp_path / "xla").iterdir())  # the program was written to the cache
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
        from jax.experimental.compilation_cache import compilation_cache
        compilation_cache.reset_cache()
