"""Protection core (LEAM_SPEC section 7) and image quality against numpy / finite-difference oracles."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leam_jax import protection as pr
from leam_jax import quality
from tests.references.tiny_models import SIZE, linen_model, nnx_model

RNG = np.random.default_rng(0)
B, H, W = 4, 24, 22  # photo regions larger than the 16x16 model input, not square
PHOTOS = jnp.asarray(RNG.integers(0, 256, (B, H, W, 3)), jnp.float32)  # integer-valued, as a decoded photo
MASKS = jnp.asarray(RNG.uniform(size=(B, H, W)) < 0.3)
EPS = 8.0


def np_affines(seed):
    """Small similarities mapping the 16x16 model input inside each photo region ([B, 2, 3] out_to_in)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(B):
        s, a = rng.uniform(1.05, 1.2), rng.uniform(-0.1, 0.1)
        lin = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        centre_in = np.array([(W - 1) / 2, (H - 1) / 2]) + rng.uniform(-1, 1, 2)
        t = centre_in - lin @ np.full(2, (SIZE - 1) / 2)
        out.append(np.concatenate([lin, t[:, None]], axis=1))
    return np.stack(out).astype(np.float32)


AFFINES = (jnp.asarray(np_affines(1)), jnp.asarray(np_affines(2)))


def centred(apply, params, seed):
    """A tiny model whose embeddings are centred on the mean of random photos' embeddings: untrained
    tiny models put every photo at cosine ~0.99 of every other, trained face models do not."""
    x = jnp.asarray(np.random.default_rng(seed).integers(0, 256, (32, SIZE, SIZE, 3)), jnp.float32)
    centre = jnp.mean(apply(params, x)[0], axis=0)

    def apply_centred(p, images, perturbations=None):
        emb, acts = apply(p, images, perturbations)
        return emb - centre, acts

    return pr.SourceModel(apply_centred, params, SIZE)


@pytest.fixture(scope="module")
def sources():
    """Two source models (NNX and Linen) and the person's references: another photo of them (the
    photo with heavy noise). Not the photo itself, where the cosine is at its maximum (zero gradient)."""
    models = (centred(*nnx_model(0), seed=10), centred(*linen_model(1), seed=11))
    other = jnp.clip(PHOTOS + jnp.asarray(RNG.normal(0, 40, PHOTOS.shape), jnp.float32), 0, 255)
    embed = jax.jit(lambda models: [m.apply(m.params, m.inputs(other, a))[0] for m, a in zip(models, AFFINES)])
    return models, tuple(embed(models))


# --- numpy oracles -------------------------------------------------------------


def np_warp(image, m, out_shape):
    """Bilinear warp, one pixel at a time; 0 unless the 2x2 neighbourhood is inside (float64)."""
    image = np.asarray(image, np.float64)
    h_in, w_in = image.shape[:2]
    out = np.zeros((*out_shape, image.shape[2]))
    for y in range(out_shape[0]):
        for x in range(out_shape[1]):
            sx, sy = m[0, 0] * x + m[0, 1] * y + m[0, 2], m[1, 0] * x + m[1, 1] * y + m[1, 2]
            if 0 <= sx < w_in - 1 and 0 <= sy < h_in - 1:
                x0, y0 = int(np.floor(sx)), int(np.floor(sy))
                fx, fy = sx - x0, sy - y0
                out[y, x] = ((1 - fy) * ((1 - fx) * image[y0, x0] + fx * image[y0, x0 + 1])
                             + fy * ((1 - fx) * image[y0 + 1, x0] + fx * image[y0 + 1, x0 + 1]))
    return out


