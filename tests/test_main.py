"""The batch job end to end: real weights, a folder with people and bad files."""

import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from leam_jax import data

pytestmark = pytest.mark.weights


def test_bad_images_are_rejected_with_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "wide.png").write_bytes(np.zeros(1, np.uint8).tobytes())
    for name, reason in [("empty.jpg", "empty file"), ("text.jpg", "not a decodable image"),
                         ("wide.png", "not a decodable image"), ("missing.jpg", "cannot read file")]:
        with pytest.raises(data.ImageError, match=f"{name}: {reason}"):
            data.read_aligned_chip(tmp_path / name, 150)


def test_main_job_on_people_folder_with_bad_files(tmp_path, dlib_dat, johns_chips):
    chips, persons, paths = johns_chips
    root = tmp_path / "people"
    for person in sorted(set(persons))[:3]:
        (root / person).mkdir(parents=True)
        for p in [p for p, q in zip(paths, persons) if q == person][:3]:
            shutil.copy(p, root / person)
    (root / sorted(set(persons))[0] / "broken.jpg").write_bytes(b"\xff\xd8\xff\x00garbage")
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "leam_jax.main", f"--data_dir={root}", f"--output_dir={out}", "--batch_size=4"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "embedded 9 images of 3 people" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failures"] == 1
    assert summary["models"]["dlib_resnet"]["pair_accuracy"] == 1.0
    with open(out / "failures.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"].endswith("broken.jpg") for r in rows] == [True]
    assert rows[0]["reason"] == "not a decodable image"
    emb = np.load(out / "embeddings_dlib_resnet.npz")
    assert emb["embeddings"].shape == (9, 128)
