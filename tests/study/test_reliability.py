"""Reliability: each hostile or careless-user probe of the hardening issue as a fast test.

The numbers follow the issue's list of failures:
1. weights trusted on first use: tests/weights/test_weights.py (missing manifest, incomplete entry, user file
   onto a registry name) and tests/weights/test_install.py (wheel install); here, weights errors at the CLI;
2. percent flags out of range; 3. decompression bombs; 4. CSV formula injection; 5. duplicate inputs;
6. flags checked late; 7. no lock on the output folder; 8. stale shards on --resume, ``../`` paths,
errors that do not name the file, Ctrl-C; 9. tight face crops: tests/face/test_tight_crops.py.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from absl.testing import flagsaver

from leam_jax import weights
from leam_jax.face import decode, image_header
from leam_jax.study import files, inputs, job, loader, sweep, tables
from leam_jax.study.inputs import Source

REPO = Path(__file__).resolve().parents[2]


# -- the CLI: every expected error is one line and exit code 2, before any slow work ---------------------
@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    """Run ``python -m leam_jax.main`` in-process; loading any model's weights is a test failure."""
    from leam_jax import main as cli_main

    def refuse(name):
        raise AssertionError(f"weights of {name} loaded before the flags were checked")

    monkeypatch.setattr(job, "_load", refuse)

    def run(*argv):
        with flagsaver.flagsaver():
            cli_main.FLAGS(["leam_jax", f"--output_dir={tmp_path / 'out'}", *argv])
            code = cli_main.main(["leam_jax"])
        return code, capsys.readouterr().err

    return run


@pytest.mark.parametrize("flag,message", [
    ("--occlusion_percents=150", "--occlusion_percents: percents must be in (0, 100]"),  # 2
    ("--occlusion_percents=-1", "--occlusion_percents: percents must be in (0, 100]"),
    ("--top_percent=0", "--top_percent: percents must be in (0, 100]"),
    ("--transfer_percent=101", "--transfer_percent must be in [0, 100]"),
    ("--batch_size=0", "--batch_size must be at least 1"),  # 6
    ("--batch_size=-4", "--batch_size must be at least 1"),
    ("--random_seeds=0", "--random_seeds must be at least 1"),
    ("--shard_size=0", "--shard_size must be at least 1"),
    ("--max_image_pixels=0", "--max_image_pixels must be at least 1"),
    ("--loader_threads=-1", "--loader_threads must be at least 0"),
    ("--weighting=gradcam,nope", "unknown weighting 'nope'"),
])
def test_bad_flags_fail_at_once_with_one_line_and_exit_2(cli, tmp_path, flag, message):
    code, err = cli(flag)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leam_jax: error: ") and message in lines[0]
    assert not (tmp_path / "out" / "run.json").exists()


def test_aligned_and_crops_are_exclusive(cli, tmp_path):
    code, err = cli("--aligned", "--crops")
    assert code == 2 and "give --aligned (dlib-style aligned chips) or --crops" in err
    assert not (tmp_path / "out" / "run.json").exists()


def test_a_model_without_weights_is_named_before_any_model_loads(cli, tmp_path, monkeypatch):
    """6 and 1: --models=dlib_resnet,iresnet50 used to fail only after dlib loaded, as a SourceError
    traceback, leaving a run.json that blocked the folder."""
    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "empty"))
    code, err = cli("--models=dlib_resnet,iresnet50")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "iresnet50: no weights here" in err and "python -m converters iresnet50 --source PATH" in err
    assert not (tmp_path / "out" / "run.json").exists()


def test_every_weights_error_is_a_weights_error():
    from leam_jax.weights.checkpoint import CheckpointError
    from leam_jax.weights.manifest import ManifestError
    from leam_jax.weights.packages import SourceError

    for kind in (CheckpointError, ManifestError, SourceError):
        assert issubclass(kind, weights.WeightsError)


def test_ctrl_c_exits_130_with_one_line_saying_how_to_resume(cli, monkeypatch):
    """8: Ctrl-C printed a full traceback."""
    from leam_jax import main as cli_main

    def interrupted(config, log):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "run", interrupted)
    code, err = cli()
    assert code == 130
    assert err.strip().splitlines() == [err.strip()] and "--resume" in err and "Traceback" not in err


