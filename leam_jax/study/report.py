"""One self-contained HTML report of a study output folder.

    python -m leam_jax.study.report OUTPUT_DIR

reads ``OUTPUT_DIR/{summary.json, failures.csv, tables/*.csv, maps/*}`` (the
layout ``leam_jax.main`` writes), draws the figures into ``OUTPUT_DIR/figures``
and writes ``OUTPUT_DIR/report.html``: inline CSS, figures embedded as base64
data URIs, no scripts and no external resources (a Content-Security-Policy
meta tag forbids them too), so the file can be mailed or archived alone.

Everything read from the tables, the summary and the paths is untrusted text
(person ids and attribute values come from user folders and CSVs): it reaches
the page only through :func:`esc`.
"""

from __future__ import annotations

import base64
import json
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from absl import app

from leam_jax.face import regions
from leam_jax.study import figures, people_report
from leam_jax.study.figures import NoData, number
from leam_jax.study.html import esc, fmt, fmt_ci, load_npz, missing, read_csv, section, table

# The paper's numbers (LEAM_SPEC.md section 5): 9 models, 1000 people.
PAPER_BC_SAME = (0.32, 0.57)
PAPER_BC_DIFF = (0.04, 0.13)
PAPER_NOSE_SHARE = (0.189, 0.297)  # nose share of the critical (top) pixels
PAPER_DCOS_LEAM_1 = 0.1148
PAPER_DCOS_RANDOM_1 = 0.0286

NOSE_CLASSES = regions.REGION_GROUPS["nose_all"]

# File name, caption: in page order.
FIGURES = (
    ("mean_maps.png", "Mean overall LEAM map per model (rows) and weighting (columns), as density relative to a "
                      "uniform map, with the outlines of the most frequent eye, brow, nose and lip regions."),
    ("layer_maps.png", "Mean per-layer maps in tap order for each model and weighting; each panel has its own "
                       "colour scale, so it shows where a layer looks rather than how concentrated it is."),
    ("region_shares.png", "Share of the top 1% most relevant pixels falling in each face region (bars, 95% "
                          "bootstrap CI over images) against the region's share of the frame (dashed ticks)."),
    ("bc_distributions.png", "Distribution of the Bhattacharyya coefficient between overall maps of the same person "
                             "and of different people (a capped sample of pairs); dashed lines mark the means."),
    ("occlusion.png", "Drop in cosine similarity to the reference when the top p% pixels are occluded, for LEAM "
                      "and the baselines (random pixels, input gradient, last layer only), default fill."),
    ("transfer.png", "Drop in cosine similarity at 1% when one model's (row) LEAM mask is occluded in another "
                     "model's (column) input, default fill and first weighting."),
    ("specificity_layers.png", "Person-specificity per layer: AUC of the BC between two faces' layer maps as a "
                               "same-person score (0.5: none), full maps, for each weighting; the dot at the right "
                               "is the overall map. Which layers carry identity rather than a face prior."),
    ("sanity.png", "Cascading model-parameter randomisation: Spearman rank correlation of the overall maps to the "
                   "trained model's as the top k layers' weights are redrawn (left, mean and 95% CI over the "
                   "subset's faces), and one face's maps at each step (right, first weighting). A method that "
                   "explains the model must change as its weights are destroyed."),
)


# ---------------------------------------------------------------------------
# Loading.


def _split_maps(arrays: Mapping[str, np.ndarray]) -> tuple[dict[tuple[str, str], np.ndarray], dict[str, list[str]]]:
    maps, taps = {}, {}
    for key, value in arrays.items():
        head, _, tail = key.partition("/")
        if head == "taps" and value.ndim == 1 and value.dtype.kind == "U":
            taps[tail] = [str(t) for t in value]
        elif tail:
            maps[head, tail] = value
    return maps, taps


# ---------------------------------------------------------------------------
# Formatting.


# ---------------------------------------------------------------------------
# Page parts.


