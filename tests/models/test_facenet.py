"""FaceNet InceptionResnetV1 from a facenet-pytorch state dict: Flax vs facenet-pytorch's own module.

The oracle is ``facenet_pytorch/models/inception_resnet_v1.py`` executed from
the facenet-pytorch 2.6.0 wheel (``tests/references/facenet_pytorch_reference.py``;
fetched once by ``pip download`` into the source cache, sha256-pinned; the
tests skip with the reason when it cannot be had), with random weights,
biases and batch-norm statistics (eval mode; ``tests/references/torch_randomize.py``:
statistics measured on the test inputs, so the embedding has a trained
network's O(1) entries). Its ``state_dict()`` is saved
as a .pt, converted with ``converters.facenet_pytorch`` and compared on
160x160 inputs (dlib_johns chips resized when ../shared/faces is there, and
uniform noise): embeddings (``last_bn`` output, before the L2 normalisation,
and the normalised ``forward`` output) within 1e-4 absolute; gradients of one
embedding component w.r.t. the input pixels within 1e-3 relative (L2) of
torch autograd in float64 (float32 is held to PyTorch float32's own distance
from float64: ReLU and max-pool kinks).
"""

from __future__ import annotations

import copy
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from converters import facenet_pytorch as conv
from leam_jax import core
from leam_jax.models import contract, inception_resnet_v1
from leam_jax.models.params import ParamsError
from leam_jax.weights import checkpoint
from tests.conftest import FACES
from tests.references.torch_randomize import refilled

torch = pytest.importorskip("torch", reason="PyTorch (facenet-pytorch's runtime) not installed")
pytestmark = pytest.mark.torch

EMB_ATOL = 1e-4
GRAD_RTOL = 1e-3
COMPONENT = 5  # the embedding component whose input gradient is compared
SIZE = inception_resnet_v1.INPUT_SIZE
PAIR = [0, -1]  # the float64 check runs on the first chip and the noise image (float64 convs are slow on CPU)