def np_ssim(a, b):
    """Wang et al. 2004 by brute force: every valid 11x11 window, each channel, float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    g = np.exp(-0.5 * ((np.arange(11) - 5) / 1.5) ** 2)
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    out = []
    for x, y in zip(a, b):
        vals = []
        for c in range(x.shape[2]):
            for i in range(x.shape[0] - 10):
                for j in range(x.shape[1] - 10):
                    px, py = x[i:i + 11, j:j + 11, c], y[i:i + 11, j:j + 11, c]
                    mx, my = (win * px).sum(), (win * py).sum()
                    vx, vy = (win * (px - mx) ** 2).sum(), (win * (py - my) ** 2).sum()
                    cxy = (win * (px - mx) * (py - my)).sum()
                    vals.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
        out.append(np.mean(vals))
    return np.array(out)


def np_blur(image, sigma, radius):
    """Non-separable 2-D Gaussian, edges replicated (float64)."""
    k = np.arange(-radius, radius + 1)
    g = np.exp(-0.5 * (k / max(sigma, 1e-3)) ** 2)
    win = np.outer(g, g) / np.outer(g, g).sum()
    p = np.pad(np.asarray(image, np.float64), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    h, w = image.shape[:2]
    return sum(win[i, j] * p[i:i + h, j:j + w] for i in range(2 * radius + 1) for j in range(2 * radius + 1))


# --- warp, views and losses ------------------------------------------------------


def test_warp_affine_batch_equals_numpy_and_the_face_pipeline_warp():
    from leam_jax.face.alignment import warp_affine

    m = np.array(AFFINES[0])
    m[1, 0, 2] -= 6.0  # push image 1's samples over the top border: zeros there
    ours = jax.jit(pr.warp_affine_batch, static_argnums=2)(PHOTOS, jnp.asarray(m), (SIZE, SIZE))
    assert ours.shape == (B, SIZE, SIZE, 3) and ours.dtype == jnp.float32
    for b in range(B):
        np.testing.assert_allclose(ours[b], np_warp(PHOTOS[b], m[b], (SIZE, SIZE)), atol=2e-3)  # float32 coordinates x 255
        np.testing.assert_allclose(ours[b], warp_affine(PHOTOS[b], m[b], (SIZE, SIZE)), atol=1e-3)  # jit vs eager
    assert float(jnp.min(jnp.abs(ours[1, :3]).sum(-1))) == 0.0


def test_blur_equals_a_2d_numpy_gaussian():
    sigma = jnp.array([0.0, 0.4, 1.0, 0.7])
    ours = jax.jit(pr.gaussian_blur_batch, static_argnums=2)(PHOTOS, sigma, 3)
    for b in range(B):
        np.testing.assert_allclose(ours[b], np_blur(PHOTOS[b], float(sigma[b]), 3), atol=1e-3)
    np.testing.assert_array_equal(ours[0], PHOTOS[0])  # sigma 0: the image itself


def test_alignment_jitter_zooms_about_the_centre_and_shifts_in_input_pixels():
    eye = pr.identity_affines(2)
    draws = {"scale": jnp.array([1.0, 1.1]), "shift": jnp.array([[2.0 / SIZE, -1.0 / SIZE], [0.0, 0.0]])}
    out = np.asarray(pr._jitter(eye, draws, SIZE))
    np.testing.assert_allclose(out[0], [[1, 0, 2], [0, 1, -1]], atol=1e-6)
    c = np.array([(SIZE - 1) / 2, (SIZE - 1) / 2, 1.0])
    np.testing.assert_allclose(out[1] @ c, c[:2], atol=1e-5)  # the centre stays put
    np.testing.assert_allclose(out[1][:, :2], 1.1 * np.eye(2), atol=1e-6)


def test_gradient_through_warp_and_views_matches_finite_differences(sources):
    """d loss / d photo through random views (resize, blur, jitter) and the warp, in float64,
    against central differences along random directions."""
    models, refs = sources
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), t)
        model = pr.SourceModel(models[0].apply, f64(models[0].params), SIZE)
        photos, affines, ref = f64(PHOTOS[:2]), (f64(AFFINES[0][:2]),), (f64(refs[0][:2]),)
        cfg = pr.EotConfig(resize_prob=1.0)  # exercise the down-up path for every image
        key = jax.random.PRNGKey(5)
        loss = lambda x: jnp.sum(pr.dodging_loss((model,), x, affines, ref, view_key=key, eot_config=cfg))
        value_and_grad = jax.jit(jax.value_and_grad(loss))
        grad = value_and_grad(photos)[1]
        rng = np.random.default_rng(3)
        for _ in range(3):
            v = jnp.asarray(rng.normal(size=photos.shape))
            h = 1e-4
            fd = (float(value_and_grad(photos + h * v)[0]) - float(value_and_grad(photos - h * v)[0])) / (2 * h)
            analytic = float(jnp.sum(grad * v))
            assert abs(fd - analytic) <= 1e-6 * max(abs(fd), 1e-3), (fd, analytic)


def test_ensemble_loss_is_the_sum_of_the_members(sources):
    models, refs = sources
    @jax.jit
    def losses(models, refs):
        kw = dict(view_key=jax.random.PRNGKey(1))
        parts = [pr.dodging_loss(models[m:m + 1], PHOTOS, AFFINES[m:m + 1], refs[m:m + 1], **kw) for m in range(2)]
        own = [m.apply(m.params, m.inputs(PHOTOS, a))[0] for m, a in zip(models, AFFINES)]
        return pr.dodging_loss(models, PHOTOS, AFFINES, refs, **kw), parts, pr.model_scores(models, PHOTOS, AFFINES, own)

    both, parts, own_scores = losses(models, refs)
    np.testing.assert_allclose(both, parts[0] + parts[1], rtol=1e-6)
    np.testing.assert_allclose(own_scores, 1.0, atol=1e-5)  # the photo against its own embedding


# --- the optimisation --------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(sources):
    models, refs = sources
    kw = dict(epsilon=EPS, steps=10, keep_iterates=True)
    return {opt: pr.protect(models, PHOTOS, MASKS, AFFINES, refs, optimizer=opt, **kw) for opt in pr.OPTIMIZERS}


def assert_feasible(photos, masks, delta, eps):
    """0 outside the mask, |δ| <= ε and photo + δ in [0, 255], exactly, for [..., B, H, W, 3] δ."""
    d, x = np.asarray(delta), np.asarray(photos)
    assert np.all(d[..., ~np.asarray(masks), :] == 0)
    assert np.abs(d).max() <= eps
    assert (x + d).min() >= 0 and (x + d).max() <= 255


@pytest.mark.parametrize("optimizer", pr.OPTIMIZERS)
def test_pgd_and_adam_lower_the_score(runs, optimizer):
    r = runs[optimizer]
    assert r.scores_before.shape == r.scores_after.shape == (B, 2) and r.losses.shape == (B, 10)
    before, after = np.asarray(r.scores_before), np.asarray(r.scores_after)
    np.testing.assert_allclose(r.losses[:, 0], before.sum(1), atol=1e-5)
    assert np.all(after.sum(1) < before.sum(1) - 0.05), (before, after)  # the ensemble's loss, every photo
    assert np.all(after.mean(0) < before.mean(0) - 0.05)  # each member, on average
    assert np.all(np.asarray(r.losses[:, -1]) < np.asarray(r.losses[:, 0]))


@pytest.mark.parametrize("optimizer", pr.OPTIMIZERS)
def test_every_iterate_is_masked_bounded_and_in_range(runs, optimizer):
    r = runs[optimizer]
    assert r.iterates.shape == (B, 11, H, W, 3)
    np.testing.assert_array_equal(r.iterates[:, -1], r.delta)
    for t in range(11):
        assert_feasible(PHOTOS, MASKS, r.iterates[:, t], EPS)
    assert float(jnp.abs(r.delta).max()) == EPS  # the budget is used (PGD reaches the box's faces)


def test_first_pgd_step_is_the_projected_signed_gradient(sources, runs):
    """δ_1 = Π(-α sign(∇ loss at the photo)) with α = 2.5 ε / steps, masked and clipped to the photo's range."""
    models, refs = sources
    g = np.asarray(jax.jit(jax.grad(lambda x: jnp.sum(pr.dodging_loss(models, x, AFFINES, refs))))(PHOTOS))
    alpha = float(pr.default_step_size(EPS, 10))
    assert alpha == 2.5 * EPS / 10
    x = np.asarray(PHOTOS)
    expected = np.where(np.asarray(MASKS)[..., None], np.clip(-alpha * np.sign(g), -x, 255 - x), 0.0)
    np.testing.assert_array_equal(runs["pgd"].iterates[:, 1], expected.astype(np.float32))