def _summary_part(output_dir: Path, summary: Mapping, failures: list[dict[str, str]] | None,
                  models: Sequence[str], weightings: Sequence[str]) -> str:
    n_fail = summary.get("failures", len(failures) if failures is not None else "?")
    items = [
        ("output folder", esc(output_dir)),
        ("models", esc(", ".join(map(str, models))) or "–"),
        ("weightings", esc(", ".join(map(str, weightings))) or "–"),
        ("images", esc(summary.get("images", "?"))),
        ("faces", esc(summary.get("faces", "?"))),
        ("people", esc(summary.get("people", "?"))),
        ("failures", esc(n_fail) + " (files that could not be used; path and reason of each are in failures.csv "
                                   "in the output folder)"),
    ]
    if "seconds" in summary:
        items.append(("run time", fmt(summary["seconds"], ".0f") + " s"))
    body = ['<dl class="summary">'] + [f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items] + ["</dl>"]
    if failures:
        rows = [[esc(r.get("path", "")), esc(r.get("reason", ""))] for r in failures]
        body.append("<details><summary>First failures</summary>"
                    + table(["path", "reason"], rows[:20], total=len(rows), source="failures.csv", text_columns=2) + "</details>")
    if "config" in summary:
        config = json.dumps(summary["config"], indent=2, ensure_ascii=False, default=str, sort_keys=True)
        body.append(f"<details><summary>Run configuration</summary><pre>{esc(config)}</pre></details>")
    return section("Run", "\n".join(body))


def _groups_part(images: list[dict[str, str]] | None, bc: list[dict[str, str]] | None) -> str:
    if not images:
        return ""
    # Only the columns the tables were broken down by (a manifest may carry sizes, hashes, ...).
    grouped = {r["group"].split("=", 1)[0] for r in bc or [] if r.get("group", "all") != "all"}
    attributes = [c for c in images[0] if c not in ("image_id", "path", "person", "face_index") and c in grouped]
    if not attributes:
        return ""
    rows = []
    for a in attributes:
        for value, n in Counter(r.get(a, "") for r in images).most_common(30):
            rows.append([esc(a), esc(value), str(n)])
    return ("<h3>Groups</h3>\n<p>Faces per attribute value (groups are reported as attribute=value).</p>\n"
            + table(["attribute", "value", "faces"], rows, source="tables/images.csv", text_columns=2))


def _headline_part(headline: list[dict[str, str]] | None, shares: list[dict[str, str]] | None) -> str:
    if headline is None:
        return section("Headline", missing("tables/headline.csv"))
    nose: dict[tuple[str, str], float] = {}
    for r in shares or []:
        if r.get("group") == "all" and math.isclose(number(r.get("top_percent")), 1.0) and r.get("region") in NOSE_CLASSES:
            v = number(r.get("share_mean"))
            if not math.isnan(v):
                key = (r["model"], r["weighting"])
                nose[key] = nose.get(key, 0.0) + v
    header = ["model", "weighting", "BC same person", "BC different people", "p (same > different)",
              "eyes+brows+nose share of top 1%", "their area share", "nose share of top 1%",
              "Δcos LEAM 1%", "Δcos random 1%", "LEAM / random"]
    rows = []
    for r in headline:
        n = nose.get((r.get("model", ""), r.get("weighting", "")))
        rows.append([esc(r.get("model", "")), esc(r.get("weighting", "")), fmt(r.get("bc_same")),
                     fmt(r.get("bc_diff")), fmt(r.get("bc_p_value"), ".3g"),
                     fmt(r.get("critical_share"), percent=True), fmt(r.get("critical_area_share"), percent=True),
                     fmt(n, percent=True), fmt(r.get("dcos_leam_1"), ".4f"), fmt(r.get("dcos_random_1"), ".4f"),
                     fmt(r.get("leam_over_random_1"), ".2f")])
    rng = lambda lohi, f: f"{f(lohi[0])} – {f(lohi[1])}"
    pct = lambda v: f"{v * 100:.1f}%"
    rows.append(["paper (9 models, 1000 people)", "", rng(PAPER_BC_SAME, "{:.2f}".format),
                 rng(PAPER_BC_DIFF, "{:.2f}".format), "", "", "", rng(PAPER_NOSE_SHARE, pct),
                 f"{PAPER_DCOS_LEAM_1:.4f}", f"{PAPER_DCOS_RANDOM_1:.4f}",
                 f"{PAPER_DCOS_LEAM_1 / PAPER_DCOS_RANDOM_1:.2f}"])
    note = ('<p class="note">Last row: the reference values reported by the paper (LEAM_SPEC.md section 5); the '
            "paper gives ranges over its models. Nose share here sums the nose, nose bridge and nose tip classes "
            "(group all). Δcos uses the default occlusion fill; p is a one-sided permutation test.</p>")
    return section("Headline: this run next to the paper",
                    table(header, rows, total=len(rows), classes=[""] * len(headline) + ["paper"], text_columns=2) + note)