def test_a_run_json_without_results_does_not_block_the_folder(tmp_path):
    """6: a run that failed before its first shard left a run.json that refused the next run."""
    store = sweep.ShardStore(tmp_path)
    store.open({"settings": {"a": 1}, "plan_sha256": "x", "shards": 1}, resume=False)
    store.open({"settings": {"a": 2}, "plan_sha256": "x", "shards": 1}, resume=False)  # nothing to lose
    store.write(0, {"x": np.zeros(1)}, {})
    with pytest.raises(sweep.SweepError, match="already holds a run"):
        store.open({"settings": {"a": 3}, "plan_sha256": "x", "shards": 1}, resume=False)


# -- 3: decompression bombs --------------------------------------------------------------------------------
def bomb_png(path: Path, side: int = 20000) -> None:
    """A real, decodable side x side black RGB PNG of about 1 MB: the same deflate segment (byte-aligned
    by a full flush, so it can repeat) for every 100 rows, and the true Adler-32 of the whole image."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = bytes(1 + 3 * side) * 100
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = comp.compress(rows) + comp.flush(zlib.Z_FULL_FLUSH)
    adler = 1
    for _ in range(side // 100):
        adler = zlib.adler32(rows, adler)
    stream = b"\x78\xda" + segment * (side // 100) + b"\x03\x00" + struct.pack(">I", adler)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b""))


def test_the_bomb_generator_makes_a_decodable_png(tmp_path):
    bomb_png(tmp_path / "small.png", side=300)
    image = decode.read_rgb(tmp_path / "small.png")
    assert image.shape == (300, 300, 3) and image.max() == 0


_PROBE = """
import resource, sys, time
from leam_jax.face import decode
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
try:
    decode.read_rgb(sys.argv[1])
    reason = "decoded"
except decode.ImageError as e:
    reason = e.reason
print(time.perf_counter() - t0, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, reason)
"""


def test_a_decompression_bomb_is_rejected_from_its_header(tmp_path):
    """3: a 1.2 MB PNG of 20000x20000 pixels took 6.8 GB and 51 s before "no face found"."""
    bomb = tmp_path / "bomb.png"
    bomb_png(bomb)
    assert bomb.stat().st_size < 2 << 20
    out = subprocess.run([sys.executable, "-c", _PROBE, str(bomb)], capture_output=True, text=True, cwd=REPO,
                         check=True).stdout.split(maxsplit=2)
    seconds, extra_mb, reason = float(out[0]), float(out[1]), out[2].strip()
    assert reason == "20000x20000 pixels is over the limit of 100000000 (--max_image_pixels raises it)"
    assert seconds < 1.0 and extra_mb < 200, (seconds, extra_mb)


def test_headers_of_every_accepted_format_give_the_decoded_size():
    import cv2

    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), np.uint8)
    for ext in (".jpg", ".png", ".bmp", ".webp", ".tif", ".ppm", ".pgm"):
        ok, buf = cv2.imencode(ext, image if ext != ".pgm" else image[..., 0])
        assert ok and image_header.dimensions(buf.tobytes()) == (53, 37), ext
    assert image_header.dimensions(b"not an image") is None
    assert image_header.dimensions(b"\x89PNG\r\n\x1a\n") is None  # truncated


def test_loader_threads_hold_at_most_the_pixel_budget():
    """The loader's memory bound: however many threads, decoded pixels in flight stay within the budget."""
    import threading
    import time

    budget, peak, lock = loader.PixelBudget(100), [0], threading.Lock()

    def work(pixels):
        with budget.hold(pixels):
            with lock:
                peak[0] = max(peak[0], budget.used)
            time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(p,)) for p in (60, 60, 30, 30, 100, 150, 10, 40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.used == 0 and peak[0] <= 150  # 150: one image over the budget runs alone


# -- 4: CSV formula injection ------------------------------------------------------------------------------
HOSTILE = '=HYPERLINK("http://x","y")'


def test_user_strings_never_reach_a_spreadsheet_as_formulas(tmp_path):
    """4: a person id or path starting with = + - @ landed raw in tables/images.csv."""
    from tests.study import test_study_units as units

    rng = np.random.default_rng(0)
    evil = {"a": HOSTILE, "b": "+cmd|' /C calc'!A0", "c": "@SUM(1+1)", "d": "-0.5"}
    shards = [units._fake_shard(rng, ["a", "a", "b"]), units._fake_shard(rng, ["c", "c", "d", "d"])]
    for s in shards:
        s["meta/person"] = np.array([evil[p] for p in s["meta/person"]])
        s["meta/path"] = np.array(["=" + p for p in s["meta/path"]])
        s["meta/attrs"] = np.array([json.dumps([["gender", "-x+1"]]) for _ in s["meta/path"]])
    settings = {"seed": 0, "models": ["m1"], "weightings": ["gradcam"], "top_percents": [1], "occlusion_percents": [1],
                "occlusion_fills": ["mean"], "taps": {"m1": ["t1", "t2"]}, "transfer_percent": 1.0}
    from leam_jax.study import people

    tables.write_tables(tmp_path, shards, settings, rejected=[("@evil.jpg", "=1+1")],
                        writers=[lambda out, col, study: people.write_people(out, col, study, cap=2)])
    with open(tmp_path / "tables" / "images.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["person"] for r in rows} == {"'" + HOSTILE, "'+cmd|' /C calc'!A0", "'@SUM(1+1)", "-0.5"}  # a number stays
    assert all(r["path"].startswith("'=") and r["gender"] == "'-x+1" for r in rows)
    with open(tmp_path / "failures.csv", encoding="utf-8") as f:
        assert list(csv.DictReader(f))[-1] == {"path": "'@evil.jpg", "reason": "'=1+1"}
    for table in [*(tmp_path / "tables").glob("*.csv"), tmp_path / "failures.csv"]:
        with open(table, encoding="utf-8") as f:
            for row in csv.reader(f):
                assert not any(c.startswith(files.FORMULA_PREFIXES) and not _number(c) for c in row), (table, row)


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


# -- 5: duplicate inputs -------------------------------------------------------------------------------
def _photo(path: Path, seed: int) -> Path:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 255, (40, 40, 3), np.uint8))
    return path


