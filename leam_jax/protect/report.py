"""``report.html`` of a protection run: the headline, the leave-one-model-out figure and the tables.

Self-contained (inline CSS, the figure embedded); every string from the run goes through
:func:`leam_jax.study.html.esc`. No face pixels: the protected photos are in ``protected/``.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from leam_jax.protect.config import ProtectConfig
from leam_jax.study import figures, html
from leam_jax.study.report import CSS

KIND_COLOURS = {"leam": "#1b6ca8", "random": "#9a9a9a", "parser": "#d98c1f", "gradcam_last": "#7a4fa0",
                "full": "#2f8f4e"}


@figures._styled
def transfer_figure(rows: list[dict[str, str]], path: Path) -> Path | None:
    """Success at FAR 1e-3 on each left-out model per mask kind, with 95% person-bootstrap intervals."""
    if not rows:
        return None
    models = list(dict.fromkeys(r["left_out_model"] for r in rows))
    kinds = [k for k in KIND_COLOURS if any(r["mask"] == k for r in rows)]
    budget = rows[0]["percent"], rows[0]["epsilon"]
    fig = figures._new_figure(1.2 + 1.3 * len(models), 3.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(kinds), 1)
    for j, k in enumerate(kinds):
        for i, m in enumerate(models):
            r = next((r for r in rows if r["left_out_model"] == m and r["mask"] == k
                      and (r["percent"], r["epsilon"]) == budget or (r["left_out_model"] == m and r["mask"] == k
                                                                       and k == "full")), None)
            if r is None:
                continue
            y, lo, hi = (figures.number(r[c]) for c in ("success_far1e-3", "success_far1e-3_low",
                                                             "success_far1e-3_high"))
            x = i - 0.4 + width * (j + 0.5)
            ax.bar(x, y, width * 0.9, color=KIND_COLOURS[k], label=k if i == 0 else None)
            if np.isfinite(lo) and np.isfinite(hi):
                ax.errorbar(x, y, yerr=[[y - lo], [hi - y]], color="black", capsize=2, linewidth=0.8)
    ax.set_xticks(range(len(models)), [figures.wrap_name(m, 14) for m in models])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("protected at FAR 1e-3")
    ax.set_title(f"Left-out model, p = {budget[0]}%, ε = {budget[1]}/255")
    ax.legend(fontsize="small", ncols=len(kinds), loc="upper left")
    return figures._save(fig, path)


def _rows_table(rows, columns, ci=()) -> str:
    body = []
    for r in rows:
        cells = []
        for c in columns:
            if c in ci:
                cells.append(html.fmt_ci(r[c], r[ci[c][0]], r[ci[c][1]], percent=c.startswith("success")))
            else:
                cells.append(html.fmt(r[c], ".2f") if c in ("psnr_min", "ssim_min", "seconds_per_photo")
                             else html.esc(r[c]))
        body.append(cells)
    return html.table(columns, body, text_columns=3, compact=True)


def write(out: Path, cfg: ProtectConfig, summary: dict) -> Path:
    tables = {n: html.read_csv(out / "tables" / f"{n}.csv") or []
              for n in ("protection", "transfer", "pairs", "thresholds", "integrity")}
    prot = tables["protection"]
    head_rows = [r for r in prot if r["ensemble"] == "all" and r["transform"] == "none"
                 and r["percent"] in (f"{cfg.robust_percent:g}", "100") and r["epsilon"] == f"{cfg.robust_epsilon:g}"]
    robust_rows = [r for r in prot if r["ensemble"] == "all" and r["mask"] == "leam" and r["transform"] != "none"]
    fig = transfer_figure([r for r in tables["transfer"] if r["epsilon"] == f"{cfg.robust_epsilon:g}"
                           and r["percent"] in (f"{cfg.robust_percent:g}", "100")], out / "figures" / "transfer.png")
    cols = ["mask", "model", "role", "percent", "epsilon", "photos", "success_far1e-2", "success_far1e-3", "dcos",
            "psnr_min", "ssim_min", "seconds_per_photo"]
    floors = f", floors {cfg.floor_margin:g} impostor spreads below FAR 1e-2" if cfg.floor else ""
    ci = {c: (c + "_low", c + "_high") for c in ("success_far1e-2", "success_far1e-3", "dcos")}
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        "<title>LEAM protection report</title>", f"<style>{CSS}</style></head><body>",
        "<h1>LEAM-guided protection</h1>",
        '<p class="note">An additive perturbation of the photo, restricted to the top p% of the face pixels by the '
        "source models' LEAM maps and to |δ| ≤ ε, lowers the person's score on the source models; every figure is "
        "measured on the quantised photo (the product as read back from its PNG) through each model's own alignment. "
        "Success: the photo's cosine to the person's reference (the mean of their other clean photos) is at or below "
        "the model's threshold at that FAR, fitted on the clean photos of the run. Intervals: 95% person "
        "bootstrap.</p>",
        html.section("Run", f"<p>{summary['protected']} photos of {summary['people_protected']} people protected "
                     f"({summary['photos']} clean photos); {summary['failures']} failures (failures.csv); "
                     f"{html.esc(cfg.steps)} {html.esc(cfg.optimizer)} steps, EOT {html.esc(cfg.eot)}"
                     f"{floors}; "
                     f"source models {html.esc(', '.join(cfg.source_models))}; LEAM masks from {html.esc(cfg.target)} / "
                     f"{html.esc(cfg.weighting)} maps; {summary['seconds']:.0f} s.</p>"),
        html.section(f"Whole ensemble at p = {cfg.robust_percent:g}%, ε = {cfg.robust_epsilon:g}",
                     _rows_table(head_rows, cols, ci)),
    ]
    if fig is not None:
        data = base64.b64encode(fig.read_bytes()).decode("ascii")
        parts.append(html.section("Leave-one-model-out transfer", f'<figure><img src="data:image/png;base64,{data}" '
                                  'alt="transfer"></figure>' + _rows_table(
                                      tables["transfer"],
                                      ["left_out_model", "mask", "percent", "epsilon", "photos", "success_far1e-3",
                                       "dcos", "leam_above_random", "leam_dcos_above_random"], ci)))
    parts += [
        html.section("Robustness of the LEAM protection (whole ensemble)",
                     _rows_table(robust_rows, ["mask", "model", "transform", "percent", "epsilon", "photos",
                                                        "success_far1e-3", "dcos", "faces_found"], ci)),
        html.section("Protected versus protected", _plain_table(tables["pairs"])),
        html.section("Thresholds", _plain_table(tables["thresholds"])),
        html.section("Integrity (measured on the written photos)", _plain_table(tables["integrity"])),
        "</body></html>",
    ]
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def _plain_table(rows) -> str:
    if not rows:
        return '<p class="note">none</p>'
    cols = list(rows[0].keys())
    # html.fmt formats numbers and escapes anything else
    return html.table(cols, [[html.fmt(r[c], ".3f") for c in cols] for r in rows], text_columns=1, compact=True)