CRITERIA = (("person_specific", "person-specific (AUC ≥ 0.75)"),
            ("survives_randomisation", "survives randomisation (Spearman ≤ 0.3, falling)"),
            ("beats_random_pixels", "beats random pixels (≥ 2x)"),
            ("critical_region_enriched", "eyes+brows+nose enriched"))


def _mark(value: str | None) -> str:
    return {"1": "yes", "0": '<b class="fail">no</b>'}.get(value or "", "–")


def _validity_part(headline: list[dict[str, str]] | None, validity: list[dict[str, str]] | None) -> str:
    """Effect sizes with intervals and the four validity criteria (LEAM_SPEC section 6), first."""
    if headline is None or validity is None:
        return section("Validity", missing("tables/headline.csv or tables/validity.csv"))
    checks = {(r["model"], r["weighting"]): r for r in validity}
    header = ["model", "weighting", "target", "AUC same vs different person (95% CI over people)", "Cohen's d",
              "pairs", "Spearman to trained maps, all layers random", "LEAM / random Δcos at 1%",
              *[c[1] for c in CRITERIA]]
    rows = []
    for r in headline:
        v = checks.get((r["model"], r["weighting"]), {})
        rows.append([esc(r["model"]), esc(r["weighting"]), esc(r.get("target", "")),
                     fmt_ci(r.get("auc"), r.get("auc_ci_low"), r.get("auc_ci_high")), fmt(r.get("cohens_d"), ".2f"),
                     esc(r.get("pairs", "")), fmt(r.get("spearman_all_random")), fmt(r.get("leam_over_random_1"), ".2f"),
                     *[_mark(v.get(c[0])) for c in CRITERIA]])
    note = ('<p class="note">A map is evidence about a person and a model only if it passes these checks. AUC: '
            "the Bhattacharyya coefficient between two faces' overall maps as a same-person score over all pairs "
            "(0.5: no person-specific signal; full maps; pairs within one source set where the manifest names "
            "one, so image style does not pass for identity). Spearman: the maps after every layer's weights are "
            "redrawn (cascading model-parameter randomisation) against the trained model's. Every sparsity and "
            "layer is in tables/specificity.csv, every cascade step in tables/sanity.csv.</p>")
    return section("Validity: is each map evidence about the person and the model?",
                    table(header, rows, source="tables/validity.csv", text_columns=3) + note)


def _figures_part(figure_dir: Path, drawn: Mapping[str, str | None]) -> str:
    parts = []
    for name, caption in FIGURES:
        reason = drawn.get(name)
        path = figure_dir / name
        if reason is None and path.is_file():
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(caption)}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        else:
            parts.append(f'<p class="note">Figure {esc(name)} not drawn: {esc(reason or "file missing")}.</p>')
    return section("Figures", "\n".join(parts))


def _bc_table(bc: list[dict[str, str]] | None) -> str:
    if bc is None:
        return missing("tables/bc.csv")
    rows = [[esc(r["model"]), esc(r["weighting"]), esc(r["group"]), fmt(r["bc_same_mean"]), fmt(r["bc_diff_mean"]),
             fmt(r["n_same"], ".0f"), fmt(r["n_diff"], ".0f"), fmt(r["p_value"], ".3g")]
            for r in bc if r.get("layer") == "overall"]
    return table(["model", "weighting", "group", "BC same", "BC different", "same pairs", "different pairs", "p"],
                 rows, source="tables/bc.csv (per-layer rows included there)", text_columns=3)


def _pivot(rows: Sequence[Mapping[str, str]], keys: Sequence[str], column: str,
           cell: Callable[[Mapping[str, str]], str]) -> tuple[list[str], list[list[str]]]:
    columns = list(dict.fromkeys(r[column] for r in rows))
    table_rows: dict[tuple[str, ...], dict[str, str]] = {}
    for r in rows:
        table_rows.setdefault(tuple(r[k] for k in keys), {})[r[column]] = cell(r)
    out = [[esc(k) for k in key] + [cells.get(c, "–") for c in columns] for key, cells in table_rows.items()]
    return columns, out