def test_duplicate_rows_and_files_are_reported_and_counted_once(tmp_path):
    """5: the same file listed twice was analysed twice, its self-pair a same-person pair."""
    a = _photo(tmp_path / "p1" / "a.png", 0)
    b = _photo(tmp_path / "p1" / "b.png", 1)
    (tmp_path / "p2").mkdir()
    shutil.copy(a, tmp_path / "p2" / "copy.png")
    rows = [("p1/a.png", "p1"), ("p1/b.png", "p1"), ("p1/../p1/a.png", "p1"), ("p2/copy.png", "p2")]
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,person\n" + "".join(f"{p},{q}\n" for p, q in rows))
    listed = inputs.from_manifest(manifest)
    kept, dropped = inputs.drop_duplicates(inputs.with_digests(listed, threads=2))
    assert [Path(s.path).resolve() for s in kept] == [a, b]
    assert len(dropped) == 2
    assert "duplicate of" in dropped[0][1] and "(the same file)" in dropped[0][1]
    assert "(the same content; listed there as person 'p1')" in dropped[1][1]


# -- 7: one writer per output folder ---------------------------------------------------------------------
def test_a_second_writer_on_the_output_folder_is_refused(tmp_path):
    with sweep.OutputLock(tmp_path):
        with pytest.raises(sweep.SweepError, match=f"in use by pid {os.getpid()}"):
            with sweep.OutputLock(tmp_path):
                pass
        with sweep.OutputLock(tmp_path, process_index=1):  # another process of one multi-host run
            pass
    assert not list(tmp_path.glob("lock.p*.json"))  # released


