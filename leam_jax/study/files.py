"""Writing and reading a run's own files (I/O edge): atomic writes, errors that name the file.

Every file the study writes goes through :func:`write_atomic` (a temporary
file, then ``os.replace``), so a crash or a full disk leaves the old file or
the new one, never half of one, and the error names the file it could not
write. :func:`safe_cell` is the one rule for user-supplied strings in CSVs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# A spreadsheet runs a cell that starts with one of these as a formula (=HYPERLINK(...), +cmd|...).
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


class DamagedFileError(ValueError):
    """A file of the run's own (run.json, a shard record) cannot be parsed."""


def write_atomic(path: Path, payload: bytes, *, sync: bool = False) -> None:
    """Write ``payload`` to ``path`` through ``path.tmp`` and ``os.replace``; errors name ``path``."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            if sync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(e.errno, f"cannot write {path} ({e.strerror})") from e


def write_json(path: Path, obj, *, indent: int = 2, sync: bool = False) -> None:
    write_atomic(path, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode(), sync=sync)


def read_json(path: Path, remedy: str):
    """A JSON file of the run; a damaged one is a :class:`DamagedFileError` naming it and ``remedy``."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DamagedFileError(f"{path}: damaged or truncated JSON ({e}); {remedy}") from e


def safe_cell(value: str) -> str:
    """A user-supplied string as a CSV cell a spreadsheet shows but never runs: a leading ``'``
    before ``= + - @``, tab or carriage return (the OWASP rule), unless the cell is a plain number."""
    if value.startswith(FORMULA_PREFIXES) and not _is_number(value):
        return "'" + value
    return value


def _is_number(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True