def _shares_table(shares: list[dict[str, str]] | None) -> str:
    if shares is None:
        return missing("tables/region_shares.csv")
    top1 = [r for r in shares if math.isclose(number(r.get("top_percent")), 1.0)]
    if not top1:
        return '<p class="note">No rows at top 1% in tables/region_shares.csv.</p>'
    columns, rows = _pivot(top1, ("model", "weighting", "group"), "region",
                           lambda r: fmt_ci(r["share_mean"], r["share_ci_low"], r["share_ci_high"], percent=True))
    return ('<p>Share of the top 1% pixels per region: mean, then the 95% CI.</p>'
            + table(["model", "weighting", "group", *columns], rows, source="tables/region_shares.csv", text_columns=3,
                    compact=True))


def _occlusion_table(occlusion: list[dict[str, str]] | None) -> str:
    if occlusion is None:
        return missing("tables/occlusion.csv")
    if not occlusion:
        return '<p class="note">tables/occlusion.csv is empty.</p>'
    fill = figures.default_fill([r["fill"] for r in occlusion])
    # Group "all" and the default fill first; otherwise the table's own order.
    ordered = sorted(occlusion, key=lambda r: (r["group"] != "all", r["fill"] != fill))
    columns, rows = _pivot(ordered, ("model", "weighting", "group", "fill", "method"), "percent",
                           lambda r: fmt_ci(r["dcos_mean"], r["dcos_ci_low"], r["dcos_ci_high"], ".4f"))
    header = ["model", "weighting", "group", "fill", "method"] + [f"{fmt(c, 'g')}%" for c in columns]
    return ("<p>Δcos (mean, then the 95% CI) per occluded percent.</p>"
            + table(header, rows, source="tables/occlusion.csv", text_columns=5))


def _transfer_table(transfer: list[dict[str, str]] | None) -> str:
    if transfer is None:
        return missing("tables/transfer.csv")
    if not transfer:
        return '<p class="note">tables/transfer.csv is empty.</p>'
    columns, rows = _pivot(transfer, ("weighting", "fill", "percent", "source_model"), "target_model",
                           lambda r: fmt(r["dcos_mean"], ".4f"))
    return ("<p>Δcos on the target model (columns) with the source model's mask (row).</p>"
            + table(["weighting", "fill", "percent", "source \\ target", *columns], rows, source="tables/transfer.csv",
                    text_columns=4))


def _agreement_table(agreement: list[dict[str, str]] | None) -> str:
    if agreement is None:
        return missing("tables/model_agreement.csv")
    rows = [[esc(r["weighting"]), esc(r["model_a"]), esc(r["model_b"]), fmt(r["bc_mean"]), fmt(r["n"], ".0f")]
            for r in agreement]
    if not rows:
        return '<p class="note">No model pairs (one model only).</p>'
    return table(["weighting", "model A", "model B", "BC mean", "images"], rows, source="tables/model_agreement.csv",
                 text_columns=3)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0 auto;max-width:1320px;