def test_a_stale_lock_is_taken_over_and_another_hosts_is_not(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    lock = sweep.OutputLock(tmp_path)
    lock.path.write_text(json.dumps({"pid": int(dead), "host": lock.mine["host"], "started": "x"}))
    with sweep.OutputLock(tmp_path) as held:
        assert f"stale lock of pid {dead}" in held.note
    lock.path.write_text(json.dumps({"pid": int(dead), "host": "elsewhere", "started": "x"}))
    with pytest.raises(sweep.SweepError, match="in use by pid .* on elsewhere"):
        with sweep.OutputLock(tmp_path):
            pass


def test_the_study_refuses_a_folder_another_run_is_writing(tmp_path, monkeypatch):
    """7: two runs into one --output_dir both computed every shard and wrote the same .tmp names."""
    from leam_jax.study.config import StudyConfig

    other = {"pid": os.getppid(), "host": sweep.OutputLock(tmp_path).mine["host"], "started": "now"}
    (tmp_path / "lock.p0.json").write_text(json.dumps(other))
    monkeypatch.setattr(job, "_sweep", lambda *a: pytest.fail("the sweep started"))
    with pytest.raises(sweep.SweepError, match=f"in use by pid {os.getppid()}"):
        job.run(StudyConfig(models=("dlib_resnet",), output_dir=tmp_path, manifest=str(tmp_path / "none.csv")))


# -- 8: --resume recomputes what changed; paths; errors that name the file -----------------------------
def _fake_shard_run(store, shards, computed):
    def load_iter(todo):
        for shard in todo:
            yield loader.LoadedShard([], [(s.path, "x") for s in shard])

    def compute(faces, key):
        computed.append(key)
        return {}

    store.dir.mkdir(parents=True, exist_ok=True)
    store.expect({sweep.shard_name(i): sweep.inputs_digest(s) for i, s in enumerate(shards)})
    sweep.run_shards(shards, store, load_iter, compute)


def test_resume_recomputes_exactly_the_shards_whose_files_changed(tmp_path, monkeypatch):
    """8: --resume reused a shard whose image files had changed since."""
    photos = [_photo(tmp_path / "in" / f"{i}.png", i) for i in range(4)]
    listed = [Source(str(p), f"person{i // 2}") for i, p in enumerate(photos)]
    written = []
    monkeypatch.setattr(sweep.ShardStore, "write",
                        lambda self, i, arrays, rec, w=sweep.ShardStore.write: (written.append(i), w(self, i, arrays, rec)))
    shards = sweep.plan_shards(inputs.with_digests(listed), 2)
    store = sweep.ShardStore(tmp_path / "out")
    _fake_shard_run(store, shards, [])
    _photo(photos[3], 99)  # person1's second photo changes
    written.clear()
    _fake_shard_run(sweep.ShardStore(tmp_path / "out"), sweep.plan_shards(inputs.with_digests(listed), 2), [])
    assert written == [1]


def test_a_gallery_target_recomputes_every_explained_shard_when_any_file_changes(tmp_path):
    from leam_jax.study.config import StudyConfig

    shards = [[Source("a", "p", digest="1")], [Source("b", "q", digest="2")]]
    changed = [[Source("a", "p", digest="1")], [Source("b", "q", digest="3")]]
    seen = {}
    for target in ("identity", "population"):
        for name, plan in (("before", shards), ("after", changed)):
            store = sweep.ShardStore(tmp_path)
            job._expect_inputs(store, StudyConfig(target=target), plan)
            seen[target, name] = (dict(store._expected), dict(store.stage("embed")._expected))
    # the randomisation check is redone on any change (its seeded subset is drawn from the whole list)
    for target, changed_explained in (("identity", {"00001", "sanity"}), ("population", {"00000", "00001", "sanity"})):
        before, after = seen[target, "before"], seen[target, "after"]
        assert {k for k in before[0] if before[0][k] != after[0][k]} == changed_explained
        assert {k for k in before[1] if before[1][k] != after[1][k]} == {"00001"}  # embedding: per shard


def test_manifest_paths_are_the_users_own_relative_to_the_manifest(tmp_path):
    """8: the rule for ``../``: a relative path is read from the manifest's folder, wherever it leads
    (the manifest is the user's own, like a shell command); the tool never writes beside the inputs."""
    photo = _photo(tmp_path / "elsewhere" / "a.png", 0)
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("path,person\n../elsewhere/a.png,p\n")
    (source,) = inputs.from_manifest(manifest)
    assert Path(source.path).resolve() == photo


def test_a_truncated_run_json_or_shard_record_is_named(tmp_path):
    store = sweep.ShardStore(tmp_path)
    store.open({"settings": {}, "plan_sha256": "x", "shards": 1}, resume=False)
    store.write(0, {"x": np.zeros(1)}, {})
    record = store.dir / "done.p0.json"
    record.write_text(record.read_text()[:10])
    with pytest.raises(files.DamagedFileError, match=f"{record}: damaged or truncated JSON"):
        store.done()
    (tmp_path / "run.json").write_text('{"settings": ')
    with pytest.raises(files.DamagedFileError, match="run.json: damaged or truncated JSON"):
        sweep.ShardStore(tmp_path).open({"settings": {}, "plan_sha256": "x", "shards": 1}, resume=True)


def test_a_full_disk_error_names_the_file_and_leaves_no_partial_file(tmp_path, monkeypatch):
    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", lambda *a, **k: Full(open(*a, **k)), raising=False)
    target = tmp_path / "tables.csv"
    with pytest.raises(OSError, match=f"cannot write {target} \\(No space left on device\\)"):
        files.write_atomic(target, b"x")
    assert not list(tmp_path.iterdir())
