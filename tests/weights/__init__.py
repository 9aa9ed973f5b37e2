"""Pinned manifest, fail-closed conversion, checkpoints, the registry, a non-editable wheel install."""
