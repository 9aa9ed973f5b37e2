"""LEAM on the real dlib ResNet over the 52 dlib_johns chips, all three weightings.

Prints the numbers the closing note reports. Findings asserted: maps finite and
non-degenerate for every weighting; top-1% occlusion beats 1% random pixels
(default 'mean' fill) for every weighting; same-person BC > different-person BC
for layercam and gradxact. gradcam's BC gap is printed, not asserted: on this
set it is not separated (see BUILD.md, decisions).
"""

import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core, stats
from leam_jax.study import compute

# LEAM's criteria on the real dlib network and its 52 chips (~4 min): the study tests run the same
# worker on dlib end to end in the default suite; these with -m slow.
pytestmark = [pytest.mark.weights, pytest.mark.faces, pytest.mark.slow]


@pytest.fixture(scope="module")
def results(dlib_model, johns_chips):
    chips, persons, _ = johns_chips
    ids = jnp.asarray(compute.dense_ids(persons)[0])
    out = {}
    for weighting in core.WEIGHTINGS:
        sm = compute.explain_set(compute.set_worker(dlib_model, weighting=weighting, target="identity"), chips,
                                 persons)
        bc = stats.bc_same_different(jnp.asarray(sm.overall), ids)
        occ = {fill: compute.occlusion_comparison(compute.set_worker(dlib_model, weighting=weighting, fill=fill,
                                                                          target="identity"),
                                                  chips, sm.overall, sm.references)
               for fill in ("mean", "zero")}
        out[weighting] = (sm, bc, occ)
        print(f"\n{weighting}: BC same {float(bc.mean_same):.4f} vs different {float(bc.mean_diff):.4f}; "
              f"top-1% occlusion dcos mean-fill LEAM {occ['mean']['leam'].mean():.4f} vs random {occ['mean']['random'].mean():.4f}; "
              f"zero-fill LEAM {occ['zero']['leam'].mean():.4f} vs random {occ['zero']['random'].mean():.4f}; "
              f"flagged layer maps {int(sm.flags.sum())}/{sm.flags.size}")
    return out


@pytest.mark.parametrize("weighting", core.WEIGHTINGS)
def test_maps_finite_and_non_degenerate(results, weighting):
    sm = results[weighting][0]
    n = sm.overall.shape[-1] * sm.overall.shape[-2]
    assert sm.overall.shape == (52, 150, 150) and sm.per_layer.shape == (52, 16, 150, 150)
    assert np.isfinite(sm.overall).all() and np.isfinite(sm.per_layer).all()
    assert not sm.overall_flags.any()
    np.testing.assert_allclose(sm.overall.sum((1, 2)), 1.0, atol=1e-4)
    # Not uniform: peak at least 2x uniform, the top 1% pixels hold at least 1.5%
    # of the mass, entropy below log N.
    flat = sm.overall.reshape(len(sm.overall), -1)
    top1 = np.sort(flat, axis=1)[:, ::-1][:, : n // 100].sum(1)
    entropy = -(flat * np.log(np.maximum(flat, 1e-30))).sum(1)
    print(f"{weighting}: peak*N min {(flat.max(1) * n).min():.2f}, top-1% mass min {top1.min():.4f} "
          f"median {np.median(top1):.4f}, entropy gap min {(np.log(n) - entropy).min():.3f}")
    assert (flat.max(1) > 2.0 / n).all()
    assert (top1 > 0.015).all()
    assert (entropy < np.log(n) - 0.01).all()


@pytest.mark.parametrize("weighting", ["layercam", "gradxact"])
def test_same_person_bc_exceeds_different_person(results, weighting):
    bc = results[weighting][1]
    assert float(bc.mean_same) > float(bc.mean_diff)


@pytest.mark.parametrize("weighting", core.WEIGHTINGS)
def test_top_pixels_occlusion_beats_random(results, weighting):
    occ = results[weighting][2]["mean"]
    assert occ["leam"].mean() > occ["random"].mean()


def test_criteria_hold_in_the_analysis_frame(faces_dir, dlib_dat, tmp_path):
    """LEAM_SPEC section 2: map similarities are computed in the analysis frame. Through the study
    (detect -> mesh -> frame, maps warped back), on the 52 dlib_johns chips and for every weighting:
    same-person BC > different-person BC (permutation p < 0.05) and top-1% LEAM occlusion beats
    1% random pixels."""
    import csv

    from leam_jax.study.config import StudyConfig
    from leam_jax.study.job import run

    run(StudyConfig(models=("dlib_resnet",), data_dir=str(faces_dir / "dlib_johns"), output_dir=tmp_path,
                    occlusion_percents=(1.0,), transfer_percent=0.0, report=False), log=lambda m: None)
    with open(tmp_path / "tables" / "headline.csv") as f:
        rows = {r["weighting"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"gradcam", "layercam", "gradxact"}
    for w, r in rows.items():
        print(f"{w}: BC same {r['bc_same']} vs different {r['bc_diff']} (p={r['bc_p_value']}); "
              f"Δcos top-1% LEAM {r['dcos_leam_1']} vs random {r['dcos_random_1']}")
        assert float(r["bc_same"]) > float(r["bc_diff"]) and float(r["bc_p_value"]) < 0.05, (w, r)
        assert float(r["dcos_leam_1"]) > float(r["dcos_random_1"]), (w, r)
