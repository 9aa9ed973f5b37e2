"""Figures and the self-contained HTML report, on synthetic study output folders (layout of tables.md)."""

from __future__ import annotations

import base64
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from leam_jax.face import regions
from leam_jax.study import figures, report

FIGURE_FILES = ("mean_maps.png", "layer_maps.png", "region_shares.png", "bc_distributions.png", "occlusion.png",
                "transfer.png", "specificity_layers.png", "sanity.png")
INJECTED = "<script>alert(1)</script>"
ODD_PATH = "/data/&\"'<>/img 1.jpg"
METHODS = ("leam", "random", "input_gradient", "last_layer")
PERCENTS = (0.5, 1, 2, 5, 10)


def _write(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([format(v, ".6g") if isinstance(v, float) else v for v in r])


def synthetic_labels(size: int = 256) -> np.ndarray:
    """A cartoon face label map: oval, brows, eyes, nose, lips (face_regions class ids)."""
    ids = regions.CLASS_ID
    lab = np.zeros((size, size), np.uint8)
    s = size / 256
    e = lambda c, ax, name: cv2.ellipse(lab, (int(c[0] * s), int(c[1] * s)), (int(ax[0] * s), int(ax[1] * s)), 0, 0,
                                       360, int(ids[name]), -1)
    e((128, 136), (92, 118), "skin")
    e((128, 50), (70, 26), "forehead")
    for side, x in (("r", 88), ("l", 168)):
        e((x, 86), (26, 7), f"{side}_brow")
        e((x, 108), (20, 9), f"{side}_eye")
        e((x, 150), (26, 20), f"{side}_cheek")
    e((128, 135), (17, 36), "nose")
    e((128, 122), (8, 20), "nose_bridge")
    e((128, 158), (12, 9), "nose_tip")
    e((128, 188), (34, 8), "u_lip")
    e((128, 204), (32, 9), "l_lip")
    e((128, 196), (26, 3), "mouth")
    e((128, 232), (30, 12), "chin")
    return lab.astype(np.int16)


def _blob_map(size: int, centres, weights, sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    m = sum(w * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2)) for (cx, cy), w in zip(centres, weights))
    m = m + 1e-4 * m.max()
    return (m / m.sum()).astype(np.float32)


