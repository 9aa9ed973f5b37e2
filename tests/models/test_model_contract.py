"""The pure apply contract: taps, perturbations, one vjp for every layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax.models import REGISTRY, random_init
from leam_jax.models.dlib_resnet import TAPS, add_zero_padded


@pytest.fixture(scope="module")
def model():
    return random_init("dlib_resnet", seed=1)


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 150, 150, 3)), jnp.float32)


def test_taps_and_shapes(model, images):
    emb, acts = jax.jit(model.apply)(model.params, images)
    assert emb.shape == (2, 128)
    # jit returns dicts key-sorted; the declared order lives in the model's taps.
    assert set(acts) == set(TAPS) and TAPS == REGISTRY["dlib_resnet"].taps == model.taps
    assert tuple(model.apply(model.params, images)[1]) == TAPS  # forward order
    assert acts["stem"].shape == (2, 72, 72, 32)
    assert acts["stem_pool"].shape == (2, 35, 35, 32)
    assert acts["s2_b0"].shape == (2, 17, 17, 64)
    assert acts["s4_b0"].shape == (2, 4, 4, 256)  # conv gives 3x3, the pool 4x4: zero-padded add
    assert acts["s5_b0"].shape == (2, 2, 2, 256)


def test_zero_perturbations_change_nothing(model, images):
    emb, acts = model.apply(model.params, images)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, acts)
    emb0, acts0 = model.apply(model.params, images, zeros)
    np.testing.assert_array_equal(emb, emb0)


def test_perturbation_flows_downstream_only(model, images):
    _, acts = model.apply(model.params, images)
    delta = {"s3_b0": jnp.ones_like(acts["s3_b0"])}
    _, acts1 = model.apply(model.params, images, delta)
    np.testing.assert_array_equal(acts1["s2_b3"], acts["s2_b3"])
    np.testing.assert_allclose(acts1["s3_b0"], acts["s3_b0"] + 1, rtol=1e-6)
    assert not np.allclose(acts1["s3_b1"], acts["s3_b1"])


def test_one_vjp_gives_every_layer_gradient(model, images):
    """vjp w.r.t. zero perturbations at all taps == per-tap vjp (oracle)."""
    _, acts = model.apply(model.params, images)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, acts)

    def score(p):
        return model.apply(model.params, images, p)[0][:, 0]

    _, vjp = jax.vjp(score, zeros)
    (grads,) = vjp(jnp.ones((2,)))
    for tap in ("stem", "s2_b1", "s5_b0"):
        _, vjp1 = jax.vjp(lambda z, t=tap: model.apply(model.params, images, {t: z})[0][:, 0], zeros[tap])
        np.testing.assert_allclose(grads[tap], vjp1(jnp.ones((2,)))[0], atol=1e-6)
        assert np.abs(grads[tap]).sum() > 0


def test_add_zero_padded_matches_dlib_semantics():
    a = jnp.arange(2 * 3 * 3 * 2, dtype=jnp.float32).reshape(2, 3, 3, 2)
    b = jnp.ones((2, 4, 4, 3))
    out = np.asarray(add_zero_padded(a, b))
    ref = np.ones((2, 4, 4, 3))
    ref[:, :3, :3, :2] += np.asarray(a)  # dlib tt::add: the smaller one fills the low corner
    np.testing.assert_array_equal(out, ref)


def test_bad_input_shape_is_a_clear_error(model):
    with pytest.raises(ValueError, match=r"expects images \[B, 150, 150, 3\], got \(1, 112, 112, 3\)"):
        model.apply(model.params, jnp.zeros((1, 112, 112, 3)))


def test_vmap_and_jit_compose(model, images):
    per_image = jax.vmap(lambda x: model.apply(model.params, x[None])[0][0])
    np.testing.assert_allclose(jax.jit(per_image)(images), model.apply(model.params, images)[0], atol=1e-5)
