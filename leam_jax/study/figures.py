"""Figures of a LEAM study: one function per figure, each writing one PNG.

Every function takes data the caller already loaded (arrays, or CSV rows as
``dict[str, str]`` exactly as :mod:`csv` reads the study tables) and an output
path. Figures are built on ``matplotlib.figure.Figure`` with the Agg canvas, so
pyplot is never imported and a user's interactive backend is left alone; the
matplotlib style is reset to the defaults inside each call (``style.context``),
so a user's rc settings neither leak in nor get changed.

Colours: maps use perceptually uniform colormaps (``magma``, ``cividis``) and
categories use the Okabe-Ito palette, with line styles as a second cue, so the
figures stay readable with colour-vision deficiencies and in greyscale.

A function given nothing to draw raises :class:`NoData` (a ``ValueError``);
the report catches it and says which figure is missing and why.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.style
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FixedLocator, NullLocator, PercentFormatter

from leam_jax.face import regions

DPI = 120
# Okabe & Ito (2008), "Color Universal Design": distinguishable with all common colour-vision deficiencies.
OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
MAP_CMAP = "magma"
MATRIX_CMAP = "cividis"
LINESTYLES = ("-", "--", ":", "-.")
METHODS = ("leam", "random", "input_gradient", "last_layer")
METHOD_COLOURS = {"leam": OKABE_ITO[5], "random": "#777777", "input_gradient": OKABE_ITO[0], "last_layer": OKABE_ITO[2]}
CRITICAL_REGION = regions.CRITICAL_REGION

# Region outlines drawn over the mean maps: name, face classes (leam_jax.face.regions), colour, line style.
REGION_OUTLINES = (
    ("eyes", regions.REGION_GROUPS["eyes"], "#56B4E9", "-"),
    ("brows", regions.REGION_GROUPS["brows"], "#FFFFFF", "--"),
    ("nose", regions.REGION_GROUPS["nose_all"], "#00E0A0", ":"),
    ("lips", regions.REGION_GROUPS["lips"], "#F0A0D0", "-."),
)

_STYLE = {
    "font.size": 9,
    "axes.titlesize": 9,
    "axes.labelsize": 9,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 11,
    "savefig.facecolor": "white",
}


class NoData(ValueError):
    """Raised when a figure has nothing to draw; the message says what was missing."""


def number(value: str | float | None) -> float:
    """A CSV cell as a float (empty or unparsable cells are NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def default_fill(fills: Sequence[str]) -> str | None:
    """The fill the study headlines: the run's first fill, which the tables list first."""
    fills = list(dict.fromkeys(fills))
    return fills[0] if fills else None


def text(s: object) -> str:
    """Untrusted text as a literal matplotlib label: no mathtext (``$``), no control characters."""
    s = "".join(ch if ch.isprintable() else " " for ch in str(s))
    return s.replace("$", r"\$")


def wrap_name(name: str, width: int = 18) -> str:
    """Wraps a layer name at its separators (``.``, ``_``, ``/``, ``-``), then anywhere if still too long."""
    lines, line = [], ""
    for token in re.findall(r"[^._/-]*[._/-]?", name):
        if line and len(line) + len(token) > width:
            lines.append(line)
            line = ""
        line += token
    lines.append(line)
    return "\n".join(textwrap.fill(part, width, break_long_words=True) for part in lines if part)


def _unique(values) -> list:
    return list(dict.fromkeys(values))


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    # A wider margin than the default 3 pt: rotated row labels beside fixed-aspect image
    # panels otherwise touched, and in the full report were cut by, the left edge.
    fig.get_layout_engine().set(w_pad=8 / 72, h_pad=4 / 72)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png", metadata={"Software": None})
    return path


def _styled(fn):
    def wrapper(*args, **kwargs):
        with matplotlib.style.context(["default", _STYLE]):
            return fn(*args, **kwargs)

    wrapper.__name__, wrapper.__qualname__, wrapper.__doc__ = fn.__name__, fn.__qualname__, fn.__doc__
    wrapper.__wrapped__ = fn
    return wrapper


def _outline_masks(labels: np.ndarray) -> list[tuple[str, np.ndarray, str, str]]:
    labels = np.asarray(labels)
    out = [("face", labels > 0, "#BBBBBB", "-")]
    for name, classes, colour, style in REGION_OUTLINES:
        ids = [regions.CLASS_ID[c] for c in classes]
        out.append((name, np.isin(labels, ids), colour, style))
    return out


def _draw_outlines(ax, outlines, *, linewidth: float = 1.0) -> None:
    """Contours between region classes, in axes coordinates [0, 1] x [0, 1] (y down)."""
    for _, mask, colour, style in outlines:
        if not mask.any() or mask.all():
            continue  # no boundary to draw
        h, w = mask.shape
        xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
        ax.contour(xs, ys, mask.astype(np.float32), levels=[0.5], colors=[colour], linestyles=[style],
                   linewidths=linewidth)


def _image_axes(ax) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(1, 0)
    ax.set_xticks([])
    ax.set_yticks([])


def _empty_panel(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#555555", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


# ---------------------------------------------------------------------------
# 1. Mean overall maps with region outlines.


@_styled
def mean_overall_maps(maps: Mapping[tuple[str, str], np.ndarray], labels: np.ndarray | None, path: str | Path, *,
                      models: Sequence[str], weightings: Sequence[str]) -> Path:
    """Grid of mean overall maps (rows models, columns weightings) with region outlines.

    Args:
      maps: (model, weighting) -> [H, W] mean overall map (sums to 1).
      labels: [H', W'] face_regions class ids (most frequent class per pixel), or None.
      path: PNG to write.
      models, weightings: row and column order.

    Maps are shown as density relative to a uniform map (value x H x W) on one
    colour scale shared by all panels.
    """
    present = {k: np.asarray(v, np.float64) for k, v in maps.items() if k[0] in models and k[1] in weightings}
    if not present:
        raise NoData("no mean overall maps for the listed models and weightings")
    scaled = {k: v * v.size for k, v in present.items()}
    vmax = max(float(np.percentile(v, 99.5)) for v in scaled.values())
    vmax = vmax if vmax > 0 else 1.0
    outlines = _outline_masks(labels) if labels is not None else []
    nr, nc = len(models), len(weightings)
    fig = _new_figure(max(5.5, 2.5 * nc + 1.3), 2.5 * nr + 1.0)
    axes = fig.subplots(nr, nc, squeeze=False)
    image = None
    for i, model in enumerate(models):
        for j, weighting in enumerate(weightings):
            ax = axes[i, j]
            if (model, weighting) in scaled:
                image = ax.imshow(scaled[model, weighting], cmap=MAP_CMAP, vmin=0.0, vmax=vmax,
                                  extent=(0, 1, 1, 0), interpolation="bilinear")
                _draw_outlines(ax, outlines)
                _image_axes(ax)
            else:
                _empty_panel(ax, "no map")
            if i == 0:
                ax.set_title(text(weighting))
            if j == 0:
                ax.set_ylabel(text(model))
    fig.colorbar(image, ax=axes, shrink=0.8, label="relevance / uniform density")
    if outlines:
        handles = [Line2D([], [], color=c, linestyle=s, linewidth=1.5, label=n) for n, _, c, s in outlines]
        leg = fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), facecolor="#333333",
                         labelcolor="white", edgecolor="#333333", title="region outlines (most frequent class)")
        leg.get_title().set_color("white")
    fig.suptitle("Mean overall LEAM map")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 2. Per-layer strips.