def test_quantised_photo_keeps_the_mask_and_the_budget(runs):
    photos_u8 = np.asarray(PHOTOS).astype(np.uint8)
    wild = jnp.asarray(RNG.uniform(-20, 20, PHOTOS.shape), jnp.float32)  # violates everything on purpose
    eps = jnp.array([8.5, 3.0, 0.0, 12.7])
    q = np.asarray(jax.jit(lambda x, d, m, e: pr.quantise(x, d, masks=m, epsilon=e))(photos_u8, wild, MASKS, eps))
    assert q.dtype == np.uint8
    diff = q.astype(int) - photos_u8.astype(int)
    assert np.all(diff[~np.asarray(MASKS)] == 0)
    assert np.all(np.abs(diff) <= np.floor(np.asarray(eps))[:, None, None, None])
    # A feasible δ of an integer budget is just rounded.
    d = runs["adam"].delta
    q = np.asarray(pr.quantise(photos_u8, d, masks=MASKS, epsilon=EPS))
    np.testing.assert_array_equal(q, np.round(np.asarray(PHOTOS) + np.asarray(d)).astype(np.uint8))
    assert_feasible(PHOTOS, MASKS, q.astype(np.float32) - np.asarray(PHOTOS), EPS)


def test_seeded_eot_runs_are_byte_identical(sources):
    models, refs = sources
    kw = dict(epsilon=EPS, steps=3, eot=2, optimizer="adam", keep_iterates=True)
    run = lambda seed: pr.protect(models[:1], PHOTOS, MASKS, AFFINES[:1], refs[:1], key=jax.random.PRNGKey(seed), **kw)
    a, b, c = run(7), run(7), run(8)
    for name in ("delta", "losses", "scores_after", "iterates"):
        assert np.asarray(getattr(a, name)).tobytes() == np.asarray(getattr(b, name)).tobytes(), name
    assert np.asarray(a.delta).tobytes() != np.asarray(c.delta).tobytes()  # the key matters
    for t in range(4):
        assert_feasible(PHOTOS, MASKS, a.iterates[:, t], EPS)