def make_output_dir(root: Path, *, models, weightings, same_pairs: bool = True, seed: int = 0) -> Path:
    """A study output folder with every file of tables.md, filled with plausible random numbers."""
    rng = np.random.default_rng(seed)
    models, weightings = list(models), list(weightings)
    groups = ["all", "gender=female", f"gender={INJECTED}"]
    region_names = [c for c in regions.CLASSES if c != "background"] + ["eyes_brows_nose"]
    fills = ["zero", "mean"]
    taps = {m: ["stem", *(f"layer{i // 3 + 1}_{i % 3}" for i in range(3 + 7 * k)), "conv_6_sep.depthwise_out"]
            for k, m in enumerate(models)}
    t = root / "tables"

    _write(t / "images.csv", ["image_id", "path", "person", "face_index", "gender"],
           [[0, ODD_PATH, INJECTED, 0, "female"], [1, "/data/b/1.jpg", "bob", 0, INJECTED],
            [2, "/data/b/2.jpg", "bob", 0, "male"]])
    share_rows = []
    for m in models:
        for w in weightings:
            for g in groups:
                for p in (1, 5, 10):
                    shares = rng.dirichlet(np.ones(len(region_names) - 1))
                    area = rng.dirichlet(np.ones(len(region_names) - 1)) * 0.6
                    for region, s, a in zip(region_names, [*shares, shares[1:5].sum() + shares[5] + shares[13:].sum()],
                                            [*area, area[1:5].sum() + area[5] + area[13:].sum()]):
                        share_rows.append([m, w, g, float(p), region, float(s), float(s * 0.8), float(min(1, s * 1.2)),
                                           float(s * 0.9), float(a), float(s / a), 3])
    _write(t / "region_shares.csv", ["model", "weighting", "group", "top_percent", "region", "share_mean",
                                     "share_ci_low", "share_ci_high", "mass_mean", "area_share_mean",
                                     "enrichment_mean", "n_images"], share_rows)
    bc_rows, pair_rows, div_rows = [], [], []
    for m in models:
        for w in weightings:
            for layer in ["overall", *taps[m]]:
                for g in groups:
                    same = float(rng.uniform(0.3, 0.6)) if same_pairs else ""
                    bc_rows.append([m, w, layer, g, same, float(rng.uniform(0.04, 0.15)), 4 if same_pairs else 0, 20,
                                    float(rng.uniform(0, 0.05)) if same_pairs else ""])
            for kind, (a, b), n in (("same", (6, 8), 40 if same_pairs else 0), ("different", (2, 20), 120)):
                pair_rows += [[m, w, kind, float(v)] for v in rng.beta(a, b, n)]
            for i, ta in enumerate(taps[m]):
                for tb in taps[m][i + 1:]:
                    div_rows.append([m, w, ta, tb, float(rng.uniform(0, 1))])
    _write(t / "bc.csv", ["model", "weighting", "layer", "group", "bc_same_mean", "bc_diff_mean", "n_same", "n_diff",
                          "p_value"], bc_rows)
    _write(t / "bc_pairs.csv", ["model", "weighting", "kind", "bc"], pair_rows)
    _write(t / "layer_diversity.csv", ["model", "weighting", "layer_a", "layer_b", "bc_mean"], div_rows)
    _write(t / "model_agreement.csv", ["weighting", "model_a", "model_b", "bc_mean", "n"],
           [[w, a, b, float(rng.uniform(0.3, 0.8)), 3] for w in weightings for i, a in enumerate(models)
            for b in models[i + 1:]])
    occ_rows = []
    for m in models:
        for w in weightings:
            for g in groups:
                for f in fills:
                    for method, scale in zip(METHODS, (0.12, 0.03, 0.07, 0.09)):
                        for p in PERCENTS:
                            d = scale * np.log1p(p) + (0.0 if method in ("random", "input_gradient")
                                                       else float(rng.normal(0, 0.005)))
                            occ_rows.append([m, w, g, f, float(p), method, float(d), float(d - 0.01),
                                             float(d + 0.01), 3])
    _write(t / "occlusion.csv", ["model", "weighting", "group", "fill", "percent", "method", "dcos_mean",
                                 "dcos_ci_low", "dcos_ci_high", "n"], occ_rows)
    _write(t / "transfer.csv", ["weighting", "fill", "percent", "source_model", "target_model", "dcos_mean", "n"],
           [[w, f, float(p), a, b, float(rng.uniform(0.02, 0.12)), 3] for w in weightings for f in fills
            for p in PERCENTS for a in models for b in models])
    head = []
    for m in models:
        for w in weightings:
            auc = float(rng.uniform(0.5, 0.95)) if same_pairs else ""
            head.append([m, w, "population", "full", "within source_repo", auc, auc and auc - 0.05,
                         auc and min(auc + 0.05, 1.0), float(rng.uniform(0, 2)) if same_pairs else "",
                         float(rng.uniform(0.3, 0.6)) if same_pairs else "", float(rng.uniform(0.04, 0.15)),
                         float(rng.uniform(0, 0.05)) if same_pairs else "", float(rng.uniform(0.3, 0.9)),
                         float(rng.uniform(-0.1, 0.5)), float(rng.uniform(0.4, 0.8)), float(rng.uniform(0.1, 0.2)),
                         0.1, 0.03, 0.1 / 0.03])
    _write(t / "headline.csv", ["model", "weighting", "target", "sparsity", "pairs", "auc", "auc_ci_low",
                                "auc_ci_high", "cohens_d", "bc_same", "bc_diff", "bc_p_value", "spearman_first_step",
                                "spearman_all_random", "critical_share", "critical_area_share", "dcos_leam_1",
                                "dcos_random_1", "leam_over_random_1"], head)
    _write(t / "validity.csv", ["model", "weighting", "target", "auc", "spearman_all_random", "leam_over_random_1",
                                "critical_share", "critical_area_share", "person_specific", "survives_randomisation",
                                "beats_random_pixels", "critical_region_enriched", "criteria_met"],
           [[h[0], h[1], h[2], h[5], h[13], h[18], h[14], h[15], int(bool(h[5]) and h[5] >= 0.75) if h[5] else "",
             int(h[13] <= 0.3), 1, 1, 0] for h in head])
    spec = []
    for m in models:
        for w in weightings:
            for layer in ["overall", *taps[m]]:
                for sp in ("full", "1", "5", "10", "20"):
                    for pairs in ("all", "within source_repo"):
                        auc = float(rng.uniform(0.45, 0.9))
                        spec.append([m, w, layer, sp, pairs, auc, auc - 0.04, auc + 0.04, 1.0, 0.8, 1.2, 0.5, 0.4,
                                     10, 40])
    _write(t / "specificity.csv", ["model", "weighting", "layer", "sparsity", "pairs", "auc", "auc_ci_low",
                                   "auc_ci_high", "cohens_d", "d_ci_low", "d_ci_high", "bc_same_mean",
                                   "bc_diff_mean", "n_same", "n_diff"], spec)
    sanity_rows, sanity_maps = [], {}
    for m in models:
        steps = [1, len(taps[m]) // 2, len(taps[m])]
        sanity_maps[f"sanity_steps/{m}"] = np.array(steps, np.int32)
        sanity_maps[f"sanity_taps/{m}"] = np.array(taps[m])
        for w in weightings:
            sanity_maps[f"sanity/{m}/{w}/maps"] = np.stack(
                [np.stack([_blob_map(64, [(rng.uniform(10, 54), rng.uniform(10, 54))], [1.0], 6) for _ in range(4)])])
            for k in steps:
                sp = float(1 - k / len(taps[m]) + rng.uniform(-0.05, 0.05))
                sanity_rows.append([m, w, k, len(taps[m]), k / len(taps[m]), taps[m][len(taps[m]) - k], sp, sp - 0.1,
                                    sp + 0.1, 0.9, 0.85, 0.95, 24])
    _write(t / "sanity.csv", ["model", "weighting", "step", "num_layers", "fraction_randomised",
                              "first_randomised_layer", "spearman_mean", "spearman_ci_low", "spearman_ci_high",
                              "bc_mean", "bc_ci_low", "bc_ci_high", "n"], sanity_rows)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    np.savez(root / "maps" / "sanity.npz", **sanity_maps)

    maps = root / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    eyes, nose, mouth = [(88, 108), (168, 108)], (128, 140), (128, 196)
    overall = {f"{m}/{w}": _blob_map(256, [*eyes, nose, mouth], rng.uniform(0.2, 1.0, 4), 14 + 4 * j)
               for m in models for j, w in enumerate(weightings)}
    np.savez(maps / "mean_overall.npz", **overall)
    layers = {}
    for m in models:
        for w in weightings:
            layers[f"{m}/{w}"] = np.stack([_blob_map(64, [(rng.uniform(10, 54), rng.uniform(10, 54))], [1.0],
                                                     2 + i) for i in range(len(taps[m]))])
        layers[f"taps/{m}"] = np.array(taps[m])
    np.savez(maps / "mean_layers.npz", **layers)
    np.save(maps / "mean_labels.npy", synthetic_labels())
    summary = {"config": {"data_dir": ODD_PATH, "models": models, "weightings": weightings},
               "images": 3, "faces": 3, "people": 2, "failures": 1, "models": models, "weightings": weightings,
               "seconds": 12.5}
    (root / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    _write(root / "failures.csv", ["path", "reason"], [[ODD_PATH, "no face found"]])
    return root


def _check_report(out: Path) -> str:
    path = report.write_report(out)
    assert path == out / "report.html"
    for name in FIGURE_FILES:
        f = out / "figures" / name
        assert f.is_file(), name
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        assert img is not None and img.shape[0] > 100 and img.shape[1] > 100, name
        assert img.std() > 20, f"{name} looks blank (std {img.std():.1f})"
        # Nothing drawn touches the edge: a label running off the canvas would be cut there.
        edge = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3),
                               img[:, -2:].reshape(-1, 3)])
        assert (edge >= 250).all(), f"{name}: {(edge < 250).any(-1).sum()} drawn pixels on the canvas edge"
    page = path.read_text(encoding="utf-8")
    assert "<script" not in page.lower()
    assert "src=\"http" not in page and "href=" not in page.lower() and "url(" not in page.lower()
    assert "@import" not in page and "<link" not in page.lower()
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted((out / "figures" / n).read_bytes()
                                                                  for n in FIGURE_FILES)
    assert page.count("<img") == len(FIGURE_FILES)
    return page


