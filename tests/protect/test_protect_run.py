"""python -m leam_jax.protect end to end on a few real photos with one small model: the written PNGs keep
the budget and the mask, the figures are measured on them, a stopped run resumes, bad settings fail at once."""

import csv
import json

import numpy as np
import pytest

from leam_jax.face import decode
from leam_jax.protect import job
from leam_jax.protect.config import ProtectConfig

EPS = 8.0


@pytest.fixture(scope="module")
def run(faces_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protect")
    manifest = tmp / "manifest.csv"
    rows = [(f"orl_att/{p}/{i}.pgm", p) for p in ("s1", "s2") for i in (1, 2, 3)]
    with manifest.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "person"])
        w.writerows([(str(faces_dir / path), person) for path, person in rows])
    cfg = ProtectConfig(manifest=str(manifest), output_dir=tmp / "out", source_models=("mobileface",),
                        eval_models=("mobileface",), percents=(10.0,), epsilons=(EPS,), steps=4,
                        masks=("leam", "full"), transfer_masks=(), max_protected_per_person=2,
                        shard_size=3, batch_size=2, loader_threads=1, stop_after_shards=1,
                        floor=True)  # the floors' wiring (the default, no floors, is the core's plain sum)
    stopped = job.run(cfg, log=lambda m: None)
    first = {p.name: p.stat().st_mtime_ns for p in (tmp / "out" / "shards").glob("0*.npz")}
    import dataclasses
    summary = job.run(dataclasses.replace(cfg, resume=True, stop_after_shards=None), log=lambda m: None)
    return dict(cfg=cfg, out=tmp / "out", stopped=stopped, first=first, summary=summary, rows=rows,
                faces=faces_dir)


def test_a_stopped_run_resumes_without_recomputing_its_shards(run):
    assert run["stopped"] == {"stopped": True} and list(run["first"]) == ["00000.npz"]
    assert (run["out"] / "shards" / "00000.npz").stat().st_mtime_ns == run["first"]["00000.npz"]
    assert run["summary"]["protected"] == 4 and run["summary"]["people_protected"] == 2


def test_written_photos_change_at_most_the_mask_share_by_at_most_epsilon(run):
    written = sorted((run["out"] / "protected" / "p10_e8").rglob("*.png"))
    assert len(written) == 4
    for path in written:
        person = path.parent.name
        original = decode.read_rgb(run["faces"] / "orl_att" / person / (path.stem + ".pgm")).astype(int)
        prot = decode.read_rgb(path).astype(int)
        assert prot.shape == original.shape
        diff = np.abs(prot - original).max(axis=2)
        assert diff.max() <= EPS and diff.max() > 0
        # ORL photos are the face pixels' whole footprint: 10% of the photo at most
        assert np.count_nonzero(diff) <= round(0.10 * diff.size) + 1


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tables_measure_every_variant_and_the_mask_and_budget_hold(run):
    tables = run["out"] / "tables"
    integrity = read(tables / "integrity.csv")
    assert {r["variant"] for r in integrity} == {"all/leam/p10/e8", "all/full/p100/e8"}
    assert all(int(r["pixels_changed_outside_mask"]) == 0 and int(r["max_abs_change"]) <= EPS for r in integrity)
    prot = read(tables / "protection.csv")
    none = {r["mask"]: r for r in prot if r["transform"] == "none"}
    assert set(none) == {"leam", "full"} and all(r["photos"] == "4" for r in none.values())
    assert float(none["leam"]["dcos"]) > 0  # four white-box steps lower the score on average
    assert {r["transform"] for r in prot} == {"none", "jpeg90", "jpeg75", "resize0.5", "blur1", "redetect"}
    assert float(none["full"]["psnr_min"]) < float(none["leam"]["psnr_min"])  # more pixels, more change
    thresholds = read(tables / "thresholds.csv")
    assert [r["far"] for r in thresholds] == ["0.01", "0.001"]
    pairs = read(tables / "pairs.csv")
    assert {r["pairs"] for r in pairs} == {"2"}  # two people, two protected photos each
    summary = json.loads((run["out"] / "summary.json").read_text())
    assert summary["white_box"][0]["mask"] == "leam" and (run["out"] / "report.html").is_file()
    # the report names the map behind the masks (the default: the study's target, the mask weighting)
    cfg = run["cfg"]
    assert (cfg.target, cfg.weighting) == ("population", "layercam")
    report = (run["out"] / "report.html").read_text()
    assert "LEAM masks from population / layercam maps" in report and "floors 1 impostor spreads" in report


@pytest.mark.parametrize("change, message", [
    (dict(percents=(0.0,)), "--percent"),
    (dict(epsilons=(300.0,)), "--epsilon"),
    (dict(masks=("random",)), "must include leam"),
    (dict(transfer_masks=("nope",)), "unknown mask kind"),
    (dict(robust_percent=7.0), "robust_percent"),
    (dict(steps=0), "--steps"),
    (dict(floor_margin=-1.0), "--floor_margin"),
    (dict(source_models=("not_a_model",)), "unknown model"),
])
def test_bad_settings_fail_before_any_work(tmp_path, change, message):
    cfg = ProtectConfig(manifest=str(tmp_path / "m.csv"), output_dir=tmp_path / "out", **change)
    with pytest.raises(ValueError, match=message):
        job.run(cfg, log=lambda m: None)
    assert not (tmp_path / "out").exists()


def test_the_cli_reports_a_bad_setting_in_one_line_with_exit_2(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "leam_jax.protect", f"--manifest={tmp_path / 'm.csv'}",
                        f"--output_dir={tmp_path / 'out'}", "--percent=0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("leam_jax.protect: error: --percent")
    assert not (tmp_path / "out").exists()