def test_identification_score_is_lowered(sources):
    """Dodging the identification score: log softmax of the own row over a gallery of 4 people."""
    models, refs = sources
    galleries = tuple(jnp.roll(r, 1, axis=0) * 0.5 + r[::-1] for r in refs)  # other people, not the photo
    ids = jnp.arange(B)
    r = pr.protect(models[:1], PHOTOS, MASKS, AFFINES[:1], refs[:1], epsilon=EPS, steps=4, score="identification",
                   galleries=galleries[:1], person_ids=ids)
    assert np.all(np.asarray(r.scores_before) <= 0) and np.all(np.asarray(r.scores_after) < np.asarray(r.scores_before))


def test_runner_compiles_once_for_ragged_batches_and_any_budget(sources, runs):
    models, refs = sources
    runner = pr.ProtectionRunner(models, batch_size=B, steps=10, optimizer="pgd")
    full = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS)
    part = runner(PHOTOS[:3], MASKS[:3], [a[:3] for a in AFFINES], [r[:3] for r in refs], epsilon=EPS)
    small = runner(PHOTOS[:1], MASKS[:1], [a[:1] for a in AFFINES], [r[:1] for r in refs], epsilon=2.0)
    assert runner.trace_count == 1
    assert part.delta.shape == (3, H, W, 3) and small.scores_after.shape == (1, 2)
    np.testing.assert_array_equal(full.delta, runs["pgd"].delta)  # the same program as protect()
    np.testing.assert_array_equal(part.delta, full.delta[:3])  # padding changes nothing
    assert float(jnp.abs(small.delta).max()) <= 2.0


