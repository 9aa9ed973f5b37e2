"""Eval-mode batch norm folded into the conv or linear layer before it (float64, then the caller casts).

``fold``: kernel ``w * gamma / sqrt(var + eps)``, bias ``(b - mean) * gamma /
sqrt(var + eps) + beta``; ``affine``: a batch norm that cannot be folded (it
comes before a zero-padded conv) as a per-channel scale and shift.
"""

from __future__ import annotations

import numpy as np


def bn_scale_shift(gamma, beta, mean, var, eps) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    return s, np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * s


def fold(weight: np.ndarray, bias: np.ndarray | None, bn: tuple | None) -> dict[str, np.ndarray]:
    """Conv/linear ``weight`` [O, ...] and ``bias`` [O] (or None) followed by eval BN (gamma, beta, mean, var, eps)."""
    w = np.asarray(weight, np.float64)
    b = np.zeros(w.shape[0]) if bias is None else np.asarray(bias, np.float64)
    if bn is not None:
        s, t = bn_scale_shift(*bn)
        w = w * s.reshape((-1,) + (1,) * (w.ndim - 1))
        b = b * s + t
    return {"weight": w, "bias": b}


def affine(bn: tuple) -> dict[str, np.ndarray]:
    """An eval BN (gamma, beta, mean, var, eps) as ``scale``, ``shift`` [C]."""
    s, t = bn_scale_shift(*bn)
    return {"scale": s, "shift": t}
