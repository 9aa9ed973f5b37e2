"""Every registry model runs through the same LEAM entry point (random weights, no downloads)."""

import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import core
from leam_jax.face.pipeline import TEMPLATES
from leam_jax.models import REGISTRY, random_init

HEAVY = {"iresnet100"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in sorted(REGISTRY)])
def test_leam_runs_on_every_registry_model(name):
    spec = REGISTRY[name]
    assert spec.template in TEMPLATES and TEMPLATES[spec.template][0] == spec.input_size
    model = random_init(name, seed=1)
    x = jnp.asarray(np.random.default_rng(0).uniform(0, 255, (2, spec.input_size, spec.input_size, 3)), jnp.float32)
    out = core.leam_maps(model.apply, model.params, x, target="self", taps=model.taps)
    assert out.per_layer.shape == (2, len(spec.taps), spec.input_size, spec.input_size)
    assert out.embeddings.shape == (2, spec.embedding_dim)
    assert np.isfinite(out.overall).all()
    np.testing.assert_allclose(np.asarray(out.overall).sum((1, 2)), 1.0, atol=1e-4)


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.parametrize("name", sorted(n for n, s in REGISTRY.items() if s.weights_here))
def test_leam_runs_on_every_real_model(name, faces_dir, dlib_dat):
    """Real converted weights, real faces (dlib chips resized to the model input)."""
    import cv2

    from leam_jax.face import decode
    from leam_jax.weights import load

    spec = REGISTRY[name]
    model = load(name)
    items = decode.list_people(faces_dir / "dlib_johns")[:4]
    x = np.stack([cv2.resize(decode.read_rgb(it.path), (spec.input_size, spec.input_size)) for it in items])
    out = core.leam_maps(model.apply, model.params, jnp.asarray(x, jnp.float32),
                         person_ids=jnp.array([0, 0, 1, 1]), taps=model.taps)
    assert np.isfinite(out.overall).all() and not np.asarray(out.overall_flags).any()
    np.testing.assert_allclose(np.asarray(out.overall).sum((1, 2)), 1.0, atol=1e-4)
