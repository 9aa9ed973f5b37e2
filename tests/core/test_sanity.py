"""Cascading model-parameter randomisation (leam_jax.sanity) on tiny models and synthetic params.

Oracles: tap levels written by hand from tests/references/tiny_models.py; which
leaves change at each k from the levels; mean/std of a redrawn big tensor
against the trained one; the dlib ResNet's levels from its block structure.
"""

import copy
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leam_jax import sanity
from leam_jax.adapters import from_haiku, from_linen, from_nnx
from tests.references import tiny_models as tm
from tests.references.tiny_models import FRAMEWORKS, SIZE

IMAGES = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (3, SIZE, SIZE, 3)), jnp.float32)

# Top-level module of each params leaf -> its level, from the model definitions. NNX taps are
# (c1, dead, c2, c3): 'dead' is a constant that depends on no leaf, so no leaf has level 1, c2
# (the first tap after it that c2's weights reach) is level 2. The final dense layer comes after
# the last tap and counts with it.
EXPECTED = {
    "nnx": ({"c1": 0, "c2": 2, "c3": 3, "fc": 3}, 4),
    "linen": ({"c1_conv": 0, "c2_conv": 1, "c3_conv": 2, "Dense_0": 2}, 3),
    "haiku": ({"c1_conv": 0, "c2_conv": 1, "c3_conv": 2, "linear": 2}, 3),
}


def _by_module(levels):
    """{top-level module: set of its leaves' levels}."""
    out = {}
    for path, lv in jax.tree_util.tree_flatten_with_path(levels)[0]:
        out.setdefault(path[0].key, set()).add(lv)
    return out


def _tiny_model(name):
    """(apply, params) of a tiny model, params filled from numpy with a nonzero mean and spread.

    Shapes come from eval_shape: the models' own initialisers would compile one eager program
    per leaf, the bulk of this file's run time (and their biases start at zero).
    """
    key, x = jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3))
    if name == "nnx":
        apply, params = from_nnx(nnx.eval_shape(lambda: tm.TinyNNX(nnx.Rngs(0))))
    elif name == "linen":
        apply, params = from_linen(tm.TinyLinen()), jax.eval_shape(tm.TinyLinen().init, key, x)["params"]
    else:
        apply, params = from_haiku(tm._HAIKU), jax.eval_shape(tm._HAIKU.init, key, x)
    rng = np.random.default_rng(1)
    return apply, jax.tree_util.tree_map(lambda s: jnp.asarray(0.2 + 0.5 * rng.standard_normal(s.shape), s.dtype), params)


@functools.cache
def _tiny(name):
    """(framework, apply, trained-like params, levels, num_taps)."""
    apply, params = _tiny_model(name)
    return name, apply, params, sanity.tap_levels(apply, params, IMAGES), EXPECTED[name][1]


@pytest.fixture(params=sorted(FRAMEWORKS))
def tiny(request):
    return _tiny(request.param)


def _changed(a, b):
    return [not np.array_equal(np.asarray(x), np.asarray(y))
            for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]


# --- tap_levels -------------------------------------------------------------------


def test_tap_levels_match_the_model_definitions(tiny):
    name, _, params, levels, _ = tiny
    assert jax.tree_util.tree_structure(levels) == jax.tree_util.tree_structure(params)
    assert all(type(lv) is int for lv in jax.tree_util.tree_leaves(levels))
    assert _by_module(levels) == {m: {lv} for m, lv in EXPECTED[name][0].items()}


def test_tap_levels_of_a_tap_subset_use_forward_order():
    _, apply, params, _, _ = _tiny("nnx")
    levels = sanity.tap_levels(apply, params, IMAGES, taps=("c3", "c1"))  # read as (c1, c3)
    assert _by_module(levels) == {"c1": {0}, "c2": {1}, "c3": {1}, "fc": {1}}
    with pytest.raises(ValueError, match="unknown"):
        sanity.tap_levels(apply, params, IMAGES, taps=("c1", "nope"))


def _plain_model(params, x, perturbations=None):
    """Plain JAX: two taps, an int leaf that scales the input, and a float leaf nothing uses."""
    p = perturbations or {}
    a = jnp.tanh(x * params["scale"] @ params["w1"]) + p.get("a", 0.0)
    b = jnp.tanh(a @ params["w2"]) + p.get("b", 0.0)
    return jnp.mean(b, axis=(1, 2)) @ params["head"], {"a": a, "b": b}