@_styled
def layer_strips(layer_maps: Mapping[tuple[str, str], np.ndarray], taps: Mapping[str, Sequence[str]],
                 path: str | Path, *, models: Sequence[str], weightings: Sequence[str],
                 labels: np.ndarray | None = None, max_columns: int = 8) -> Path:
    """Mean per-layer maps in tap order, one strip per (model, weighting), tap names as captions.

    Args:
      layer_maps: (model, weighting) -> [L, h, w] mean per-layer maps.
      taps: model -> its L tap names (missing or mismatched: "layer i").
      path: PNG to write.
      models, weightings: strip order.
      labels: optional [H, W] class ids; the face outline is drawn faintly for orientation.
      max_columns: strips longer than this wrap onto further rows.

    Each panel has its own colour scale (0 to its maximum): the figure shows
    where each layer looks, not how concentrated it is.
    """
    strips = [(m, w, np.asarray(layer_maps[m, w], np.float64)) for m in models for w in weightings
              if (m, w) in layer_maps and np.asarray(layer_maps[m, w]).ndim == 3 and len(layer_maps[m, w])]
    if not strips:
        raise NoData("no per-layer maps for the listed models and weightings")
    ncols = max(1, min(max_columns, max(len(s[2]) for s in strips)))
    blocks = [math.ceil(len(s[2]) / ncols) for s in strips]
    nrows = sum(blocks)
    fig = _new_figure(1.2 * ncols + 0.8, 1.55 * nrows + 0.5)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    # Only the face outline (white, thin): enough to orient a 64x64 panel.
    face = [(n, m, "#FFFFFF", s) for n, m, _, s in _outline_masks(labels)[:1]] if labels is not None else []
    row = 0
    for (model, weighting, maps), nblock in zip(strips, blocks):
        names = [str(t) for t in taps.get(model, ())]
        if len(names) != len(maps):
            names = [f"layer {i}" for i in range(len(maps))]
        for k in range(nblock * ncols):
            ax = axes[row + k // ncols, k % ncols]
            if k >= len(maps):
                ax.set_axis_off()
                continue
            m = maps[k]
            top = float(m.max())
            ax.imshow(m, cmap=MAP_CMAP, vmin=0.0, vmax=top if top > 0 else 1.0, extent=(0, 1, 1, 0),
                      interpolation="nearest")
            _draw_outlines(ax, face, linewidth=0.6)
            _image_axes(ax)
            caption = wrap_name(text(names[k]))
            ax.set_title(f"{k}: {caption}" if top > 0 else f"{k}: {caption}\n(all zero)", fontsize=8)
            if k % ncols == 0:
                ax.set_ylabel(f"{text(model)}\n{text(weighting)}", fontsize=9)
        row += nblock
    fig.suptitle("Mean per-layer LEAM maps in tap order (each panel scaled to its own maximum)")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 3. Region shares.


def _pick_group(rows: Sequence[Mapping[str, str]]) -> str | None:
    groups = _unique(r.get("group", "all") for r in rows)
    return "all" if "all" in groups else (groups[0] if groups else None)


def _region_panel(ax, rows, region_names: list[str], hues: list[str], pct: float) -> None:
    """One model's bars (mean share with CI whiskers per weighting) and dashed area-share ticks."""
    x = np.arange(len(region_names))
    width = 0.8 / max(1, len(hues))
    by_key = {(r["weighting"], r["region"]): r for r in rows}
    for h, weighting in enumerate(hues):
        mean, lo, hi = (np.array([number(by_key.get((weighting, g), {}).get(c)) for g in region_names])
                        for c in ("share_mean", "share_ci_low", "share_ci_high"))
        err = np.nan_to_num(np.stack([mean - lo, hi - mean]), nan=0.0).clip(min=0.0)
        ax.bar(x - 0.4 + width * (h + 0.5), np.nan_to_num(mean, nan=0.0), width, yerr=err, capsize=2,
               color=OKABE_ITO[h % len(OKABE_ITO)], edgecolor="black", linewidth=0.4,
               error_kw={"elinewidth": 0.8, "ecolor": "#222222"})
    area = []
    for g in region_names:
        vals = [number(r["area_share_mean"]) for r in rows if r["region"] == g]
        vals = [v for v in vals if not math.isnan(v)]
        area.append(float(np.mean(vals)) if vals else math.nan)
    ok = ~np.isnan(area)
    ax.hlines(np.asarray(area)[ok], x[ok] - 0.45, x[ok] + 0.45, colors="black", linestyles="--", linewidth=1.2)
    if CRITICAL_REGION in region_names and len(region_names) > 1:
        ax.axvline(len(region_names) - 1.5, color="#888888", linewidth=0.8)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
    ax.set_ylim(bottom=0)
    ax.set_ylabel(f"share of top {pct:g}% pixels")
    ax.grid(axis="y", color="#DDDDDD", linewidth=0.6)
    ax.set_axisbelow(True)


@_styled
def region_share_bars(rows: Sequence[Mapping[str, str]], path: str | Path, *, models: Sequence[str],
                      weightings: Sequence[str], top_percent: float = 1.0) -> Path:
    """Share of the top-p% pixels per region with 95% CIs, one panel per model, weightings as hue.

    Args:
      rows: tables/region_shares.csv rows.
      path: PNG to write.
      models, weightings: panel and hue order.
      top_percent: which threshold to show (falls back to the smallest present).

    The region's share of the frame's pixels (area share) is drawn as a black
    dashed tick: a bar above it means the map is enriched in that region.
    """
    group = _pick_group(rows)
    rows = [r for r in rows if r.get("group", "all") == group]
    percents = sorted({number(r["top_percent"]) for r in rows if not math.isnan(number(r["top_percent"]))})
    if not percents:
        raise NoData("region_shares.csv has no rows")
    pct = top_percent if any(math.isclose(p, top_percent) for p in percents) else percents[0]
    rows = [r for r in rows if math.isclose(number(r["top_percent"]), pct)]
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    if not shown:
        raise NoData("region_shares.csv has no rows for the listed models")
    region_names = _unique(r["region"] for r in rows)
    if CRITICAL_REGION in region_names:  # the derived row goes last, after a separator
        region_names = [g for g in region_names if g != CRITICAL_REGION] + [CRITICAL_REGION]
    hues = [w for w in weightings if any(r["weighting"] == w for r in rows)]
    x = np.arange(len(region_names))
    fig = _new_figure(min(10.5, max(7.0, 0.5 * len(region_names) * max(1, len(hues)) ** 0.5 + 2)), 2.6 * len(shown) + 1.2)
    axes = fig.subplots(len(shown), 1, squeeze=False, sharex=True)[:, 0]
    for ax, model in zip(axes, shown):
        _region_panel(ax, [r for r in rows if r["model"] == model], region_names, hues, pct)
        ax.set_title(text(model), loc="left", fontweight="bold")
    axes[-1].set_xticks(x, [text(g) for g in region_names], rotation=35, ha="right")
    handles = [Patch(facecolor=OKABE_ITO[h % len(OKABE_ITO)], edgecolor="black", label=text(w))
               for h, w in enumerate(hues)]
    handles.append(Line2D([], [], color="black", linestyle="--", label="area share of region"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(f"Region shares of the top {pct:g}% LEAM pixels (group {text(group)}; bars: mean, whiskers: 95% CI)")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 4. BC same vs different.


@_styled
def bc_distributions(pair_rows: Sequence[Mapping[str, str]], path: str | Path, *, models: Sequence[str],
                     weightings: Sequence[str],
                     means: Mapping[tuple[str, str], tuple[float, float]] | None = None) -> Path:
    """Histograms of BC between overall maps, same-person vs different-person pairs.

    Args:
      pair_rows: tables/bc_pairs.csv rows (a capped sample of pairs).
      path: PNG to write.
      models, weightings: rows and columns.
      means: (model, weighting) -> (same mean, different mean) over all pairs
        (tables/bc.csv, layer overall, group all); marked as vertical lines.
        Where absent, the sample means are marked.
    """
    data: dict[tuple[str, str, str], list[float]] = {}
    for r in pair_rows:
        v = number(r.get("bc"))
        if not math.isnan(v):
            data.setdefault((r["model"], r["weighting"], r["kind"]), []).append(v)
    if not any((m, w, k) in data for m in models for w in weightings for k in ("same", "different")):
        raise NoData("bc_pairs.csv has no pairs for the listed models and weightings")
    values = np.concatenate([np.asarray(v) for v in data.values()])
    top = max(0.05, float(values.max()) * 1.05)
    bins = np.linspace(0.0, top, 41)
    means = means or {}
    kinds = (("same", "same person", OKABE_ITO[5]), ("different", "different people", OKABE_ITO[0]))
    nr, nc = len(models), len(weightings)
    fig = _new_figure(max(7.0, 3.3 * nc + 0.8), 2.5 * nr + 0.8)
    axes = fig.subplots(nr, nc, squeeze=False, sharex=True)
    for i, model in enumerate(models):
        for j, weighting in enumerate(weightings):
            ax = axes[i, j]
            drawn = False
            for idx, (kind, name, colour) in enumerate(kinds):
                vals = np.asarray(data.get((model, weighting, kind), []))
                if vals.size == 0:
                    continue
                drawn = True
                ax.hist(vals, bins=bins, density=True, histtype="stepfilled", alpha=0.35, color=colour)
                ax.hist(vals, bins=bins, density=True, histtype="step", color=colour, linewidth=1.2)
                full = means.get((model, weighting), (math.nan, math.nan))[idx]
                mean = full if not math.isnan(full) else float(vals.mean())
                ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5,
                           label=f"{name}: mean {mean:.3f} (n={vals.size})")
            if drawn and (model, weighting, "same") not in data:
                ax.plot([], [], " ", label="no same-person pairs")  # a legend line without a marker
            if drawn:
                ax.legend(loc="upper right", fontsize=7, framealpha=0.85, edgecolor="#CCCCCC")
                ax.set_yticks([])
            else:
                _empty_panel(ax, "no pairs")
            if i == 0:
                ax.set_title(text(weighting))
            if j == 0:
                ax.set_ylabel(f"{text(model)}\ndensity")
            if i == nr - 1:
                ax.set_xlabel("Bhattacharyya coefficient (overall maps)")
    fig.suptitle("Map similarity (BC), same person vs different people; dashed lines: means")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 5. Occlusion curves.


def _method_curves(rows, model: str, method: str, weightings: Sequence[str]) -> list:
    """[(weighting or None, (percents, mean, ci_low, ci_high))]: one curve per weighting, or a single
    one (weighting None) when the method's numbers do not depend on the weighting."""
    curves = {}
    for weighting in weightings:
        sel = {number(r["percent"]): r for r in rows
               if r["model"] == model and r["method"] == method and r["weighting"] == weighting}
        if sel:
            p = np.array(sorted(sel))
            curves[weighting] = (p, *(np.array([number(sel[q][c]) for q in p])
                                      for c in ("dcos_mean", "dcos_ci_low", "dcos_ci_high")))
    if not curves:
        return []
    first = next(iter(curves.values()))
    same = all(c[0].shape == first[0].shape and np.allclose(c[0], first[0]) and
               np.allclose(c[1], first[1], equal_nan=True) for c in curves.values())
    return [(None, first)] if same else list(curves.items())


@_styled
def occlusion_curves(rows: Sequence[Mapping[str, str]], path: str | Path, *, models: Sequence[str],
                     weightings: Sequence[str], fill: str | None = None, max_columns: int = 3) -> Path:
    """Δcos vs occluded percent per method with 95% CI bands, one panel per model.

    Args:
      rows: tables/occlusion.csv rows.
      path: PNG to write.
      models, weightings: panel order and line styles (one line style per weighting).
      fill: occlusion fill to show (default: the run's first fill, as the headline).
      max_columns: panels per row.

    A method whose numbers do not depend on the weighting (random pixels, input
    gradient) is drawn once.
    """
    group = _pick_group(rows)
    rows = [r for r in rows if r.get("group", "all") == group]
    fill = fill or default_fill([r["fill"] for r in rows])
    rows = [r for r in rows if r["fill"] == fill]
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    if not shown:
        raise NoData("occlusion.csv has no rows for the listed models")
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    methods += [m for m in _unique(r["method"] for r in rows) if m not in methods]
    percents = sorted({number(r["percent"]) for r in rows if not math.isnan(number(r["percent"]))})
    ncols = min(max_columns, len(shown))
    nrows = math.ceil(len(shown) / ncols)
    fig = _new_figure(max(7.0, 3.4 * ncols + 0.6), 3.0 * nrows + 1.2)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    extra_colours = iter(OKABE_ITO[3:])
    colours = {m: METHOD_COLOURS.get(m) or next(extra_colours, "#000000") for m in methods}
    handles: dict[str, Line2D] = {}
    for k, ax in enumerate(axes.flat):
        if k >= len(shown):
            ax.set_axis_off()
            continue
        model = shown[k]
        for method in methods:
            for weighting, (p, mean, lo, hi) in _method_curves(rows, model, method, weightings):
                style = "-" if weighting is None else LINESTYLES[list(weightings).index(weighting) % len(LINESTYLES)]
                label = text(method) if weighting is None else f"{text(method)} ({text(weighting)})"
                ax.plot(p, mean, color=colours[method], linestyle=style, marker="o", markersize=3, linewidth=1.5)
                ax.fill_between(p, lo, hi, color=colours[method], alpha=0.15, linewidth=0)
                handles.setdefault(label, Line2D([], [], color=colours[method], linestyle=style, marker="o",
                                                 markersize=3, label=label))
        if len(percents) > 1 and percents[0] > 0:
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(percents))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xticks(percents, [f"{p:g}" for p in percents])
        ax.axhline(0.0, color="#999999", linewidth=0.6)
        ax.grid(color="#E5E5E5", linewidth=0.6)
        ax.set_title(text(model))
        ax.set_xlabel("occluded pixels (% of model input)")
        if k % ncols == 0:
            ax.set_ylabel("Δcos (drop in cosine to reference)")
    fig.legend(handles=list(handles.values()), loc="outside lower center", ncols=min(4, len(handles)))
    fig.suptitle(f"Occlusion: fill {text(fill)}, group {text(group)}; bands: 95% CI")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 6. Transfer matrix.


@_styled
def transfer_heatmap(rows: Sequence[Mapping[str, str]], path: str | Path, *, models: Sequence[str],
                     weighting: str | None = None, fill: str | None = None, percent: float = 1.0) -> Path:
    """Source x target matrix of Δcos when model A's top pixels are occluded in model B's input.

    Args:
      rows: tables/transfer.csv rows.
      path: PNG to write.
      models: axis order (models absent from the table are dropped).
      weighting: which weighting (default: the first in the table).
      fill: which fill (default: "mean" if present, else the first).
      percent: occluded percent (falls back to the closest present).
    """
    if not rows:
        raise NoData("transfer.csv has no rows")
    weighting = weighting or rows[0]["weighting"]
    rows = [r for r in rows if r["weighting"] == weighting]
    fill = fill or default_fill([r["fill"] for r in rows])
    rows = [r for r in rows if r["fill"] == fill]
    percents = sorted({number(r["percent"]) for r in rows if not math.isnan(number(r["percent"]))})
    if not percents:
        raise NoData(f"transfer.csv has no rows for weighting {weighting!r} and fill {fill!r}")
    pct = min(percents, key=lambda p: abs(p - percent))
    rows = [r for r in rows if math.isclose(number(r["percent"]), pct)]
    names = set(r["source_model"] for r in rows) | set(r["target_model"] for r in rows)
    axis = [m for m in models if m in names] + sorted(names - set(models))
    index = {m: i for i, m in enumerate(axis)}
    matrix = np.full((len(axis), len(axis)), np.nan)
    for r in rows:
        matrix[index[r["source_model"]], index[r["target_model"]]] = number(r["dcos_mean"])
    finite = matrix[np.isfinite(matrix)]
    if finite.size == 0:
        raise NoData("transfer.csv has no finite values")
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-9:
        pad = max(abs(hi) * 0.1, 1e-3)
        lo, hi = lo - pad, hi + pad
    n = len(axis)
    side = max(3.2, 0.9 * n + 2.0)
    fig = _new_figure(side + 1.2, side)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=MATRIX_CMAP, vmin=lo, vmax=hi)
    for i in range(n):
        for j in range(n):
            v = matrix[i, j]
            if math.isnan(v):
                ax.text(j, i, "–", ha="center", va="center", color="#555555")
                continue
            light = (v - lo) / (hi - lo) > 0.6  # cividis is light at the top: dark text there
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=9,
                    color="black" if light else "white", fontweight="bold" if i == j else "normal")
    ax.set_xticks(range(n), [text(m) for m in axis], rotation=30, ha="right")
    ax.set_yticks(range(n), [text(m) for m in axis])
    ax.set_xlabel("target model (occluded input evaluated)")
    ax.set_ylabel("source model (mask from)")
    fig.colorbar(image, ax=ax, shrink=0.8, label="Δcos")
    ax.set_title(f"Mask transfer, top {pct:g}%\n(weighting {text(weighting)}, fill {text(fill)})")
    return _save(fig, path)


