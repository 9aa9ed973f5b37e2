"""Per-person figures and the report's "People" section (reads what :mod:`people` wrote).

``people_section(output_dir, figure_dir, faces=...)`` reads ``tables/people.csv``
and ``maps/people.npz``, draws one figure per person into ``figure_dir``
(``person_000.png``, ...: file names never contain a person id) and returns an
HTML ``<section>``. As in :mod:`report`, every string from the tables (person
ids, model names) is untrusted and reaches the page only through :func:`esc`; in
the figures, through ``figures.text`` (no mathtext). The markup uses the report's
CSS classes and its HTML building blocks (:mod:`leam_jax.study.html`).

Colours follow :mod:`figures`: ``magma`` for maps, a ColorBrewer diverging map
(``RdBu_r``, readable with the common colour-vision deficiencies) centred on
zero for differences, and Okabe-Ito colours for the bars.

Face pixels are never stored in shards, tables or maps. Only with
``faces=True`` (the ``--report_faces`` flag) does the report re-run the face
pipeline on each shown person's first photo (:func:`aligned_face`) and draw the
mean map over that face, which then sits in the HTML file.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.patches import Patch
from matplotlib.ticker import PercentFormatter

from leam_jax.face import regions
from leam_jax.study import figures, people
from leam_jax.study.figures import NoData, number, text
from leam_jax.study.files import safe_cell
from leam_jax.study.html import esc, fmt, fmt_ci, load_npz, read_csv, section, table

DIFF_CMAP = "RdBu_r"
PERSON_COLOUR, POPULATION_COLOUR = figures.OKABE_ITO[5], figures.OKABE_ITO[0]  # vermillion / blue, as the diff map's red / blue
# Regions in the bar chart (top to bottom): the groups and the skin parts, the critical region last.
BAR_REGIONS = ("eyes", "brows", "nose_all", "lips", "forehead", "l_cheek", "r_cheek", "chin", "skin",
               regions.CRITICAL_REGION)
SUMMARY_K = 5
FACE_ALPHA = 0.85  # map opacity over the face at its maximum
_FIGURE_NAME = re.compile(r"person_\d{3,}\.png")


@dataclasses.dataclass(frozen=True)
class PersonModel:
    """One column of a person's figure: one model's maps and numbers."""

    model: str
    mean: np.ndarray  # [S, S] the person's mean map (sums to 1)
    diff: np.ndarray  # [S, S] mean minus the population mean map
    share: np.ndarray | None = None  # [R] the person's share of the top pixels per region
    population_share: np.ndarray | None = None  # [R] the population's
    consistency: float = math.nan
    n_images: int = 0


def _title(c: PersonModel) -> str:
    value = f"{c.consistency:.3f}" if math.isfinite(c.consistency) else "–"
    return f"{text(c.model)}\nconsistency {value} (n={c.n_images})"


def _map_row(axes, columns, face, outlines) -> object:
    """Row 0: the mean maps as density relative to uniform, one colour scale, over the face if given."""
    scaled = [np.asarray(c.mean, np.float64) * c.mean.size for c in columns]
    vmax = max(float(np.percentile(s, 99.5)) for s in scaled) or 1.0
    image = None
    for ax, c, s in zip(axes, columns, scaled):
        if face is not None:
            ax.imshow(face, extent=(0, 1, 1, 0), interpolation="bilinear")
            # Opacity grows with relevance: the face shows through where the map is low.
            alpha = FACE_ALPHA * np.clip(s / vmax, 0.0, 1.0) ** 0.5
        else:
            alpha = None
        image = ax.imshow(s, cmap=figures.MAP_CMAP, vmin=0.0, vmax=vmax, extent=(0, 1, 1, 0),
                          interpolation="bilinear", alpha=alpha)
        figures._draw_outlines(ax, outlines, linewidth=0.7)
        figures._image_axes(ax)
        ax.set_title(_title(c))
    return image


def _diff_row(axes, columns, outlines) -> object:
    """Row 1: person minus population, symmetric scale centred on zero."""
    scaled = [np.asarray(c.diff, np.float64) * c.diff.size for c in columns]
    vmax = max(float(np.percentile(np.abs(s), 99.5)) for s in scaled) or 1.0
    image = None
    for ax, s in zip(axes, scaled):
        image = ax.imshow(s, cmap=DIFF_CMAP, vmin=-vmax, vmax=vmax, extent=(0, 1, 1, 0), interpolation="bilinear")
        figures._draw_outlines(ax, outlines, linewidth=0.7)
        figures._image_axes(ax)
    return image


def _bar_row(axes, columns, region_names: Sequence[str], top_percent: float) -> None:
    """Row 2: the person's vs the population's share of the top pixels per region."""
    shown = [r for r in BAR_REGIONS if r in region_names]
    idx = [list(region_names).index(r) for r in shown]
    y = np.arange(len(shown))
    for k, (ax, c) in enumerate(zip(axes, columns)):
        if c.share is None or c.population_share is None or not shown:
            ax.set_axis_off()
            continue
        ax.barh(y - 0.2, np.asarray(c.share)[idx], 0.4, color=PERSON_COLOUR, edgecolor="black", linewidth=0.3)
        ax.barh(y + 0.2, np.asarray(c.population_share)[idx], 0.4, color=POPULATION_COLOUR, edgecolor="black",
                linewidth=0.3)
        ax.set_yticks(y, [text(r) for r in shown] if k == 0 else [""] * len(shown))
        ax.set_ylim(len(shown) - 0.5, -0.5)
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0, decimals=0))
        ax.set_xlabel(f"share of top {top_percent:g}% pixels")
        ax.grid(axis="x", color="#DDDDDD", linewidth=0.6)
        ax.set_axisbelow(True)


@figures._styled
def person_panel(person: str, columns: Sequence[PersonModel], path: str | Path, *, weighting: str = "",
                 region_names: Sequence[str] = people.REGION_NAMES, top_percent: float = 1.0,
                 face: np.ndarray | None = None, labels: np.ndarray | None = None) -> Path:
    """One person's figure: per model (columns) the mean map, its difference from the population
    and the region shares of the top pixels, person vs population.

    Args:
      person: the person's id (drawn as literal text).
      columns: one :class:`PersonModel` per model, in column order.
      path: PNG to write.
      weighting: named in the title.
      region_names: the region of each entry of ``share`` / ``population_share``.
      top_percent: the threshold the shares were taken at (axis label).
      face: optional [F, F, 3] uint8 face in the analysis frame; the mean map is drawn over it
        (``--report_faces`` only).
      labels: optional [H, W] class ids (the run's modal label map) for region outlines.
    """
    columns = list(columns)
    if not columns:
        raise NoData(f"no maps for person {person!r}")
    bars = any(c.share is not None for c in columns)
    nrows, ncols = 3 if bars else 2, len(columns)
    fig = figures._new_figure(max(5.5, 2.4 * ncols + 1.6), 2.4 * 2 + (2.6 if bars else 0.0) + 1.0)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    outlines = figures._outline_masks(labels) if labels is not None else []
    mean_image = _map_row(axes[0], columns, face, outlines)
    diff_image = _diff_row(axes[1], columns, outlines[:1])  # only the face outline over the diverging map
    fig.colorbar(mean_image, ax=axes[0, :], shrink=0.85, label="relevance / uniform")
    fig.colorbar(diff_image, ax=axes[1, :], shrink=0.85, label="person − population\n(per uniform)")
    axes[0, 0].set_ylabel("mean map")
    axes[1, 0].set_ylabel("difference")
    if bars:
        _bar_row(axes[2], columns, region_names, top_percent)
        fig.legend(handles=[Patch(facecolor=PERSON_COLOUR, edgecolor="black", label="this person"),
                            Patch(facecolor=POPULATION_COLOUR, edgecolor="black", label="population (people mean)")],
                   loc="outside lower center", ncols=2)
    fig.suptitle(f"{text(person)}" + (f" ({text(weighting)})" if weighting else ""))
    return figures._save(fig, path)


def aligned_face(path: str | Path, face_index: int, mode: str, *, pipeline=None) -> np.ndarray | None:
    """The face ``face_index`` of one photo warped into the analysis frame, [F, F, 3] uint8
    (F = ``alignment.ANALYSIS_SIZE``), or None when the photo cannot be read or that face is not
    found again.

    Re-runs the face pipeline (detect, mesh, align) at report time, as the sweep did
    (``mode``: "aligned" or "crops" as the run's ``--aligned``/``--crops``, else ""). Used only with ``--report_faces``: face pixels
    never enter shards, tables, maps or the default report. ``pipeline``: a
    :class:`~leam_jax.face.pipeline.FacePipeline` with ``all_faces=True`` to reuse across
    calls (built here otherwise; that loads the detector and mesh weights).
    """
    from leam_jax.face import decode
    from leam_jax.face.pipeline import FacePipeline  # loads weights: only when faces are asked for

    pipeline = pipeline if pipeline is not None else FacePipeline(all_faces=True)
    try:
        found = pipeline.read(path, aligned=mode == "aligned", crop=mode == "crops")
    except decode.ImageError:
        return None
    if not 0 <= face_index < len(found):
        return None
    return np.asarray(found[face_index].frame, np.uint8)


# ---------------------------------------------------------------------------
# The HTML section.


def _consistency_cell(r: Mapping[str, str]) -> str:
    return fmt_ci(r.get("consistency"), r.get("consistency_ci_low"), r.get("consistency_ci_high"))


def _summary_table(rows: list[dict[str, str]], models: Sequence[str], weighting: str) -> str:
    """The most and least consistent people per model (default weighting)."""
    out = []
    for m in models:
        most, least = people.most_least_consistent(rows, model=m, weighting=weighting, k=SUMMARY_K)
        for kind, sel in (("most", most), ("least", least)):
            out += [[esc(m), kind, esc(r["person"]), fmt(r["n_images"], ".0f"), _consistency_cell(r),
                     fmt(r["consistency_vs_others"]), fmt(r["distinctiveness"])] for r in sel]
    if not out:
        return '<p class="note">No person has two valid maps: consistency needs pairs.</p>'
    return table(["model", "which", "person", "images", "consistency (95% CI)", "BC to other people", "distinctiveness"],
                 out, source="tables/people.csv", text_columns=3)


def _person_table(rows: Sequence[Mapping[str, str]]) -> str:
    """One person's numbers, one row per model."""
    out = []
    for r in rows:
        top = (f"{esc(r['top_region'])}: {fmt(r['top_region_share'], percent=True)} vs "
               f"{fmt(r['top_region_population_share'], percent=True)} (×{fmt(r['top_region_ratio'], '.2f')})"
               if r.get("top_region") else "–")
        out.append([esc(r["model"]), fmt(r["n_images"], ".0f"), _consistency_cell(r),
                    fmt(r["consistency_vs_others"]), fmt(r["distinctiveness"]),
                    f"{fmt(r['critical_share'], percent=True)} vs {fmt(r['critical_share_population'], percent=True)}",
                    top])
    return table(["model", "images", "consistency (95% CI)", "BC to other people", "distinctiveness",
                  f"{regions.CRITICAL_REGION} share (person vs population)",
                  "most over-represented region (ratio)"], out, text_columns=1)


def _columns(arrays: Mapping[str, np.ndarray], i: int, weighting: str,
             rows: Mapping[str, Mapping[str, str]]) -> list[PersonModel]:
    """The figure columns of person ``i`` from people.npz (models without a map are skipped)."""
    out = []
    for m in (str(x) for x in arrays.get("models", [])):
        key = f"{m}/{weighting}"
        if f"mean/{key}/{i}" not in arrays:
            continue
        r = rows.get(m, {})
        out.append(PersonModel(m, arrays[f"mean/{key}/{i}"], arrays[f"diff/{key}/{i}"], arrays.get(f"share/{key}/{i}"),
                               arrays.get(f"population_share/{key}"), number(r.get("consistency")),
                               int(number(r.get("n_images"))) if r.get("n_images") else 0))
    return out


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}"></figure>'


def _face_source(output_dir: Path, faces: bool):
    """(a FacePipeline or None, the run's input mode for :func:`aligned_face`, why faces are not shown or "")."""
    if not faces:
        return None, "", ""
    summary = output_dir / "summary.json"
    config = json.loads(summary.read_text(encoding="utf-8")).get("config", {}) if summary.is_file() else {}
    try:
        from leam_jax.face.pipeline import FacePipeline

        mode = "aligned" if config.get("aligned") else "crops" if config.get("crops") else ""
        return FacePipeline(all_faces=True), mode, ""
    except Exception as e:  # noqa: BLE001 - missing weights must not stop the report; the reason is shown
        return None, "", f"face pipeline unavailable ({type(e).__name__}: {e})"


def _clear_figures(figure_dir: Path) -> None:
    """Never embed a stale person figure from an earlier run (only our own file names)."""
    if figure_dir.is_dir():
        for f in figure_dir.iterdir():
            if _FIGURE_NAME.fullmatch(f.name):
                f.unlink()


def _person_part(i: int, person: str, arrays, rows, weighting, figure_dir: Path, labels, face) -> str:
    """One person's sub-section: numbers, then the figure (or why it is missing)."""
    body = [f"<h3>{esc(person)}</h3>", _person_table(list(rows.values()))]
    path = figure_dir / f"person_{i:03d}.png"
    try:
        person_panel(person, _columns(arrays, i, weighting, rows), path, weighting=weighting,
                     region_names=[str(r) for r in arrays.get("regions", people.REGION_NAMES)],
                     top_percent=float(arrays.get("top_percent", 1.0)), face=face, labels=labels)
        body.append(_img(path, f"LEAM maps of {person}"))
    except NoData as e:
        body.append(f'<p class="note">Figure not drawn: {esc(e)}.</p>')
    return "\n".join(body)


INTRO = (
    "<p>Per person (default weighting {w}): <b>consistency</b> is the mean BC between the person's own overall "
    "maps (95% CI: bootstrap over the person's images, from 3 images up); <b>BC to other people</b> is the mean "
    "BC between one of their maps and one of anyone else's, the baseline consistency must beat; "
    "<b>distinctiveness</b> is 1 − BC between the person's mean map and the population mean map (every person "
    "counted once). Shown: the {n} people with the most photos (ties by id); all people are in "
    "tables/people.csv.</p>")


def people_section(output_dir: str | Path, figure_dir: str | Path, *, faces: bool) -> str:
    """The report's "People" section from tables/people.csv and maps/people.npz (a short note when
    they are missing); draws ``figure_dir/person_NNN.png``. ``faces``: draw each mean map over the
    person's re-aligned first photo (``--report_faces``; see :func:`aligned_face`)."""
    output_dir, figure_dir = Path(output_dir), Path(figure_dir)
    rows = read_csv(output_dir / "tables" / "people.csv")
    if not rows:
        return section("People", '<p class="note">No per-person data (tables/people.csv not found or empty).</p>')
    arrays = load_npz(output_dir / "maps" / "people.npz")
    weighting = str(arrays["weighting"]) if "weighting" in arrays else rows[0]["weighting"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    chosen = [str(p) for p in arrays.get("people", [])]
    parts = [INTRO.format(w=esc(weighting), n=len(chosen)), _summary_table(rows, models, weighting)]
    _clear_figures(figure_dir)
    if not arrays:
        parts.append('<p class="note">maps/people.npz not found: no per-person figures.</p>')
    pipeline, mode, why = _face_source(output_dir, faces)
    if why:
        parts.append(f'<p class="note">Faces not shown: {esc(why)}.</p>')
    elif pipeline is not None:
        parts.append('<p class="note">This page contains face photos (--report_faces): each mean map is drawn '
                     "over the person's first photo, re-aligned now from the input folder.</p>")
    labels_path = output_dir / "maps" / "mean_labels.npy"
    labels = np.load(labels_path, allow_pickle=False) if labels_path.is_file() else None
    by_person: dict[str, dict[str, dict[str, str]]] = {}
    for r in rows:
        if r["weighting"] == weighting:
            by_person.setdefault(r["person"], {})[r["model"]] = r
    for i, person in enumerate(chosen):
        face = None
        if pipeline is not None:
            face = aligned_face(str(arrays["face_path"][i]), int(arrays["face_index"][i]), mode, pipeline=pipeline)
            if face is None:
                parts.append(f'<p class="note">{esc(person)}: photo not readable or face not found again.</p>')
        row = by_person.get(safe_cell(person), {})  # people.csv holds ids as files.safe_cell wrote them
        parts.append(_person_part(i, person, arrays, row, weighting, figure_dir, labels, face))
    return section("People", "\n".join(parts))