def test_tap_levels_non_float_and_disconnected_leaves():
    rng = np.random.default_rng(0)
    params = {"w1": jnp.asarray(rng.standard_normal((3, 4)), jnp.float32),
              "w2": jnp.asarray(rng.standard_normal((4, 5)), jnp.float32),
              "head": jnp.asarray(rng.standard_normal((5, 2)), jnp.float32), "scale": jnp.array(2, jnp.int32),
              "unused": jnp.ones((7,))}
    x = jnp.asarray(rng.standard_normal((2, 4, 4, 3)), jnp.float32)
    levels = sanity.tap_levels(_plain_model, params, x)
    # The int leaf is never randomised; a float leaf no tap depends on counts with the head.
    assert levels == {"w1": 0, "w2": 1, "head": 1, "scale": -1, "unused": 1}


# --- randomize_top ----------------------------------------------------------------


def test_exactly_the_top_levels_change_at_every_k(tiny):
    _, _, params, levels, n = tiny
    lv = jax.tree_util.tree_leaves(levels)
    for k in range(n + 1):
        out = sanity.randomize_top(params, levels, k, jax.random.PRNGKey(3), num_taps=n)
        assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(params)
        assert _changed(out, params) == [level >= n - k for level in lv], k


def test_input_params_untouched_nnx():
    _, _, params, levels, _ = _tiny("nnx")
    before = copy.deepcopy(params)
    ids = [id(x) for x in jax.tree_util.tree_leaves(params)]
    out = sanity.randomize_top(params, levels, 4, jax.random.PRNGKey(0), num_taps=4)
    assert not any(_changed(params, before))
    assert [id(x) for x in jax.tree_util.tree_leaves(params)] == ids  # Variables still hold the same arrays
    assert all(_changed(out, params))
    # Leaves below the cut are the very same arrays, not copies.
    kept = sanity.randomize_top(params, levels, 1, jax.random.PRNGKey(0), num_taps=4)
    assert id(kept["c1"]["kernel"].value) == id(params["c1"]["kernel"].value)


def test_seeded(tiny):
    _, _, params, levels, n = tiny
    a = sanity.randomize_top(params, levels, n, jax.random.PRNGKey(5), num_taps=n)
    b = sanity.randomize_top(params, levels, n, jax.random.PRNGKey(5), num_taps=n)
    c = sanity.randomize_top(params, levels, n, jax.random.PRNGKey(6), num_taps=n)
    assert not any(_changed(a, b))
    assert all(_changed(a, c))


def test_cascade_keeps_earlier_steps_random_values(tiny):
    _, _, params, levels, n = tiny
    steps = sanity.randomized_params(params, levels, range(n + 1), jax.random.PRNGKey(7), num_taps=n)
    for k in range(1, n):
        random_at_k, moved = _changed(steps[k], params), _changed(steps[k + 1], steps[k])
        assert not any(r and m for r, m in zip(random_at_k, moved)), k
    assert all(_changed(steps[n], params))  # every leaf is random at the end


def test_embeddings_change_only_when_randomised(tiny):
    _, apply, params, levels, n = tiny
    trained = apply(params, IMAGES)[0]
    same = apply(sanity.randomize_top(params, levels, 0, jax.random.PRNGKey(0), num_taps=n), IMAGES)[0]
    rand = apply(sanity.randomize_top(params, levels, n, jax.random.PRNGKey(0), num_taps=n), IMAGES)[0]
    np.testing.assert_array_equal(np.asarray(same), np.asarray(trained))
    assert np.abs(np.asarray(rand) - np.asarray(trained)).max() > 1e-3


