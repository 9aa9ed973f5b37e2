"""The sweep engine: a shard plan, atomic shard files, a manifest of what is done, resume.

Shards hold whole people (so leave-one-out references never cross a shard)
and are numbered in input order. Each finished shard is written to
``shards/NNNNN.npz`` through a temporary file and ``os.replace``, then
recorded with its sha256 in ``shards/done.p<process>.json`` (also replaced
atomically). A killed sweep leaves at worst a stray ``.tmp``; ``--resume``
verifies the recorded shards and computes only the rest. Everything a shard
holds depends only on its inputs and the run's settings, so a resumed run's
tables equal an uninterrupted run's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from leam_jax.study import schema
from leam_jax.study.files import read_json, write_atomic, write_json
from leam_jax.study.inputs import Source

SHARD_DIR = "shards"


class SweepError(RuntimeError):
    """The output folder cannot take this run (another run's results, missing shards)."""


def plan_shards(sources: Sequence[Source], shard_size: int) -> list[list[Source]]:
    """Consecutive groups of whole people, at most ``shard_size`` images each (a person
    with more images gets a shard alone)."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    people: dict[str, list[Source]] = {}
    for s in sources:
        people.setdefault(s.person, []).append(s)
    shards, cur = [], []
    for imgs in people.values():
        if cur and len(cur) + len(imgs) > shard_size:
            shards.append(cur)
            cur = []
        cur = cur + imgs
    if cur:
        shards.append(cur)
    return shards


def fingerprint(settings: dict, shards: Sequence[Sequence[Source]]) -> dict:
    """What must match for a resume: the settings and a digest of the shard plan."""
    h = hashlib.sha256()
    for i, shard in enumerate(shards):
        for s in shard:
            h.update(json.dumps([i, s.path, s.person, list(s.attrs)]).encode())
    return {"settings": settings, "plan_sha256": h.hexdigest(), "shards": len(shards)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def inputs_digest(sources: Sequence[Source]) -> str:
    """What a result computed from ``sources`` depends on: their rows and file contents."""
    h = hashlib.sha256()
    for s in sources:
        h.update(json.dumps([s.path, s.person, list(s.attrs), s.digest]).encode())
    return h.hexdigest()


def shard_name(index: int) -> str:
    return f"{index:05d}"


class ShardStore:
    """Shard files and the per-process manifests of an output folder (``stage``: a pass of the
    sweep with shards of its own, e.g. the embedding pass, in ``shards/<stage>/``)."""

    def __init__(self, out_dir: Path, *, process_index: int = 0, stage: str = ""):
        self.out_dir = Path(out_dir)
        self.dir = self.out_dir / SHARD_DIR / stage if stage else self.out_dir / SHARD_DIR
        self.process_index = process_index
        self._manifest_path = self.dir / f"done.p{process_index}.json"
        self._expected: dict[str, str] = {}
        self._stages: dict[str, ShardStore] = {}

    def expect(self, digests: dict[str, str]) -> None:
        """The inputs digest each result must have been computed from (:func:`inputs_digest`):
        a recorded result whose inputs changed since is not done, so ``--resume`` recomputes it."""
        self._expected = dict(digests)

    def stage(self, name: str) -> ShardStore:
        """The store of another pass of the same run (created if missing; one object per name)."""
        if name not in self._stages:
            self._stages[name] = ShardStore(self.out_dir, process_index=self.process_index, stage=name)
            self._stages[name].dir.mkdir(parents=True, exist_ok=True)
        return self._stages[name]

    def open(self, fp: dict, *, resume: bool, shared: bool = False) -> None:
        """Create the folder for this run, or check that it holds the same run (``resume``;
        ``shared``: processes of one multi-host run open the same folder). A ``run.json`` with no
        result recorded yet (a run that failed before its first shard) does not block the folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        run_file = self.out_dir / "run.json"
        if not run_file.exists():
            write_json(run_file, fp, sync=True)
            return
        old = read_json(run_file, "move the folder away or choose a new --output_dir")
        if shared and old == fp:
            return
        if not shared and not self._has_results():
            write_json(run_file, fp, sync=True)  # a run that failed before its first result
            return
        if not resume:
            raise SweepError(f"{self.out_dir} already holds a run; pass --resume to continue it "
                             "or choose a new --output_dir")
        if old != fp:
            diff = sorted(k for k in set(old.get("settings", {})) | set(fp["settings"])
                          if old.get("settings", {}).get(k) != fp["settings"].get(k))
            what = f"settings differ: {diff}" if diff else "the input list differs"
            raise SweepError(f"{self.out_dir} holds a different run ({what}); use a new --output_dir")

    def _has_results(self) -> bool:
        return any((self.out_dir / SHARD_DIR).rglob("done.p*.json"))

    def done(self) -> dict[str, dict]:
        """Recorded results of every process whose file is present and intact, and (with
        :meth:`expect`) computed from the current inputs."""
        out = {}
        for manifest in sorted(self.dir.glob("done.p*.json")):
            remedy = "delete it to recompute the results it lists"
            for name, rec in read_json(manifest, remedy).items():
                f = self.dir / f"{name}.npz"
                if name in self._expected and rec.get("inputs") != self._expected[name]:
                    continue
                if f.is_file() and _sha256(f) == rec["sha256"]:
                    out[name] = rec
        return out

    def write(self, index: int | str, arrays: dict[str, np.ndarray], record: dict) -> None:
        """Write shard ``index`` (or a named result such as ``sanity``) and record it as done."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        name = index if isinstance(index, str) else shard_name(index)
        path = self.dir / f"{name}.npz"
        write_atomic(path, buf.getvalue(), sync=True)
        remedy = "delete it to recompute the results it lists"
        mine = read_json(self._manifest_path, remedy) if self._manifest_path.exists() else {}
        mine[name] = {**record, "sha256": _sha256(path), "inputs": self._expected.get(name, "")}
        write_json(self._manifest_path, mine, indent=1, sync=True)

    def load(self, index: int | str) -> dict[str, np.ndarray]:
        name = index if isinstance(index, str) else shard_name(index)
        with np.load(self.dir / f"{name}.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}


class OutputLock:
    """One writer per output folder and process index: ``lock.p<index>.json`` holds the writer's pid,
    host and start time. A second writer is refused with the holder named; a lock whose process is
    gone from this host is stale and taken over (a lock from another host is never guessed stale)."""

    def __init__(self, out_dir: Path, process_index: int = 0):
        self.path = Path(out_dir) / f"lock.p{process_index}.json"
        self.mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.note = ""  # set when a stale lock was taken over

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.mine, f)
            return self
        raise SweepError(f"{self.path}: could not take the output folder's lock")

    def _take_over_if_stale(self) -> None:
        holder = read_json(self.path, "if no run is writing this folder, delete the lock file")
        same_host = holder.get("host") == self.mine["host"]
        if same_host and not _alive(int(holder.get("pid", -1))):
            self.path.unlink(missing_ok=True)
            self.note = f"took over the stale lock of pid {holder.get('pid')} (no longer running)"
            return
        raise SweepError(f"{self.path.parent} is in use by pid {holder.get('pid')} on {holder.get('host')} "
                         f"since {holder.get('started')}; wait for it, or if that run is gone, delete {self.path}")

    def __exit__(self, *exc) -> None:
        try:
            if json.loads(self.path.read_text()) == self.mine:
                self.path.unlink()
        except (OSError, ValueError):
            pass  # already gone or replaced: not ours to remove


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


@dataclasses.dataclass
class Progress:
    """A one-line progress bar with rate and ETA on stderr."""

    total: int
    stream: object = sys.stderr
    label: str = "images"
    done: int = 0
    _t0: float = dataclasses.field(default_factory=time.perf_counter)
    _counted: int = 0  # images done in this process (the rate excludes resumed work)

    def skip(self, n: int) -> None:
        self.done += n

    def update(self, n: int, note: str = "") -> None:
        self.done += n
        self._counted += n
        dt = time.perf_counter() - self._t0
        rate = self._counted / dt if dt > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta = "?" if left != left else f"{int(left // 60)}m{int(left % 60):02d}s"
        width = 30
        fill = int(width * self.done / max(self.total, 1))
        line = (f"[{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} {self.label} "
                f"{rate:.1f} img/s ETA {eta} {note}")
        tty = getattr(self.stream, "isatty", lambda: False)()
        print(("\r" + line) if tty else line, end="" if tty else "\n", file=self.stream, flush=True)

    def close(self) -> None:
        if getattr(self.stream, "isatty", lambda: False)():
            print(file=self.stream)


def run_shards(
    shards: Sequence[Sequence[Source]],
    store: ShardStore,
    load_iter: Callable[[Sequence[Sequence[Source]]], object],
    compute: Callable[[list, str], dict[str, np.ndarray]],
    *,
    process_index: int = 0,
    num_processes: int = 1,
    progress: Progress | None = None,
    stop_after: int | None = None,
) -> int:
    """Compute this process's missing shards in order. Returns how many were computed.

    ``load_iter(shards)`` yields loaded shards in order (faces, failures);
    ``compute(faces, shard_key)`` gives the arrays to store. ``stop_after``
    (tests) stops after that many shards, as a crash would.
    """
    done = store.done()
    mine = [i for i in range(len(shards)) if i % num_processes == process_index]
    todo = [i for i in mine if shard_name(i) not in done]
    if progress is not None:
        progress.skip(sum(len(shards[i]) for i in mine if i not in todo))
    computed = 0
    for i, loaded in zip(todo, load_iter([shards[i] for i in todo])):
        arrays = compute(loaded.faces, shard_name(i)) if loaded.faces else {}
        arrays.update(_meta_arrays(loaded))
        store.write(i, arrays, {"faces": len(loaded.faces), "failures": len(loaded.failures),
                                "images": len(shards[i])})
        computed += 1
        if progress is not None:
            progress.update(len(shards[i]), f"shard {i + 1}/{len(shards)}")
        if stop_after is not None and computed >= stop_after:
            break
    if progress is not None:
        progress.close()
    return computed


def _meta_arrays(loaded) -> dict[str, np.ndarray]:
    faces = loaded.faces
    return {
        schema.meta("path"): np.array([f.source.path for f in faces], dtype=str),
        schema.meta("person"): np.array([f.person for f in faces], dtype=str),
        schema.meta("face_index"): np.array([f.face_index for f in faces], np.int32),
        schema.meta("attrs"): np.array([json.dumps(list(f.source.attrs)) for f in faces], dtype=str),
        schema.meta("labels"): (np.stack([f.labels for f in faces]) if faces else np.zeros((0, 1, 1), np.uint8)),
        schema.failure("path"): np.array([p for p, _ in loaded.failures], dtype=str),
        schema.failure("reason"): np.array([r for _, r in loaded.failures], dtype=str),
    }


def wait_for_all(store: ShardStore, n_shards: int, *, timeout_s: float, poll_s: float = 5.0) -> None:
    """Wait until every shard of ``store`` is recorded (by any process of a multi-host run)."""
    t0 = time.perf_counter()
    while True:
        missing = [i for i in range(n_shards) if shard_name(i) not in store.done()]
        if not missing:
            return
        if time.perf_counter() - t0 > timeout_s:
            raise SweepError(f"{len(missing)} shard(s) not done after {timeout_s:.0f} s, e.g. {missing[:5]}")
        time.sleep(poll_s)
