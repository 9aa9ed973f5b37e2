"""Per-thread scratch arrays that photo-sized host work reuses.

A fresh array the size of a photo page-faults on every first write, about a third of the time of a
cast or a blur; the loader's threads run one photo after another, so each keeps its own buffers.
"""

from __future__ import annotations

import threading

import numpy as np

MAX_VALUES = 4_000_000 * 3  # values a thread keeps per buffer (a 4 MP RGB photo); larger work gets None
_MIN_VALUES = 1_000_000 * 3  # a first buffer fits a 1 MP photo, so small photos do not regrow it
_LOCAL = threading.local()


def array(name: str, shape: tuple[int, ...], dtype, *, zeroed: bool = False) -> np.ndarray | None:
    """A view of shape ``shape`` into the calling thread's buffer ``name`` (grown as needed), or None
    when it would hold more than :data:`MAX_VALUES`. ``zeroed``: the buffer starts as zeros and the
    caller zeroes what it wrote before its next call; otherwise the contents are left over."""
    size = int(np.prod(shape))
    if size > MAX_VALUES:
        return None
    buf = getattr(_LOCAL, name, None)
    if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
        buf = (np.zeros if zeroed else np.empty)(max(size, _MIN_VALUES), dtype)
        setattr(_LOCAL, name, buf)
    return buf[:size].reshape(shape)


def held(name: str) -> np.ndarray | None:
    """The calling thread's whole buffer ``name`` (None before its first use): for tests."""
    return getattr(_LOCAL, name, None)