# ---------------------------------------------------------------------------
# 7. Validity: person-specificity per layer, the randomisation cascade.


@_styled
def specificity_layers(rows: Sequence[Mapping[str, str]], path: str | Path, *, models: Sequence[str],
                       weightings: Sequence[str], sparsity: str = "full") -> Path:
    """AUC (same vs different person) of each layer's maps in tap order, one panel per model, one line per
    weighting; the overall map's AUC as a marker at the right. Pairs: within a source set if the table has
    such rows, else all pairs."""
    scope = next((r["pairs"] for r in rows if r["pairs"] != "all"), "all")
    rows = [r for r in rows if r["pairs"] == scope and r["sparsity"] == sparsity]
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    if not shown:
        raise NoData("specificity.csv has no rows for the listed models")
    fig = _new_figure(max(7.0, 3.6 * len(shown)), 3.6)
    axes = fig.subplots(1, len(shown), squeeze=False, sharey=True)[0]
    for ax, model in zip(axes, shown):
        for k, w in enumerate(weightings):
            sel = [r for r in rows if r["model"] == model and r["weighting"] == w]
            layers = [r for r in sel if r["layer"] != "overall"]
            overall = [r for r in sel if r["layer"] == "overall"]
            colour = OKABE_ITO[k % len(OKABE_ITO)]
            x = np.arange(len(layers))
            ax.plot(x, [number(r["auc"]) for r in layers], color=colour, marker="o", markersize=3, label=text(w))
            if overall:
                ax.plot([len(layers) + 0.5], [number(overall[0]["auc"])], color=colour, marker="D", markersize=6)
            ax.set_xticks(list(x) + [len(layers) + 0.5], [text(r["layer"]) for r in layers] + ["overall"],
                          rotation=90, fontsize=7)
        ax.axhline(0.5, color="#999999", linewidth=0.8, linestyle="--")
        ax.grid(color="#E5E5E5", linewidth=0.6)
        ax.set_title(text(model))
    axes[0].set_ylabel("AUC, same vs different person")
    axes[0].legend(loc="best", fontsize=8)
    fig.suptitle(f"Person-specificity per layer ({text(sparsity)} maps, pairs: {text(scope)}); dashed: chance")
    return _save(fig, path)