def test_member_weights_scale_the_sum_and_a_zero_weight_leaves_the_member_out(sources, runs):
    models, refs = sources
    w = jnp.array([2.0, 0.5])
    loss = pr.dodging_loss(models, PHOTOS, AFFINES, refs, weights=w)
    scores = pr.model_scores(models, PHOTOS, AFFINES, refs)
    np.testing.assert_allclose(loss, scores @ w, rtol=1e-5)
    runner = pr.ProtectionRunner(models, batch_size=B, steps=10, optimizer="pgd")
    only_first = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, weights=[1.0, 0.0])
    both = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, weights=[1.0, 1.0])
    assert runner.trace_count == 1  # every sub-ensemble: one program
    alone = pr.protect(models[:1], PHOTOS, MASKS, AFFINES[:1], refs[:1], epsilon=EPS, steps=10)
    np.testing.assert_allclose(only_first.delta, alone.delta, atol=1e-4)
    np.testing.assert_array_equal(both.delta, runs["pgd"].delta)
    np.testing.assert_allclose(only_first.scores_after[:, :1], alone.scores_after, atol=1e-5)
    with pytest.raises(ValueError, match="weights"):
        runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, weights=[0.0, 0.0])


def test_floors_clip_each_member_and_a_member_at_its_floor_stops_pulling(sources, runs):
    """dodging_loss with floors = sum of max(member score, floor); a member below its floor adds no gradient,
    so the run equals the run without that member; no floors = floors of -inf; one program for all."""
    models, refs = sources
    scores = np.asarray(pr.model_scores(models, PHOTOS, AFFINES, refs))
    floors = np.stack([np.median(scores, axis=0), np.full(2, -np.inf)])[[0, 1, 0, 1]]  # [B, M], per photo
    loss = pr.dodging_loss(models, PHOTOS, AFFINES, refs, floors=jnp.asarray(floors, jnp.float32))
    np.testing.assert_allclose(loss, np.maximum(scores, floors).sum(1), rtol=1e-6)

    out_of_reach = jnp.array([2.0, -jnp.inf])  # cosines are <= 1: the first member is always below it
    grad = jax.jit(jax.grad(lambda x, f: jnp.sum(pr.dodging_loss(models, x, AFFINES, refs, floors=f))))
    alone = jax.jit(jax.grad(lambda x: jnp.sum(pr.dodging_loss(models[1:], x, AFFINES[1:], refs[1:]))))(PHOTOS)
    np.testing.assert_allclose(grad(PHOTOS, out_of_reach), alone, rtol=1e-6, atol=1e-9)

    runner = pr.ProtectionRunner(models, batch_size=B, steps=10, optimizer="pgd")
    floored = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, floors=out_of_reach)
    second_only = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, weights=[0.0, 1.0])
    none = runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, floors=-jnp.inf)
    assert runner.trace_count == 1
    np.testing.assert_array_equal(floored.delta, second_only.delta)
    np.testing.assert_array_equal(none.delta, runs["pgd"].delta)  # -inf: the plain sum, as without floors
    assert not np.array_equal(floored.delta, none.delta)
    with pytest.raises(ValueError, match="floors"):
        runner(PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, floors=[0.5, 0.5, 0.5])
    with pytest.raises(ValueError, match="NaN"):
        pr.protect(models, PHOTOS, MASKS, AFFINES, refs, epsilon=EPS, steps=2, floors=[np.nan, 0.0])