def test_report_two_models_escapes_untrusted_text(tmp_path):
    out = make_output_dir(tmp_path / "run", models=["dlib_resnet", "faceres"], weightings=["gradcam", "layercam"])
    page = _check_report(out)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # the group value, escaped
    assert "&amp;&quot;&#x27;&lt;&gt;" in page  # failure path and configured data_dir, escaped
    assert "&\"'<>" not in page
    assert "0.32 – 0.57" in page and "0.1148" in page  # paper reference row
    assert "not drawn" not in page


def test_report_one_model_no_same_pairs(tmp_path):
    out = make_output_dir(tmp_path / "run", models=["mobileface"], weightings=["gradxact"], same_pairs=False)
    page = _check_report(out)
    assert "No model pairs" in page
    with (out / "tables" / "bc_pairs.csv").open() as f:
        assert {r["kind"] for r in csv.DictReader(f)} == {"different"}


def test_missing_inputs_are_reported_not_drawn(tmp_path):
    out = make_output_dir(tmp_path / "run", models=["faceres"], weightings=["gradcam"])
    (out / "tables" / "transfer.csv").unlink()
    (out / "maps" / "mean_layers.npz").unlink()
    page = report.write_report(out).read_text(encoding="utf-8")
    assert "Figure transfer.png not drawn: tables/transfer.csv not found" in page
    assert "Figure layer_maps.png not drawn" in page
    assert not (out / "figures" / "transfer.png").exists()
    assert page.count("<img") == len(FIGURE_FILES) - 2


