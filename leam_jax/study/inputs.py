"""What a sweep reads (I/O edge): person folders, a manifest CSV, or the built-in samples.

Every source becomes a list of :class:`Source` rows in a fixed order; the
sweep's shard plan, and so its results, depend only on that order.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from leam_jax.face import decode


@dataclasses.dataclass(frozen=True)
class Source:
    """One image file. ``person`` is the id the user gave; ``attrs`` are extra manifest columns;
    ``digest`` the sha256 of the file's bytes (:func:`with_digests`; empty: not read yet, or unreadable)."""

    path: str
    person: str
    attrs: tuple[tuple[str, str], ...] = ()
    digest: str = ""


class InputError(ValueError):
    """The list of inputs itself is unusable (missing folder, bad manifest)."""


def from_data_dir(data_dir: str | Path, *, max_people: int = 0, max_images_per_person: int = 0) -> list[Source]:
    """``data_dir/<person>/<image>`` (LFW, VGGFace2, CelebA-by-identity layout)."""
    try:
        items = decode.list_people(data_dir, max_people=max_people, max_images_per_person=max_images_per_person)
    except FileNotFoundError as e:
        raise InputError(str(e)) from e
    if not items:
        raise InputError(f"{data_dir}: no images in person sub-folders ({', '.join(sorted(decode.IMAGE_SUFFIXES))})")
    return [Source(it.path, it.person) for it in items]


def from_manifest(manifest: str | Path, *, max_people: int = 0, max_images_per_person: int = 0) -> list[Source]:
    """A CSV with columns ``path`` and ``person`` (or ``identity``) and any attribute columns
    (e.g. ``gender``).

    Relative paths are taken from the manifest's folder. Rows keep their order;
    the caps apply per person in order of first appearance.
    """
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            fields = list(rows[0].keys()) if rows else []
    except OSError as e:
        raise InputError(f"{manifest}: cannot read manifest ({e.strerror})") from e
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"{manifest}: not a UTF-8 CSV ({e})") from e
    if not rows:
        raise InputError(f"{manifest}: no rows")
    person_col = "identity" if "identity" in fields and "person" not in fields else "person"
    missing = {"path", person_col} - set(fields)
    if missing:
        raise InputError(f"{manifest}: missing column(s) {sorted(missing)} (person may be named identity); columns are {fields}")
    attr_names = [c for c in fields if c not in ("path", person_col)]
    out, per_person = [], {}
    for line, row in enumerate(rows, start=2):
        path, person = (row.get("path") or "").strip(), (row.get(person_col) or "").strip()
        if not path or not person:
            raise InputError(f"{manifest}: line {line}: empty path or person")
        if person not in per_person:
            if max_people and len(per_person) >= max_people:
                continue
            per_person[person] = 0
        if max_images_per_person and per_person[person] >= max_images_per_person:
            continue
        per_person[person] += 1
        p = Path(path)
        p = p if p.is_absolute() else manifest.parent / p
        out.append(Source(str(p), person, tuple((a, (row.get(a) or "").strip()) for a in attr_names)))
    return out


def with_digests(sources: list[Source], threads: int = 0) -> list[Source]:
    """Each source with the sha256 of its file's bytes (read in 1 MiB chunks on ``threads``
    threads, 0: one per core); an unreadable file gets "" and the loader rejects it with the reason."""
    with ThreadPoolExecutor(max_workers=threads if threads > 0 else (os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_file_sha256, [s.path for s in sources]))
    return [dataclasses.replace(s, digest=d) for s, d in zip(sources, digests)]


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return ""
    return h.hexdigest()


def drop_duplicates(sources: list[Source]) -> tuple[list[Source], list[tuple[str, str]]]:
    """(sources with every file once, (path, reason) of each row dropped). A row is a duplicate of
    an earlier one with the same resolved path, or the same content (``digest``): analysed twice it
    would pair a photo with itself as the same person."""
    first_path: dict[str, Source] = {}
    first_content: dict[str, Source] = {}
    kept, dropped = [], []
    for s in sources:
        real = os.path.realpath(s.path)
        twin, how = (first_path.get(real), "the same file") if real in first_path else (
            first_content.get(s.digest) if s.digest else None, "the same content")
        if twin is not None:
            other = "" if twin.person == s.person else f"; listed there as person {twin.person!r}"
            dropped.append((s.path, f"duplicate of {twin.path} ({how}{other}); analysed once"))
            continue
        first_path[real] = s
        if s.digest:
            first_content[s.digest] = s
        kept.append(s)
    return kept, dropped


def builtin_samples() -> list[Source]:
    """The sample photos shipped in a registry package (group photos: every face is its own id)."""
    from leam_jax.study import samples  # fetches (or reads from cache) the package's demo images

    return [Source(str(p), Path(p).stem) for p in samples.sample_images()]