def test_bad_inputs_raise(sources):
    models, refs = sources
    call = lambda **kw: pr.protect(**{**dict(models=models, photos=PHOTOS, masks=MASKS, affines=AFFINES,
                                             references=refs, epsilon=EPS, steps=1), **kw})
    with pytest.raises(ValueError, match="masks"):
        call(masks=MASKS[:, :-1])
    with pytest.raises(ValueError, match="per model"):
        call(affines=AFFINES[:1])
    with pytest.raises(ValueError, match="affines"):
        call(affines=(AFFINES[0][:2], AFFINES[1]))
    with pytest.raises(ValueError, match="optimizer"):
        call(optimizer="sgd")
    with pytest.raises(ValueError, match="epsilon"):
        call(epsilon=-1.0)
    with pytest.raises(ValueError, match="gallery"):
        call(score="identification")
    with pytest.raises(ValueError, match="out_to_in"):
        pr.warp_affine_batch(PHOTOS, AFFINES[0][:2], (SIZE, SIZE))


# --- image quality -------------------------------------------------------------------


def test_ssim_and_psnr_equal_numpy():
    a = RNG.integers(0, 256, (2, 16, 19, 3)).astype(np.uint8)
    b = np.clip(a + RNG.normal(0, 12, a.shape) * (RNG.uniform(size=a.shape) < 0.5), 0, 255).astype(np.uint8)
    b[1, :8] = a[1, :8]  # half of image 1 untouched
    np.testing.assert_allclose(jax.jit(quality.ssim)(a, b), np_ssim(a, b), rtol=1e-5, atol=1e-6)
    mse = ((a.astype(np.float64) - b) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(jax.jit(quality.psnr)(a, b), 10 * np.log10(255.0**2 / mse), rtol=1e-5)
    np.testing.assert_allclose(quality.ssim(a, a), 1.0, atol=1e-6)
    assert np.all(np.isinf(np.asarray(quality.psnr(a, a))))
    with pytest.raises(ValueError, match="11x11"):
        quality.ssim(a[:, :10], b[:, :10])


# --- data parallelism ------------------------------------------------------------------


def _two_device_check() -> None:
    """Run under 2 fake CPU devices: the runner sharded over both equals one device, one trace each."""
    devices = jax.devices()
    assert len(devices) == 2, devices
    models = (centred(*nnx_model(0), seed=10),)
    refs = (models[0].apply(models[0].params, models[0].inputs(PHOTOS[::-1], AFFINES[0]))[0],)
    kw = dict(batch_size=B, steps=3, eot=1)
    two = pr.ProtectionRunner(models, mesh=jax.sharding.Mesh(devices, ("batch",)), **kw)
    one = pr.ProtectionRunner(models, mesh=jax.sharding.Mesh(devices[:1], ("batch",)), **kw)
    diff, used = 0.0, 0
    for n in (4, 3):
        a = two(PHOTOS[:n], MASKS[:n], (AFFINES[0][:n],), (refs[0][:n],), epsilon=EPS)
        b = one(PHOTOS[:n], MASKS[:n], (AFFINES[0][:n],), (refs[0][:n],), epsilon=EPS)
        diff = max(diff, float(np.abs(np.asarray(a.scores_after) - np.asarray(b.scores_after)).max()))
        used = len(a.delta.sharding.device_set) if n == 4 else used
    print(json.dumps({"diff": diff, "traces": [two.trace_count, one.trace_count], "devices_used": used}))


@pytest.mark.slow  # a fresh process under 2 fake devices: ~40 s on 2 busy cores
def test_two_device_sharding_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    code = "from tests.core.test_protection import _two_device_check; _two_device_check()"
    result = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["devices_used"] == 2 and report["traces"] == [1, 1]
    assert report["diff"] <= 1e-5, report
