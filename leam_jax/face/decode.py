"""Reading face images from disk (I/O edge): folders per person, clear rejections."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}


class ImageError(ValueError):
    """An input image was rejected; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class Item:
    path: str
    person: str


def list_people(data_dir: str | os.PathLike, *, max_people: int = 0, max_images_per_person: int = 0) -> list[Item]:
    """Items of ``data_dir/<person>/<image>``, sorted, optionally capped."""
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data directory not found")
    people = sorted(p for p in root.iterdir() if p.is_dir())
    if max_people:
        people = people[:max_people]
    items = []
    for person in people:
        files = sorted(f for f in person.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if max_images_per_person:
            files = files[:max_images_per_person]
        items += [Item(str(f), person.name) for f in files]
    return items


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to uint8 RGB [H, W, 3].

    OpenCV's colour decode does the conversions: grayscale is replicated to
    three channels, an alpha channel is dropped, 16-bit samples are scaled to
    8 bits, and a JPEG's EXIF orientation is applied (the pixels come upright).
    """
    try:
        raw = np.fromfile(str(path), dtype=np.uint8)
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror})") from e
    if raw.size == 0:
        raise ImageError(path, "empty file")
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(path, "not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_aligned_chip(path: str | os.PathLike, size: int) -> np.ndarray:
    """A pre-aligned square face chip, resized to ``size`` if needed."""
    img = read_rgb(path)
    h, w = img.shape[:2]
    if h != w:
        raise ImageError(path, f"not a square pre-aligned chip ({w}x{h})")
    if h < 16:
        raise ImageError(path, f"chip too small ({w}x{h})")
    if h != size:
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA if h > size else cv2.INTER_LINEAR)
    return img
