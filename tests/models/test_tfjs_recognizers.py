"""FaceRes / FaceRes-deep / MobileFace: converter strictness, module contract, and parity
(embeddings and input gradients) with the untouched model.json in TF.js on real face chips.

mobilefacenet (human-models ``mobilefacenet.json``, 192-d ``embeddings``) is not
converted: ``convert`` refuses it with the reason (``tfjs_recognizers.EXCLUDED``);
``test_mobilefacenet_embeddings_ignore_the_face`` shows it in TF.js itself.

faceres_deep's TF.js parity run takes ~35 s on 2 cores, so it is marked ``slow``.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leam_jax import core
from leam_jax.models import faceres, mobileface
from leam_jax.weights import load

# name -> (module, Flax class, embedding node, embedding atol vs TF.js, gradient rel-L2 bound)
# FaceRes gradients cross 27 ReLU6 gates, where float32 rounding near a kink (0 or 6) can switch a
# gate. With depthwise convolutions summed tap by tap (layers.depthwise_conv2d), as TF.js's CPU
# kernel sums them, the gradients agree to ~1e-4, within the 1e-3 bound.
MODELS = {
    "mobileface": (mobileface, mobileface.MobileFace, "batchnorm0/add_1", 1e-4, 1e-5),
    "faceres": (faceres, faceres.FaceRes, "global_pooling/Mean", 1e-4, 1e-3),
    "faceres_deep": (faceres, faceres.FaceRes, "global_pooling/Mean", 1e-4, 1e-3),
}
GRAD_SCRIPT = Path(__file__).resolve().parents[1] / "references" / "tfjs_runtime" / "grad_embedding.js"


def _files(model_json: Path) -> dict[str, bytes]:
    bins = [p for g in json.loads(model_json.read_text())["weightsManifest"] for p in g["paths"]]
    return {model_json.name: model_json.read_bytes(), **{b: (model_json.parent / b).read_bytes() for b in bins}}


# --- modules (random weights) --------------------------------------------------------------------


@pytest.mark.parametrize("cls,size,dim,shapes", [
    (faceres.FaceRes, 224, 1024, {"stem": (112, 32), "block1": (112, 64), "block2": (56, 128), "block13": (7, 1024)}),
    (mobileface.MobileFace, 112, 256, {"stem": (56, 32), "stage1": (28, 32), "stage3": (7, 64), "stage4": (4, 128)}),
])
def test_module_contract(cls, size, dim, shapes):
    from leam_jax.adapters import from_nnx

    model = cls(rngs=nnx.Rngs(0))
    apply, params = from_nnx(model)
    x = jax.random.uniform(jax.random.key(1), (1, size, size, 3), maxval=255.0)
    emb, acts = core.jit(apply)(params, x)
    assert emb.shape == (1, dim) and set(acts) == set(model.taps) and len(model.taps) == len(set(model.taps))
    for tap, (s, c) in shapes.items():
        assert acts[tap].shape == (1, s, s, c), tap
    # A perturbation at a tap moves the embedding: zero perturbations give each tap's gradient.
    zeros = {t: jnp.zeros_like(a) for t, a in acts.items()}
    grads = core.jit(jax.grad(lambda p: apply(params, x, p)[0].sum()))(zeros)
    assert all(float(jnp.abs(grads[t]).sum()) > 0 for t in model.taps)
    with pytest.raises(ValueError, match=rf"\[B, {size}, {size}, 3\]"):
        model(np.zeros((1, size + 1, size, 3), np.float32))
    with pytest.raises(ValueError, match="unknown taps"):
        model(x, {"nope": 0.0})


# --- converter strictness ------------------------------------------------------------------------


@pytest.mark.weights
def test_converter_is_strict(human_model_json):
    from converters import tfjs_graph, tfjs_recognizers

    path = human_model_json("mobileface")
    files = _files(path)
    flat = tfjs_recognizers.convert(files, str(path), "mobileface")
    assert len(flat) == len(tfjs_recognizers.mobileface_table())
    with pytest.raises(tfjs_graph.TfjsFormatError, match=r"mobileface\.bin.*truncated"):
        tfjs_recognizers.convert({**files, "mobileface.bin": files["mobileface.bin"][:-100]}, str(path), "mobileface")
    spec = json.loads(files["mobileface.json"])
    for node in spec["modelTopology"]["node"]:
        if node["name"] == "depthwise_6":
            node["attr"]["strides"]["list"]["i"] = ["1", "1", "1", "1"]
    with pytest.raises(ValueError, match="depthwise_6.*stride"):
        tfjs_recognizers.convert({**files, "mobileface.json": json.dumps(spec).encode()}, str(path), "mobileface")
    with pytest.raises(ValueError, match="mobilefacenet: not converted"):
        tfjs_recognizers.convert({}, "x", "mobilefacenet")


@pytest.mark.weights
def test_faceres_graph_check_names_the_node(human_model_json):
    from converters import tfjs_recognizers

    path = human_model_json("faceres")
    files = _files(path)
    spec = json.loads(files["faceres.json"])
    for node in spec["modelTopology"]["node"]:
        if node["name"] == "conv_dw_6/depthwise":
            node["attr"]["padding"]["s"] = "VkFMSUQ="  # VALID
    with pytest.raises(ValueError, match="conv_dw_6/depthwise.*padding"):
        tfjs_recognizers.convert({**files, "faceres.json": json.dumps(spec).encode()}, str(path), "faceres")


# --- real faces: parity with TF.js, verification ----------------------------------------------------


@pytest.fixture(scope="module")
def chips(faces_dir):
    """All dlib_johns chips (RGB uint8 150x150) and their person ids."""
    from leam_jax.face import decode

    items = decode.list_people(faces_dir / "dlib_johns")
    return np.stack([decode.read_aligned_chip(it.path, 150) for it in items]), [it.person for it in items]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA if size < im.shape[0] else cv2.INTER_LINEAR)
                     for im in images]).astype(np.float32)


def _pick(persons: list[str], n: int) -> list[int]:
    """n chips spread over all persons (round robin)."""
    by = {p: [i for i, q in enumerate(persons) if q == p] for p in dict.fromkeys(persons)}
    out: list[int] = []
    while len(out) < n:
        for idx in by.values():
            if len(out) < n and idx:
                out.append(idx.pop(0))
    return out


def _tfjs_grad(model_json: Path, x: np.ndarray, cot: np.ndarray, output: str) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as d:
        np.ascontiguousarray(x, "<f4").tofile(Path(d) / "in.f32")
        np.ascontiguousarray(cot, "<f4").tofile(Path(d) / "cot.f32")
        cmd = ["node", str(GRAD_SCRIPT), str(model_json), str(Path(d) / "in.f32"), json.dumps(list(x.shape)),
               str(Path(d) / "cot.f32"), d, output]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"TF.js gradient failed: {r.stderr[-2000:]}")
        out = np.fromfile(Path(d) / "output.f32", "<f4").reshape(cot.shape)
        return out, np.fromfile(Path(d) / "grad.f32", "<f4").reshape(x.shape)


def _parity(name, chips, tfjs_runtime, human_model_json, n_embed, n_grad):
    _, cls, node, atol, grad_rtol = MODELS[name]
    images, persons = chips
    model_json = human_model_json(name)
    x = _resize(images[_pick(persons, n_embed)], cls.input_size)
    model = load(name)
    apply, params = model.apply, model.params
    cot = np.random.default_rng(0).standard_normal((n_grad, cls.embedding_dim)).astype(np.float32)
    with ThreadPoolExecutor(2) as pool:  # two node processes on two cores
        halves = np.array_split(x, 2)
        ref_jobs = [pool.submit(tfjs_runtime.run, model_json, h, [node]) for h in halves]
        grad_job = pool.submit(_tfjs_grad, model_json, x[:n_grad], cot, node)
        ref = np.concatenate([j.result()[node] for j in ref_jobs])
        _, g_ref = grad_job.result()
    emb = np.asarray(core.jit(apply)(params, x)[0])
    diff = np.abs(emb - ref).max()
    g = np.asarray(core.jit(jax.grad(lambda xx: jnp.sum(apply(params, xx)[0] * cot)))(x[:n_grad]))
    g_rel = np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref)
    print(f"\n{name}: embeddings of {len(x)} chips, max abs diff {diff:.2e} (max |e| {np.abs(ref).max():.2f}, "
          f"relative {diff / np.abs(ref).max():.1e}); input gradient of {n_grad} chips, relative L2 {g_rel:.1e}")
    assert emb.shape == ref.shape and diff <= atol
    assert g_rel <= grad_rtol


@pytest.mark.weights
@pytest.mark.faces
def test_mobileface_parity_with_tfjs(chips, tfjs_runtime, human_model_json):
    _parity("mobileface", chips, tfjs_runtime, human_model_json, n_embed=10, n_grad=2)


@pytest.mark.weights
@pytest.mark.faces
def test_faceres_parity_with_tfjs(chips, tfjs_runtime, human_model_json):
    _parity("faceres", chips, tfjs_runtime, human_model_json, n_embed=10, n_grad=2)


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.slow
def test_faceres_deep_parity_with_tfjs(chips, tfjs_runtime, human_model_json):
    _parity("faceres_deep", chips, tfjs_runtime, human_model_json, n_embed=10, n_grad=1)


@pytest.mark.weights
def test_faceres_variants_share_the_architecture_not_the_weights(human_model_json):
    from converters import tfjs_recognizers

    a = tfjs_recognizers.convert(_files(human_model_json("faceres")), "a", "faceres")
    b = tfjs_recognizers.convert(_files(human_model_json("faceres_deep")), "b", "faceres_deep")
    assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)
    assert any(not np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.parametrize("name,min_auc", [("faceres", 0.95), ("faceres_deep", 0.95), ("mobileface", 0.75)])
def test_verification_on_dlib_chips(chips, name, min_auc):
    """Same-person cosines exceed different-person ones (dlib 150x150 chips resized, not the
    ArcFace 5-point alignment these models want: a sanity check, not a benchmark)."""
    from leam_jax import stats

    _, cls, *_ = MODELS[name]
    images, persons = chips
    model = load(name)
    apply, params = model.apply, model.params
    fn = core.jit(lambda x: apply(params, x)[0])
    x = _resize(images, cls.input_size)
    emb = np.concatenate([np.asarray(fn(x[i:i + 13])) for i in range(0, len(x), 13)])
    scores, same = stats.pair_scores(emb, np.unique(persons, return_inverse=True)[1])
    auc = float(stats.roc_auc(scores, same))
    print(f"\n{name}: {len(x)} chips, {len(set(persons))} persons, AUC {auc:.3f}, "
          f"mean cosine same {scores[same].mean():.3f} / different {scores[~same].mean():.3f}")
    assert scores[same].mean() > scores[~same].mean() and auc >= min_auc


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.slow
def test_mobilefacenet_embeddings_ignore_the_face(chips, tfjs_runtime, human_model_json):
    """Why mobilefacenet is excluded, in the original runtime: with human's own 0..1 input and with
    the upstream (x - 127.5) / 128, a uniform grey image embeds like every face (cosine ~1)."""
    images, persons = chips
    x = _resize(images[_pick(persons, 5)], 112)
    grey = np.full_like(x[:1], 127.5)
    out = {}
    for label, f in (("human 0..1", lambda t: t / 255.0), ("upstream (x-127.5)/128", lambda t: (t - 127.5) / 128.0)):
        e = tfjs_runtime.run(human_model_json("mobilefacenet"), f(np.concatenate([x, grey])), ["embeddings"])["embeddings"]
        faces, g = e[:-1], e[-1]
        cos_faces = (faces @ faces.T)[np.triu_indices(len(faces), 1)]
        out[label] = (float(cos_faces.min()), float((faces @ g).min()))
    print(f"\nmobilefacenet, min cosine between 5 different people / between a face and a grey image: {out}")
    assert all(c > 0.99 and cg > 0.99 for c, cg in out.values())
