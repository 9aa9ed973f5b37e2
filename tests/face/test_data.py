"""Image decoding: every kind of input gets its documented outcome."""

import struct

import cv2
import numpy as np
import pytest

from leam_jax.face.decode import ImageError, read_rgb


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment carrying the orientation tag (0x0112)."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0)
    app1 = b"Exif\x00\x00" + tiff + b"\x00\x00\x00\x00"
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def test_conversions(tmp_path):
    x16 = (np.arange(20 * 30 * 3).reshape(20, 30, 3) * 97 % 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "deep.png"), x16)
    out = read_rgb(tmp_path / "deep.png")
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.abs(out.astype(int) - (x16[..., ::-1] >> 8)).max() <= 1  # 16 -> 8 bits, BGR -> RGB

    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 128  # red (BGRA), half transparent
    cv2.imwrite(str(tmp_path / "alpha.png"), rgba)
    np.testing.assert_array_equal(read_rgb(tmp_path / "alpha.png")[0, 0], [200, 0, 0])

    cv2.imwrite(str(tmp_path / "gray.pgm"), np.full((8, 9), 77, np.uint8))
    np.testing.assert_array_equal(read_rgb(tmp_path / "gray.pgm"), np.full((8, 9, 3), 77))

    img = np.zeros((20, 40, 3), np.uint8)
    img[:, :10] = 255  # white band on the left
    jpeg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "rotated.jpg").write_bytes(with_exif_orientation(jpeg, 6))  # "rotate 90 CW to view"
    up = read_rgb(tmp_path / "rotated.jpg")
    assert up.shape == (40, 20, 3)
    assert up[:8].mean() > 200 and up[-8:].mean() < 50  # the band is now on top


@pytest.mark.parametrize(
    "name, content, reason",
    [
        ("zero.jpg", b"", "empty file"),
        ("text.jpg", b"this is not an image\n", "not a decodable image"),
        ("corrupt.jpg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + b"\x13" * 200, "not a decodable image"),
    ],
)
def test_rejections_name_file_and_reason(tmp_path, name, content, reason):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ImageError, match=f"{name}: {reason}") as e:
        read_rgb(tmp_path / name)
    assert e.value.path.endswith(name) and e.value.reason == reason


def test_tiny_and_huge_images_decode(tmp_path):
    cv2.imwrite(str(tmp_path / "one.png"), np.zeros((1, 1, 3), np.uint8))
    assert read_rgb(tmp_path / "one.png").shape == (1, 1, 3)  # rejected later: too small for a face
    huge = np.zeros((8000, 8000, 3), np.uint8)
    huge[::97] = 255
    cv2.imwrite(str(tmp_path / "huge.png"), huge)
    assert read_rgb(tmp_path / "huge.png").shape == (8000, 8000, 3)
