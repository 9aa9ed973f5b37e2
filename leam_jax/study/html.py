"""The report's HTML building blocks: escaping, number formatting, tables and sections.

Everything read from the tables, the summary and the paths is untrusted text
(person ids and attribute values come from user folders and CSVs): it reaches
a page only through :func:`esc`. Shared by :mod:`leam_jax.study.report` and
:mod:`leam_jax.study.people_report`.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from leam_jax.study.figures import number

MAX_ROWS = 60  # longer tables are truncated in the page (the CSV has everything)


def esc(value: object) -> str:
    """Untrusted text as HTML text or attribute value."""
    return html.escape(str(value), quote=True)


def read_csv(path: Path) -> list[dict[str, str]] | None:
    """Rows of a CSV as dicts of strings, or None when the file is absent."""
    if not path.is_file():
        return None
    with path.open(newline="", encoding="utf-8") as f:
        return [dict(r) for r in csv.DictReader(f)]


def load_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def fmt(value: str | float | None, spec: str = ".3f", *, percent: bool = False) -> str:
    """A number for the page (escaped original when it is not a number; en dash when empty)."""
    if value is None or value == "":
        return "–"
    v = number(value)
    if math.isnan(v):
        return esc(value) if isinstance(value, str) and value.strip().lower() != "nan" else "–"
    return format(v * 100, ".1f") + "%" if percent else format(v, spec)


def fmt_ci(mean, low, high, spec: str = ".3f", *, percent: bool = False) -> str:
    main = fmt(mean, spec, percent=percent)
    lo, hi = fmt(low, spec, percent=percent), fmt(high, spec, percent=percent)
    if lo == "–" and hi == "–":
        return main
    return f'{main}<br><span class="ci">{lo} – {hi}</span>'


def table(header: Sequence[str], rows: Sequence[Sequence[str]], *, total: int | None = None, source: str = "",
          classes: Sequence[str] = (), text_columns: int = 0, compact: bool = False) -> str:
    """An HTML table; ``header`` is escaped here, cells must already be safe HTML.

    The first ``text_columns`` columns hold labels (left-aligned); the others numbers.
    """
    total = len(rows) if total is None else total
    table_class = ' class="compact"' if compact else ""
    out = [f'<div class="scroll"><table{table_class}>', "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>",
           "<tbody>"]
    for i, r in enumerate(rows[:MAX_ROWS]):
        cls = f' class="{esc(classes[i])}"' if i < len(classes) and classes[i] else ""
        out.append(f"<tr{cls}>" + "".join(f'<td class="t">{c}</td>' if j < text_columns else f"<td>{c}</td>"
                                          for j, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table></div>")
    shown = min(len(rows), MAX_ROWS)
    if total > shown:
        out.append(f'<p class="note">Showing {shown} of {total} rows; the full table is {esc(source)}.</p>')
    return "\n".join(out)


def section(title: str, body: str) -> str:
    return f"<section>\n<h2>{esc(title)}</h2>\n{body}\n</section>"


def missing(name: str) -> str:
    return f'<p class="note">{esc(name)} not found in the output folder.</p>'