def test_figures_reject_empty_input(tmp_path):
    with pytest.raises(figures.NoData):
        figures.occlusion_curves([], tmp_path / "x.png", models=["a"], weightings=["gradcam"])
    with pytest.raises(figures.NoData):
        figures.mean_overall_maps({}, None, tmp_path / "x.png", models=["a"], weightings=["gradcam"])


def test_figures_never_import_pyplot(tmp_path):
    code = (
        "import sys\n"
        "from leam_jax.study import figures\n"
        "rows = [dict(weighting='gradcam', fill='mean', percent='1', source_model='a', target_model='a',"
        " dcos_mean='0.1', n='3')]\n"
        f"figures.transfer_heatmap(rows, {str(tmp_path / 't.png')!r}, models=['a'])\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True)
    assert (tmp_path / "t.png").is_file()


def test_mean_map_grid_row_labels_stay_on_the_canvas(tmp_path):
    """The full study's 4 models x 3 weightings grid: row labels beside the fixed-aspect panels
    used to run off the left edge (cut in the report)."""
    rng = np.random.default_rng(0)
    models, weightings = ["dlib_resnet", "faceres", "faceres_deep", "mobileface"], ["gradcam", "layercam", "gradxact"]
    maps = {(m, w): rng.random((64, 64)) / 4096 for m in models for w in weightings}
    labels = np.zeros((64, 64), int)
    labels[20:40, 20:40] = regions.CLASSES.index("skin")
    img = cv2.imread(str(figures.mean_overall_maps(maps, labels, tmp_path / "m.png", models=models,
                                                   weightings=weightings)))
    assert (img[:, :3] >= 250).all() and (img[:, -3:] >= 250).all()
