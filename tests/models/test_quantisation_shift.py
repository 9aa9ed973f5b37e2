"""face-api's uint8 dlib ResNet vs dlib's float32 one on the 52 dlib chips: a real but small shift
(the figures of benchmarks/quantisation_shift.py, embeddings only)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# slow: the same measurement as benchmarks/quantisation_shift.py, kept out of the default suite for time
pytestmark = [pytest.mark.weights, pytest.mark.faces, pytest.mark.slow]

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "quantisation_shift.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("quantisation_shift", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_quantisation_shift_is_small_but_real(bench, johns_chips, dlib_model):
    from leam_jax.weights import load

    chips, persons, _ = johns_chips
    u8 = load("dlib_resnet_faceapi")
    e32, e8 = bench.embed(dlib_model, dlib_model.params, chips), bench.embed(u8, u8.params, chips)
    s = bench.embedding_shift(e32, e8, persons, bench.THRESHOLD)
    print(s)
    # Real: far above the 1e-4 at which each conversion matches its own runtime.
    assert s["emb_max_abs"] >= 1e-3
    # Small: same direction, and no pair moves by more than the closest pair's margin to 0.6.
    assert s["cos_min"] >= 0.999 and s["dist_max"] <= 0.1
    assert s["pair_dist_max_change"] < s["threshold_margin_min"] and s["flips"] == 0
    assert abs(s["auc_f32"] - s["auc_u8"]) <= 0.005 and abs(s["auc_cos_f32"] - s["auc_cos_u8"]) <= 0.005
    assert s["errors_u8"] == s["errors_f32"]
    # The uint8 weights cause it, not face-api's /255 input scale (which alone moves ~30x less).
    quant = bench.embedding_shift(e32, bench.embed(u8, bench.with_stem_scale(u8.params, 1 / bench.FOLD), chips),
                                  persons, bench.THRESHOLD)
    scale = bench.embedding_shift(e32, bench.embed(dlib_model, bench.with_stem_scale(dlib_model.params, bench.FOLD), chips),
                                  persons, bench.THRESHOLD)
    print(f"uint8 weights alone {quant['emb_max_abs']:.3e}, /255 alone {scale['emb_max_abs']:.3e}")
    assert scale["emb_max_abs"] < 0.1 * quant["emb_max_abs"]
    assert quant["emb_max_abs"] >= 0.5 * s["emb_max_abs"]