def _images(seed: int = 0) -> tuple[np.ndarray, str]:
    """2 dlib_johns chips resized to 160 (if present) + noise: float32 [3, 160, 160, 3] RGB 0..255."""
    import cv2

    from leam_jax.face import decode

    rng = np.random.default_rng(seed)
    chips, what = [], "noise only (no ../shared/faces)"
    if (FACES / "dlib_johns").is_dir():
        items = decode.list_people(FACES / "dlib_johns", max_images_per_person=1)[:2]
        chips = [cv2.resize(decode.read_rgb(it.path), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for it in items]
        what = f"{len(chips)} dlib_johns chips + 1 noise"
    noise = [rng.uniform(0, 255, (SIZE, SIZE, 3)) for _ in range(3 - len(chips))]
    return np.stack(chips + noise).astype(np.float32), what


def _torch_outputs(net, images: np.ndarray, dtype):
    """(pre-normalisation embedding, facenet-pytorch's normalised output, d pre[:, COMPONENT].sum() / d pixels)."""
    pre = {}
    hook = net.last_bn.register_forward_hook(lambda m, i, o: pre.__setitem__("emb", o))
    try:
        pixels = torch.from_numpy(images).to(dtype).requires_grad_(True)
        out = net((pixels.permute(0, 3, 1, 2) - 127.5) / 128.0)  # fixed_image_standardization
        pre["emb"][:, COMPONENT].sum().backward()
    finally:
        hook.remove()
    return pre["emb"].detach().numpy(), out.detach().numpy(), pixels.grad.numpy()


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _pt_bytes(sd) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


class Source:
    """facenet-pytorch's InceptionResnetV1 with random weights, its .pt state dict and torch outputs (float32, float64)."""

    def __init__(self, tmp):
        from leam_jax.weights import packages
        from tests.references import facenet_pytorch_reference as ref
        from tests.references.torch_randomize import EmbGrad, randomize

        try:
            self.module = ref.load_module()
        except packages.SourceError as e:
            pytest.skip(f"facenet-pytorch wheel (the oracle) unavailable: {e}")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # on a busy 2-core machine, torch's thread pool spins: one thread is much faster
        try:
            self.images, self.what = _images()
            # Batch-norm statistics measured on these inputs (plus noise), as a trained network's are on faces.
            calib = np.concatenate([self.images, _images(seed=1)[0][-1:]])
            self.net = randomize(self.module.InceptionResnetV1(pretrained=None, classify=False), seed=7,
                                     inputs=(torch.from_numpy(calib).permute(0, 3, 1, 2) - 127.5) / 128.0)
            for p in self.net.parameters():
                p.requires_grad_(False)  # input gradients only
            self.pt = tmp / "facenet.pt"
            torch.save(self.net.state_dict(), self.pt)
            self.pre, self.out, self.grad = _torch_outputs(self.net, self.images, torch.float32)
            self.pre64, self.out64, self.grad64 = _torch_outputs(copy.deepcopy(self.net).double(), self.images,
                                                                 torch.float64)
        finally:
            torch.set_num_threads(threads)
        self.emb_and_grad = EmbGrad(COMPONENT)
        self._model = None

    def units(self, data: bytes | None = None):
        data = self.pt.read_bytes() if data is None else data
        return conv.units_from_state_dict(conv.read_state_dict(data, str(self.pt)), str(self.pt))

    def ctor(self):
        return inception_resnet_v1.InceptionResnetV1(rngs=nnx.Rngs(0))

    def jax_apply(self):
        if self._model is None:
            flat = conv.convert({self.pt.name: self.pt.read_bytes()}, str(self.pt), "facenet")
            self._model = contract.from_flat(self.ctor, flat, str(self.pt))
        return self._model


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    return Source(tmp_path_factory.mktemp("facenet"))


def test_parity_float32(source):
    """Embeddings within 1e-4 of facenet-pytorch (before and after its L2 normalisation); input gradients."""
    apply, params = source.jax_apply()
    emb, grad = source.emb_and_grad(apply, params, source.images)
    normed = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    d_pre, d_out = float(np.abs(emb - source.pre).max()), float(np.abs(normed - source.out).max())
    d64 = float(np.abs(emb - source.pre64).max())
    g32, g64, t_noise = _rel(grad, source.grad), _rel(grad, source.grad64), _rel(source.grad, source.grad64)
    print(f"\nfacenet float32 ({source.what}): |emb| max {np.abs(source.pre).max():.3f}; emb max abs diff vs torch "
          f"{d_pre:.2e} (vs torch64 {d64:.2e}; torch32 vs torch64 {np.abs(source.pre - source.pre64).max():.2e}), "
          f"L2-normalised vs facenet-pytorch forward {d_out:.2e}; d emb[{COMPONENT}]/d pixels rel L2 "
          f"vs torch32 {g32:.2e}, vs torch64 {g64:.2e} (torch32 vs torch64 {t_noise:.2e})")
    assert d_pre <= EMB_ATOL and d_out <= EMB_ATOL
    # ReLU / max-pool kinks: float32 rounding flips a few units in any runtime; no farther from float64 than torch32, up to 3x.
    assert g64 <= max(GRAD_RTOL, 3 * t_noise)


def test_gradient_parity_float64(source):
    """float64 (jax x64, params folded in float64) vs torch float64 autograd: the 1e-3 bound with no kink flips."""
    apply, params = source.jax_apply()
    flat64 = conv.to_flat(source.units(), dtype=np.float64)
    with jax.enable_x64(True):
        params64 = refilled(params, flat64)
        emb, grad = source.emb_and_grad(apply, params64, source.images[PAIR].astype(np.float64))
    assert grad.dtype == np.float64
    g_rel, d_emb = _rel(grad, source.grad64[PAIR]), float(np.abs(emb - source.pre64[PAIR]).max())
    print(f"\nfacenet float64: emb max abs diff vs torch64 {d_emb:.2e}, grad rel L2 {g_rel:.2e}")
    assert g_rel <= GRAD_RTOL and d_emb <= 1e-9 * max(1.0, float(np.abs(source.pre64).max()))



def test_taps_shapes_and_perturbation(source):
    apply, params = source.jax_apply()
    f = core.jit(apply)
    x = jnp.asarray(source.images[:2])
    emb, acts = f(params, x)
    assert emb.shape == (2, 512) and sorted(acts) == sorted(inception_resnet_v1.TAPS)  # jit returns dicts key-sorted
    shapes = {"conv2d_1a": (79, 32), "conv2d_2a": (77, 32), "conv2d_2b": (77, 64), "conv2d_3b": (38, 80),
              "conv2d_4a": (36, 192), "conv2d_4b": (17, 256), "repeat_1": (17, 256), "mixed_6a": (8, 896),
              "repeat_2": (8, 896), "mixed_7a": (3, 1792), "repeat_3": (3, 1792), "block8": (3, 1792)}
    for tap, a in acts.items():
        side, c = shapes[tap if tap in shapes else tap.rsplit("_", 1)[0]]
        assert a.shape == (2, side, side, c), tap
    emb2, acts2 = f(params, x, {"repeat_2_4": jnp.ones_like(acts["repeat_2_4"])})
    np.testing.assert_allclose(acts2["repeat_2_3"], acts["repeat_2_3"])
    assert float(jnp.abs(emb2 - emb).max()) > 1e-3
    with pytest.raises(ValueError, match="unknown taps"):
        f(params, x, {"last_bn": jnp.zeros((2, 512))})
    with pytest.raises(ValueError, match="160"):
        f(params, jnp.zeros((1, 112, 112, 3)))


def test_strict_state_dict(source):
    sd = source.net.state_dict()
    arrays = {k: v.numpy() for k, v in sd.items()}
    ref = conv.to_flat(source.units())

    def units(d):  # the key checks, without a torch.save / torch.load round trip of 23M parameters
        return conv.units_from_state_dict(d, "w.pt")

    # facenet-pytorch's pretrained files carry the training classifier: accepted and dropped.
    got = conv.to_flat(units(dict(arrays, **{"logits.weight": np.zeros((8631, 512)), "logits.bias": np.zeros(8631)})))
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    with pytest.raises(ValueError, match=r"classifier keys .*logits\.weight"):
        units(dict(arrays, **{"logits.weight": np.zeros((10, 128)), "logits.bias": np.zeros(10)}))
    with pytest.raises(ValueError, match=r"w\.pt: missing key 'repeat_2\.7\.branch1\.2\.bn\.running_var'"):
        units({k: v for k, v in arrays.items() if k != "repeat_2.7.branch1.2.bn.running_var"})
    with pytest.raises(ValueError, match=r"unexpected key 'repeat_3\.5\.conv2d\.weight'"):
        units(dict(arrays, **{"repeat_3.5.conv2d.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match=r"key 'mixed_7a\.branch1\.1\.conv\.weight' has shape \(256, 256, 1, 1\)"):
        units(dict(arrays, **{"mixed_7a.branch1.1.conv.weight": np.zeros((256, 256, 1, 1))}))
    # Through the file reader: DataParallel prefixes and a {"state_dict": ...} wrapper are accepted.
    got = conv.convert({"w.pth": _pt_bytes({"state_dict": {f"module.{k}": v for k, v in sd.items()}})}, "w.pth", "facenet")
    assert sorted(got) == sorted(ref) and all(np.array_equal(got[k], ref[k]) for k in ref)
    data = source.pt.read_bytes()
    with pytest.raises(ValueError, match=r"cut\.pt: not a PyTorch state dict"):
        conv.convert({"cut.pt": data[: len(data) // 2]}, "cut.pt", "facenet")
    with pytest.raises(ValueError, match=r"w\.onnx: unknown weight format"):
        conv.convert({"w.onnx": data}, "w.onnx", "facenet")
    with pytest.raises(ValueError, match="weights_only"):
        conv.convert({"x.pt": _pt_bytes({"x": object()})}, "x.pt", "facenet")
    with pytest.raises(ParamsError, match="missing key 'repeat_1/2/branch2/1/kernel'"):
        contract.from_flat(source.ctor, {k: v for k, v in ref.items() if k != "repeat_1/2/branch2/1/kernel"}, "t")


def test_cli_converts_a_user_file(source, tmp_path, monkeypatch):
    from converters import __main__ as cli

    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "ckpt"))
    assert cli.main(["facenet", "--source", str(source.pt)]) == 0
    flat = checkpoint.restore(tmp_path / "ckpt" / "facenet")
    want = conv.to_flat(source.units())
    assert sorted(flat) == sorted(want) and all(np.array_equal(flat[k], want[k]) for k in want)