def test_under_jit_matches_eager():
    _, _, params, levels, n = _tiny("nnx")  # NNX State: the pytree with mutable Variables
    fn = jax.jit(lambda p, key: sanity.randomize_top(p, levels, 2, key, num_taps=n))
    eager = sanity.randomize_top(params, levels, 2, jax.random.PRNGKey(9), num_taps=n)
    jitted = fn(params, jax.random.PRNGKey(9))
    for x, y in zip(jax.tree_util.tree_leaves(jitted), jax.tree_util.tree_leaves(eager)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


def test_redraw_keeps_per_tensor_scale_shape_and_dtype():
    rng = np.random.default_rng(0)
    params = {"big": jnp.asarray(1.3 + 2.5 * rng.standard_normal((512, 512)), jnp.float32),
              "half": jnp.asarray(0.5 + 0.1 * rng.standard_normal((256, 256)), jnp.bfloat16),
              "low": jnp.asarray(rng.standard_normal(8), jnp.float32), "count": jnp.arange(4),
              "zero_bias": jnp.zeros((16,))}
    levels = {"big": 1, "half": 1, "low": 0, "count": -1, "zero_bias": 1}
    out = sanity.randomize_top(params, levels, 1, jax.random.PRNGKey(1), num_taps=2)
    for name in ("big", "half"):
        x, y = np.asarray(params[name], np.float64), np.asarray(out[name], np.float64)
        assert out[name].shape == params[name].shape and out[name].dtype == params[name].dtype
        assert abs(y.mean() - x.mean()) < 0.05 * abs(x.mean()) and abs(y.std() / x.std() - 1) < 0.05
        assert np.abs(np.corrcoef(x.ravel(), y.ravel())[0, 1]) < 0.05  # a fresh draw, not a shuffle of x
    assert out["low"] is params["low"] and out["count"] is params["count"]
    np.testing.assert_array_equal(np.asarray(out["zero_bias"]), 0.0)  # std 0: the constant stays


def test_randomize_top_errors(tiny):
    _, _, params, levels, n = tiny
    for k in (-1, n + 1):
        with pytest.raises(ValueError, match="k must be in"):
            sanity.randomize_top(params, levels, k, jax.random.PRNGKey(0), num_taps=n)
    with pytest.raises(ValueError, match="ints in"):
        sanity.randomize_top(params, levels, 1, jax.random.PRNGKey(0), num_taps=n - 1)
    with pytest.raises(ValueError, match="structure"):
        sanity.randomize_top({"a": jnp.ones(2)}, {"b": 0}, 1, jax.random.PRNGKey(0), num_taps=1)


# --- cascade_steps ----------------------------------------------------------------


def test_cascade_steps_examples():
    assert sanity.cascade_steps(16) == tuple(range(1, 17))
    assert sanity.cascade_steps(16, 20) == tuple(range(1, 17))
    assert sanity.cascade_steps(16, 5) == (1, 5, 8, 12, 16)
    assert sanity.cascade_steps(16, 3) == (1, 8, 16)
    assert sanity.cascade_steps(5, 3) == (1, 3, 5)
    assert sanity.cascade_steps(4, 3) == (1, 2, 4)
    assert sanity.cascade_steps(1) == (1,)


def test_cascade_steps_properties():
    for n in range(1, 41):
        for m in range(3, n + 1):
            s = sanity.cascade_steps(n, m)
            assert len(s) == m and all(a < b for a, b in zip(s, s[1:])), (n, m, s)
            assert {1, (n + 1) // 2, n} <= set(s) and set(s) <= set(range(1, n + 1)), (n, m, s)


def test_cascade_steps_errors():
    with pytest.raises(ValueError, match="num_taps"):
        sanity.cascade_steps(0)
    with pytest.raises(ValueError, match="max_steps"):
        sanity.cascade_steps(16, 2)


# --- the real dlib ResNet -----------------------------------------------------------


@pytest.mark.weights
def test_dlib_resnet_levels_follow_its_blocks(dlib_model):
    taps, params = dlib_model.taps, dlib_model.params
    images = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, 150, 150, 3)), jnp.float32)
    start = time.perf_counter()
    levels = sanity.tap_levels(dlib_model.apply, params, images)
    print(f"\ntap_levels on dlib_resnet ({len(taps)} taps, 2 images): {time.perf_counter() - start:.2f} s")
    n = len(taps)
    assert taps[:2] == ("stem", "stem_pool") and n == 16
    assert _by_module({"stem_conv": levels["stem_conv"], "stem_affine": levels["stem_affine"],
                       "fc": levels["fc"]}) == {"stem_conv": {0}, "stem_affine": {0}, "fc": {n - 1}}
    per_block = [set(jax.tree_util.tree_leaves(levels["blocks"][i])) for i in range(14)]
    assert per_block == [{i + 2} for i in range(14)]  # block i feeds tap i + 2 first: never decreasing
    # Every level is used but stem_pool's: a max-pool has no params of its own.
    assert set(jax.tree_util.tree_leaves(levels)) == set(range(n)) - {1}
    out = sanity.randomize_top(params, levels, 1, jax.random.PRNGKey(0), num_taps=n)
    assert _changed(out, params) == [lv == n - 1 for lv in jax.tree_util.tree_leaves(levels)]
