"""Reading inputs: bad files are rejected with the reason (the whole study: tests/study/test_study.py)."""


import numpy as np
import pytest

from leam_jax.face import decode


def test_bad_images_are_rejected_with_reasons(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    (tmp_path / "wide.png").write_bytes(np.zeros(1, np.uint8).tobytes())
    for name, reason in [("empty.jpg", "empty file"), ("text.jpg", "not a decodable image"),
                         ("wide.png", "not a decodable image"), ("missing.jpg", "cannot read file")]:
        with pytest.raises(decode.ImageError, match=f"{name}: {reason}"):
            decode.read_aligned_chip(tmp_path / name, 150)
