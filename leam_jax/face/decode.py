"""Reading face images from disk (I/O edge): folders per person, clear rejections."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import cv2
import numpy as np

from leam_jax.face import image_header

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".pgm", ".ppm", ".bmp", ".webp", ".tif", ".tiff"}
# Largest image decoded by default: a 100-megapixel camera photo (12000x8000 is 96 MP). A decoded
# pixel costs 3 bytes, and the face pipeline holds a few copies of the photo while it works on it.
DEFAULT_MAX_PIXELS = 100_000_000
HEAD_BYTES = 1 << 16  # the header of every accepted format sits in the first bytes ...
MAX_HEADER_SEARCH = 16 << 20  # ... except a JPEG's frame header, after up to this much metadata


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


def probe(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as the file's header declares them; an unknown format, or more than
    ``max_pixels``, is refused here, before any pixel is decoded."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD_BYTES)
            dims = image_header.dimensions(head)
            if dims is None and len(head) == HEAD_BYTES:  # a JPEG frame header after large metadata
                dims = image_header.dimensions(head + f.read(MAX_HEADER_SEARCH - HEAD_BYTES))
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror})") from e
    if not head:
        raise ImageError(path, "empty file")
    if dims is None or 0 in dims:
        raise ImageError(path, "not a decodable image")
    if dims[0] * dims[1] > max_pixels:
        raise ImageError(path, f"{dims[0]}x{dims[1]} pixels is over the limit of {max_pixels} "
                               "(--max_image_pixels raises it)")
    return dims


def read_checked(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                 dims: tuple[int, int] | None = None) -> bytes:
    """The bytes of a file that :func:`probe` accepts (at most 8 bytes per declared pixel, more
    than any accepted format needs, plus room for metadata); ``dims``: probe's answer, if already read."""
    w, h = dims if dims is not None else probe(path, max_pixels)
    max_bytes = MAX_HEADER_SEARCH + 8 * w * h
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ImageError(path, f"cannot read file ({e.strerror})") from e
    if len(data) > max_bytes:
        raise ImageError(path, f"file larger than {max_bytes} bytes for a {w}x{h} image")
    return data


def decode_rgb(data: bytes, path: str | os.PathLike) -> np.ndarray:
    """Decode checked file bytes (:func:`read_checked`) to uint8 RGB [H, W, 3].

    OpenCV's colour decode does the conversions: grayscale is replicated to
    three channels, an alpha channel is dropped, 16-bit samples are scaled to
    8 bits, and a JPEG's EXIF orientation is applied (the pixels come upright).
    """
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ImageError(path, "not a decodable image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file to uint8 RGB [H, W, 3] (the pixel limit checked first)."""
    return decode_rgb(read_checked(path, max_pixels), path)


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
