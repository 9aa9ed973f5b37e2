"""Weight converters: registry packages or user files -> Orbax checkpoints.

Outside the ``leam_jax`` package on purpose: they read foreign formats and
write files, the library only restores checkpoints.
"""

from converters.build import CONVERTERS, ensure_converted

__all__ = ["CONVERTERS", "ensure_converted"]