padding:1.5em 2em;color:#1a1a1a;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-top:1.5em}
dl.summary{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1.2em}dl.summary dt{font-weight:600}
dl.summary dd{margin:0;word-break:break-all}
.scroll{overflow-x:auto;margin:.6em 0}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d0d0;padding:.25em .5em;text-align:right;vertical-align:top}
th{background:#f2f2f2;text-align:center}td.t{text-align:left}
tbody tr:nth-child(even){background:#fafafa}tr.paper td{background:#fff4e0;font-style:italic;white-space:nowrap}
b.fail{color:#b00020}
table.compact{font-size:.75em}table.compact td,table.compact th{padding:.2em .35em}
.ci{color:#666;font-size:.85em;white-space:nowrap}
.note{color:#555;font-size:.9em}
figure{margin:1.5em 0;text-align:center}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.92em;color:#333;margin-top:.3em;text-align:left}
details{margin:.6em 0}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.85em}
"""


def _draw_figures(output_dir: Path, figure_dir: Path, *, models: list[str], weightings: list[str],
                  tables: Mapping[str, list[dict[str, str]] | None]) -> dict[str, str | None]:
    """Draws every figure; returns file name -> None (drawn) or why it was not drawn."""
    overall, _ = _split_maps(load_npz(output_dir / "maps" / "mean_overall.npz"))
    layers, taps = _split_maps(load_npz(output_dir / "maps" / "mean_layers.npz"))
    labels_path = output_dir / "maps" / "mean_labels.npy"
    labels = np.load(labels_path, allow_pickle=False) if labels_path.is_file() else None
    bc_means = {(r["model"], r["weighting"]): (number(r["bc_same_mean"]), number(r["bc_diff_mean"]))
                for r in tables["bc"] or [] if r.get("layer") == "overall" and r.get("group") == "all"}

    def need(name: str) -> list[dict[str, str]]:
        if tables[name] is None:
            raise NoData(f"tables/{name}.csv not found")
        return tables[name]

    jobs = {
        "mean_maps.png": lambda p: figures.mean_overall_maps(overall, labels, p, models=models, weightings=weightings),
        "layer_maps.png": lambda p: figures.layer_strips(layers, taps, p, models=models, weightings=weightings,
                                                         labels=labels),
        "region_shares.png": lambda p: figures.region_share_bars(need("region_shares"), p, models=models,
                                                                 weightings=weightings),
        "bc_distributions.png": lambda p: figures.bc_distributions(need("bc_pairs"), p, models=models,
                                                                   weightings=weightings, means=bc_means),
        "occlusion.png": lambda p: figures.occlusion_curves(need("occlusion"), p, models=models,
                                                            weightings=weightings),
        "transfer.png": lambda p: figures.transfer_heatmap(need("transfer"), p, models=models,
                                                           weighting=weightings[0] if weightings else None),
        "specificity_layers.png": lambda p: figures.specificity_layers(need("specificity"), p, models=models,
                                                                       weightings=weightings),
        "sanity.png": lambda p: figures.sanity_cascade(need("sanity"), load_npz(output_dir / "maps" / "sanity.npz"),
                                                       p, models=models, weightings=weightings),
    }
    drawn: dict[str, str | None] = {}
    for name, job in jobs.items():
        path = figure_dir / name
        path.unlink(missing_ok=True)  # never embed a stale figure from an earlier run
        try:
            job(path)
            drawn[name] = None
        except NoData as e:
            drawn[name] = str(e)
    return drawn


def write_report(output_dir: str | Path, *, faces: bool = False) -> Path:
    """Draws ``output_dir/figures/*.png`` and writes ``output_dir/report.html``; returns the report's path.
    ``faces``: draw per-person maps over each shown person's aligned face (``--report_faces``)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"no study output folder at {output_dir}")
    summary_path = output_dir / "summary.json"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    names = ("images", "region_shares", "bc", "bc_pairs", "layer_diversity", "model_agreement", "occlusion",
             "transfer", "headline", "validity", "specificity", "sanity", "deletion")
    tables = {n: read_csv(output_dir / "tables" / f"{n}.csv") for n in names}
    failures = read_csv(output_dir / "failures.csv")
    headline = tables["headline"] or []
    models = [str(m) for m in summary.get("models", [])] or list(dict.fromkeys(r["model"] for r in headline))
    weightings = ([str(w) for w in summary.get("weightings", [])]
                  or list(dict.fromkeys(r["weighting"] for r in headline)))

    figure_dir = output_dir / "figures"
    drawn = _draw_figures(output_dir, figure_dir, models=models, weightings=weightings, tables=tables)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>LEAM study report</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>LEAM study report</h1>",
        '<p class="note">Layer Embedding Activation Mapping: which pixels of a person\'s face each recognition '
        "model relies on, layer by layer and overall, in a common 256x256 analysis frame.</p>",
        _summary_part(output_dir, summary, failures, models, weightings),
        _groups_part(tables["images"], tables.get("bc")),
        _validity_part(tables["headline"], tables["validity"]),
        _headline_part(tables["headline"], tables["region_shares"]),
        _figures_part(figure_dir, drawn),
        people_report.people_section(output_dir, figure_dir, faces=faces),
        section("Tables", "\n".join([
            "<h3>Map similarity, overall maps (BC)</h3>", _bc_table(tables["bc"]),
            "<h3>Region shares at top 1%</h3>", _shares_table(tables["region_shares"]),
            "<h3>Occlusion</h3>", _occlusion_table(tables["occlusion"]),
            "<h3>Mask transfer</h3>", _transfer_table(tables["transfer"]),
            "<h3>Model agreement (BC between models on the same image)</h3>",
            _agreement_table(tables["model_agreement"]),
        ])),
        "</body></html>",
    ]
    path = output_dir / "report.html"
    path.write_text("\n".join(p for p in parts if p) + "\n", encoding="utf-8")
    return path


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        raise app.UsageError("usage: python -m leam_jax.study.report OUTPUT_DIR")
    print(write_report(argv[1]))
    return 0


if __name__ == "__main__":
    app.run(main)