def _cascade_curve(ax, rows: Sequence[Mapping[str, str]], model: str, weightings: Sequence[str]) -> None:
    for k, w in enumerate(weightings):
        sel = sorted((r for r in rows if r["model"] == model and r["weighting"] == w), key=lambda r: number(r["step"]))
        if not sel:
            continue
        x = [0.0] + [number(r["fraction_randomised"]) for r in sel]
        mean = [1.0] + [number(r["spearman_mean"]) for r in sel]
        lo = [1.0] + [number(r["spearman_ci_low"]) for r in sel]
        hi = [1.0] + [number(r["spearman_ci_high"]) for r in sel]
        colour = OKABE_ITO[k % len(OKABE_ITO)]
        ax.plot(x, mean, color=colour, marker="o", markersize=3, label=text(w))
        ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
    ax.axhline(0.3, color="#999999", linewidth=0.8, linestyle="--")
    ax.set_xlabel("fraction of layers randomised (from the top)")
    ax.set_ylabel("Spearman to trained maps")
    ax.set_ylim(-0.2, 1.05)
    ax.grid(color="#E5E5E5", linewidth=0.6)
    ax.set_title(text(model))
    ax.legend(loc="lower left", fontsize=7)


@_styled
def sanity_cascade(rows: Sequence[Mapping[str, str]], arrays: Mapping[str, np.ndarray], path: str | Path, *,
                   models: Sequence[str], weightings: Sequence[str]) -> Path:
    """Per model (rows): the Spearman curve over the cascade, then one face's overall maps at each step
    (trained first) for the first weighting."""
    shown = [m for m in models if any(r["model"] == m for r in rows)]
    if not shown:
        raise NoData("sanity.csv has no rows (the randomisation check did not run)")
    w0 = weightings[0]
    steps = {m: arrays.get(f"sanity_steps/{m}") for m in shown}
    ncols = 1 + max(len(s) + 1 if s is not None else 1 for s in steps.values())
    fig = _new_figure(2.9 + 1.25 * (ncols - 1), 2.6 * len(shown) + 0.6)
    grid = fig.add_gridspec(len(shown), ncols, width_ratios=[2.4] + [1.0] * (ncols - 1))
    for i, m in enumerate(shown):
        _cascade_curve(fig.add_subplot(grid[i, 0]), rows, m, weightings)
        maps = arrays.get(f"sanity/{m}/{w0}/maps")
        if maps is None or steps[m] is None:
            continue
        labels = ["trained"] + [f"top {int(k)}" for k in steps[m]]
        for j, label in enumerate(labels):
            ax = fig.add_subplot(grid[i, 1 + j])
            ax.imshow(np.asarray(maps[0, j], np.float32), cmap=MAP_CMAP, extent=(0, 1, 1, 0), interpolation="bilinear")
            _image_axes(ax)
            ax.set_title(label, fontsize=8)
    fig.suptitle(f"Cascading randomisation; maps: {text(w0)}, one face, each step's own colour scale")
    return _save(fig, path)
