"""Where converted checkpoints and downloaded sources live (never inside an installed package).

* checkpoints: ``$LEAM_JAX_CHECKPOINTS``; else, in a source checkout, the
  repository's ``checkpoints/`` folder (with its README, beside ``leam_jax/``);
  else the per-user cache ``$XDG_CACHE_HOME/leam_jax/checkpoints``
  (``~/.cache/leam_jax/checkpoints``).
* source archives: ``$LEAM_JAX_CACHE/sources`` (``~/.cache/leam_jax/sources``).
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # leam_jax/
_INSTALL_DIRS = ("site-packages", "dist-packages")


def source_checkout_checkpoints() -> Path | None:
    """The repository's ``checkpoints/`` folder when ``leam_jax`` runs from a source checkout, else None."""
    if any(part in _INSTALL_DIRS for part in _PACKAGE_DIR.parts):
        return None
    folder = _PACKAGE_DIR.parent / "checkpoints"
    return folder if (folder / "README.md").is_file() else None


def user_cache() -> Path:
    """``$XDG_CACHE_HOME/leam_jax`` (a relative XDG path is ignored, as the spec says) or ``~/.cache/leam_jax``."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "leam_jax"


def checkpoint_dir() -> Path:
    """The folder of converted checkpoints (created if absent)."""
    env = os.environ.get("LEAM_JAX_CHECKPOINTS")
    d = Path(env) if env else (source_checkout_checkpoints() or user_cache() / "checkpoints")
    d.mkdir(parents=True, exist_ok=True)
    return d


def cache_dir() -> Path:
    """The folder of downloaded source archives (created if absent)."""
    d = Path(os.environ.get("LEAM_JAX_CACHE", Path.home() / ".cache" / "leam_jax")) / "sources"
    d.mkdir(parents=True, exist_ok=True)
    return d
