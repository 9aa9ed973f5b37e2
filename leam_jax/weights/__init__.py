"""Converted weights: Orbax checkpoints, the manifest of pinned digests, and ``load(name)``."""
