"""Image size from the file's header, before any pixel is decoded (against decompression bombs).

A 1 MB PNG can declare 20000x20000 pixels and take gigabytes to decode;
:func:`dimensions` reads the declared width and height of every format the
loader accepts, so a file over the pixel limit is refused from its first bytes.
"""

from __future__ import annotations

import re
import struct

FORMATS = ("JPEG", "PNG", "BMP", "GIF", "WebP", "PNM (PGM/PPM/PBM)", "TIFF")
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_PNM = re.compile(rb"P[1-6](?:\s+|#[^\n]*\n)+(\d+)(?:\s+|#[^\n]*\n)+(\d+)")


def dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) the header declares, or None for an unknown or truncated header."""
    for magic, reader in _READERS:
        if data.startswith(magic):
            try:
                return reader(data)
            except (struct.error, IndexError, ValueError):
                return None
    return None


def _png(d: bytes) -> tuple[int, int]:
    return struct.unpack(">II", d[16:24])


def _jpeg(d: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(d):
        if d[i] != 0xFF:
            return None
        marker = d[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker in _SOF:
            h, w = struct.unpack(">HH", d[i + 5:i + 9])
            return w, h
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", d[i + 2:i + 4])[0]
    return None


def _bmp(d: bytes) -> tuple[int, int]:
    if struct.unpack("<I", d[14:18])[0] == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", d[18:22])
    w, h = struct.unpack("<ii", d[18:26])
    return abs(w), abs(h)  # a negative height means top-down rows


def _gif(d: bytes) -> tuple[int, int]:
    return struct.unpack("<HH", d[6:10])


def _webp(d: bytes) -> tuple[int, int] | None:
    if d[8:12] != b"WEBP":
        return None
    chunk = d[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", d[26:30])
        return w & 0x3FFF, h & 0x3FFF
    if chunk == b"VP8L":
        bits = struct.unpack("<I", d[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(d[24:27], "little") + 1, int.from_bytes(d[27:30], "little") + 1
    return None


def _pnm(d: bytes) -> tuple[int, int] | None:
    m = _PNM.match(d[:4096])
    return (int(m.group(1)), int(m.group(2))) if m else None


def _tiff(d: bytes) -> tuple[int, int] | None:
    end = "<" if d[:2] == b"II" else ">"
    ifd = struct.unpack(end + "I", d[4:8])[0]
    (count,) = struct.unpack(end + "H", d[ifd:ifd + 2])
    size = {}
    for k in range(count):
        tag, kind, _, value = struct.unpack(end + "HHI4s", d[ifd + 2 + 12 * k:ifd + 14 + 12 * k])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT or LONG
            size[tag] = struct.unpack(end + "H", value[:2])[0] if kind == 3 else struct.unpack(end + "I", value)[0]
    return (size[256], size[257]) if len(size) == 2 else None


_READERS = (
    (b"\x89PNG\r\n\x1a\n", _png), (b"\xff\xd8", _jpeg), (b"BM", _bmp), (b"GIF87a", _gif), (b"GIF89a", _gif),
    (b"RIFF", _webp), (b"II*\x00", _tiff), (b"MM\x00*", _tiff),
    *((f"P{k}".encode(), _pnm) for k in range(1, 7)),
)
