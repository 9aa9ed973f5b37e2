"""The keys of a shard file: one builder per kind of array, and the parser.

A shard file (``shards/NNNNN.npz``) maps keys to arrays. Per-face arrays have
one row per face of the shard and are concatenated over shards; per-shard
sums are added up over shards. Compute, sweep, tables and tests build and
read keys only through this module.

=====================================  =========================================
key                                    array
=====================================  =========================================
``meta/path|person|face_index|attrs``  [N] the face's input (attrs: JSON pairs)
``meta/labels``                        [N, F, F] uint8 face classes, analysis frame
``fail/path``, ``fail/reason``         [K] rejected inputs of the shard
``emb/{m}``, ``has_ref/{m}``           [N, D] embeddings, [N] reference exists
``overall/{m}/{w}``                    [N, 128, 128] float16 overall maps (frame)
``layers/{m}/{w}``                     [N, L, 32, 32] float16 layer maps (frame)
``flags/{m}/{w}``, ``overall_flags``   [N, L], [N] all-zero maps
``share/{m}/{w}``, ``mass/{m}/{w}``    [N, P, C] top-p% shares, [N, C] map mass
``area``                               [N, C] class area shares
``occ/{m}/{method}/{fill}/{p}``        [N] Δcos, method = a weighting or a baseline
``transfer/{w}/{src}/{dst}``           [N] Δcos on dst of src's top pixels
``overall_sum/{m}/{w}``                [F, F] per-shard sum (summed over shards)
``layers_sum/{m}/{w}``                 [L, 64, 64] per-shard sum (summed)
=====================================  =========================================

Two other passes write files of their own: the embedding pass of the gallery
targets (``shards/embed/NNNNN.npz``: ``emb/{m}`` and ``meta/person``, same
shards) and the randomisation check (``shards/sanity.npz``):

=====================================  =========================================
``sanity/{m}/{w}/spearman|bc``         [K, n] each cascade step's map vs trained
``sanity/{m}/{w}/maps``                [f, 1 + K, 64, 64] float16 (figure)
``sanity_steps/{m}``, ``sanity_taps``  [K] layers randomised per step, [L] taps
=====================================  =========================================
"""

from __future__ import annotations

import dataclasses

META = ("path", "person", "face_index", "attrs", "labels")
FAILURE = ("path", "reason")
AREA = "area"
BASELINES = ("input_gradient", "last_layer", "random")
_PER_MODEL = ("emb", "has_ref")
_PER_MAP = ("overall", "layers", "flags", "overall_flags", "share", "mass")
_SUMMED = ("overall_sum", "layers_sum")
SANITY = ("spearman", "bc", "maps")


def meta(field: str) -> str:
    if field not in META:
        raise ValueError(f"unknown meta field {field!r}")
    return f"meta/{field}"


def failure(field: str) -> str:
    if field not in FAILURE:
        raise ValueError(f"unknown failure field {field!r}")
    return f"fail/{field}"


def per_model(kind: str, model: str) -> str:
    """``emb`` or ``has_ref`` of one model."""
    if kind not in _PER_MODEL:
        raise ValueError(f"unknown per-model kind {kind!r}")
    return f"{kind}/{model}"


def per_map(kind: str, model: str, weighting: str) -> str:
    """One of the per-face map arrays of a model and weighting (see the table above)."""
    if kind not in _PER_MAP + _SUMMED:
        raise ValueError(f"unknown map kind {kind!r}")
    return f"{kind}/{model}/{weighting}"


def sanity(model: str, weighting: str, kind: str) -> str:
    if kind not in SANITY:
        raise ValueError(f"unknown sanity kind {kind!r}")
    return f"sanity/{model}/{weighting}/{kind}"


def sanity_steps(model: str) -> str:
    return f"sanity_steps/{model}"


def sanity_taps(model: str) -> str:
    return f"sanity_taps/{model}"


def percent_label(percent: float) -> str:
    """A percent as keys and tables spell it (1.0 -> "1", 0.5 -> "0.5")."""
    return f"{float(percent):g}"


def occlusion(model: str, method: str, fill: str, percent: float) -> str:
    return f"occ/{model}/{method}/{fill}/{percent_label(percent)}"


def transfer(weighting: str, source: str, target: str) -> str:
    return f"transfer/{weighting}/{source}/{target}"


@dataclasses.dataclass(frozen=True)
class Key:
    """A parsed key: its kind and its fields (model, weighting, method, fill, percent...)."""

    kind: str
    fields: tuple[str, ...]

    @property
    def summed(self) -> bool:
        """Per-shard sums are added over shards; everything else is concatenated by face."""
        return self.kind in _SUMMED


_ARITY = {"meta": 1, "fail": 1, AREA: 0, **{k: 1 for k in _PER_MODEL}, **{k: 2 for k in _PER_MAP + _SUMMED},
          "occ": 4, "transfer": 3, "sanity": 3, "sanity_steps": 1, "sanity_taps": 1}


def parse(key: str) -> Key:
    """The kind and fields of a key; an unknown or malformed key is an error naming it."""
    kind, *fields = key.split("/")
    if _ARITY.get(kind) != len(fields) or not all(fields):
        raise ValueError(f"not a shard key: {key!r}")
    return Key(kind, tuple(fields))
