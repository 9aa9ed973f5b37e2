"""IResNet (insightface iresnet) parity: Flax vs PyTorch and ONNX Runtime, from .pth and .onnx.

The source network is ``tests/references/torch_iresnet_reference.py`` with random
weights, batch-norm running statistics and PReLU slopes (eval mode). Each
depth is saved as a state dict and exported with ``torch.onnx.export``
(opset 17, the TorchScript exporter, which folds conv + BN), converted with
``converters.torch_iresnet`` and compared on random 112x112 RGB inputs:
embeddings within 1e-4 absolute of PyTorch and of ONNX Runtime, gradients of
one embedding component w.r.t. the input pixels within 1e-3 relative (L2) of
torch autograd. Depths 18 and 50 run by default; 34 and 100 are ``slow``.
"""

from __future__ import annotations

import copy
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from converters import torch_iresnet as conv
from leam_jax import adapters, core
from leam_jax.models import contract, iresnet
from leam_jax.models.params import ParamsError
from leam_jax.weights import checkpoint
from tests.references.torch_randomize import EmbGrad, refilled

torch = pytest.importorskip("torch", reason="PyTorch (the IResNet source runtime) not installed")
pytestmark = pytest.mark.torch

EMB_ATOL = 1e-4
GRAD_RTOL = 1e-3
COMPONENT = 7  # the embedding component whose input gradient is compared
# IResNet-18 in the default suite; 34/50/100 (the same converter and mapping table, more blocks) with -m slow.
DEPTHS = [18, *(pytest.param(d, marks=pytest.mark.slow) for d in (34, 50, 100))]


def _images(n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 112, 112, 3)).astype(np.float32)


def _torch_input(images: np.ndarray):
    return (torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5


def _export_onnx(net, path) -> None:
    x = _torch_input(_images(1))
    torch.onnx.export(net, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["embedding"], dynamic_axes={"input": {0: "batch"}, "embedding": {0: "batch"}})


def _torch_emb_grad(net, images: np.ndarray, dtype):
    pixels = torch.from_numpy(images).to(dtype).requires_grad_(True)
    emb = net((pixels.permute(0, 3, 1, 2) / 255.0 - 0.5) / 0.5)
    emb[:, COMPONENT].sum().backward()
    return emb.detach().numpy(), pixels.grad.numpy()


class Source:
    """One random-weight PyTorch IResNet with its .pth and .onnx files and torch outputs (float32 and float64)."""

    def __init__(self, depth: int, tmp):
        from tests.references import torch_iresnet_reference as ref

        self.depth = depth
        self.net = ref.randomize(ref.iresnet(depth), seed=depth)
        self.pth = tmp / f"iresnet{depth}.pth"
        torch.save(self.net.state_dict(), self.pth)
        self.onnx = tmp / f"iresnet{depth}.onnx"
        _export_onnx(self.net, self.onnx)
        self.images = _images()
        self.emb, self.grad = _torch_emb_grad(self.net, self.images, torch.float32)
        self.emb64, self.grad64 = _torch_emb_grad(copy.deepcopy(self.net).double(), self.images, torch.float64)
        self.emb_and_grad = EmbGrad(COMPONENT)

    def flat(self, fmt: str) -> dict[str, np.ndarray]:
        path = self.pth if fmt == "pth" else self.onnx
        return conv.convert({path.name: path.read_bytes()}, str(path), f"iresnet{self.depth}")

    def ctor(self):
        return iresnet.IResNet(self.depth, rngs=nnx.Rngs(0))

    def jax_apply(self, fmt: str):
        return contract.from_flat(self.ctor, self.flat(fmt), fmt)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    cache: dict[int, Source] = {}

    def get(depth: int) -> Source:
        if depth not in cache:
            cache[depth] = Source(depth, tmp_path_factory.mktemp(f"iresnet{depth}"))
        return cache[depth]

    yield get
    cache.clear()


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("depth", DEPTHS)
def test_parity_pth_and_onnx(source, depth):
    """float32: embeddings within 1e-4 of PyTorch and ONNX Runtime; input gradients close to torch autograd.

    The network is piecewise linear (PReLU), so its input gradient jumps where a
    pre-activation crosses zero; float32 rounding flips a few such units
    between any two runtimes (PyTorch float32 vs float64 differ by as much as
    JAX does). The float32 gradient is therefore held to PyTorch float32's own
    distance from the float64 gradient; the 1e-3 bound is checked in float64 below.
    """
    import onnxruntime as ort

    src = source(depth)
    sess = ort.InferenceSession(str(src.onnx), providers=["CPUExecutionProvider"])
    ort_emb = sess.run(None, {"input": _torch_input(src.images).numpy()})[0]
    scale = float(np.abs(src.emb).max())
    print(f"\niresnet{depth}: |emb| max {scale:.3f}; ORT vs torch {np.abs(ort_emb - src.emb).max():.2e}; "
          f"torch32 vs torch64: emb {np.abs(src.emb - src.emb64).max():.2e}, grad rel L2 {_rel(src.grad, src.grad64):.2e}")
    apply, _ = src.jax_apply("pth")
    for fmt in ("pth", "onnx"):
        params = src.jax_apply(fmt)[1]
        emb, grad = src.emb_and_grad(apply, params, src.images)
        d_torch = float(np.abs(emb - src.emb).max())
        d_ort = float(np.abs(emb - ort_emb).max())
        err = np.abs(grad - src.grad) / np.abs(src.grad).max()
        p999 = float(np.quantile(err, 0.999))
        print(f"iresnet{depth} from .{fmt}: emb max abs diff vs torch {d_torch:.2e}, vs ORT {d_ort:.2e} "
              f"(rel {d_torch / scale:.1e}); d emb[{COMPONENT}]/d pixels rel L2 vs torch32 {_rel(grad, src.grad):.2e}, "
              f"vs torch64 {_rel(grad, src.grad64):.2e}, p99.9 |err|/max|g| {p999:.2e}, max {err.max():.2e}")
        assert d_torch <= EMB_ATOL and d_ort <= EMB_ATOL
        # No farther from the exact (float64) gradient than PyTorch float32 itself, up to a factor 3.
        assert _rel(grad, src.grad64) <= max(GRAD_RTOL, 3 * _rel(src.grad, src.grad64))


# All depths slow (suite time): float32 gradient parity of IResNet-18 against PyTorch float64 stays in the default suite.
@pytest.mark.parametrize("depth", [pytest.param(d, marks=pytest.mark.slow) for d in (18, 50, 34, 100)])
def test_gradient_parity_float64(source, depth):
    """float64 (jax x64, params folded in float64 from the .pth) vs torch float64 autograd: no kink flips."""
    src = source(depth)
    sd = conv.read_state_dict(src.pth.read_bytes(), str(src.pth))
    flat64 = conv.to_flat(conv.units_from_state_dict(sd, depth, str(src.pth)), depth, dtype=np.float64)
    with jax.enable_x64(True):
        apply, params = adapters.from_nnx(src.ctor())
        params = refilled(params, flat64)
        emb, grad = src.emb_and_grad(apply, params, src.images.astype(np.float64))
    assert grad.dtype == np.float64
    g_rel = _rel(grad, src.grad64)
    d_emb = float(np.abs(emb - src.emb64).max())
    print(f"\niresnet{depth} float64: emb max abs diff {d_emb:.2e}, grad rel L2 {g_rel:.2e}")
    assert g_rel <= GRAD_RTOL and d_emb <= 1e-9 * max(1.0, float(np.abs(src.emb64).max()))



def test_onnx_and_pth_give_the_same_params(source):
    src = source(18)
    a, b = src.flat("pth"), src.flat("onnx")
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_onnx_export_without_constant_folding(source, tmp_path):
    """Unfolded export: a BatchNormalization after every conv and Unsqueeze'd PRelu slopes."""
    import onnx

    src = source(18)
    path = tmp_path / "unfolded.onnx"
    torch.onnx.export(src.net, (_torch_input(_images(1)),), str(path), opset_version=17, dynamo=False,
                      do_constant_folding=False)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert ops.count("BatchNormalization") == 31 and "Unsqueeze" in ops
    flat = conv.convert({path.name: path.read_bytes()}, str(path), "iresnet18")
    apply, _ = src.jax_apply("pth")
    _, params = contract.from_flat(src.ctor, flat, str(path))
    emb, grad = src.emb_and_grad(apply, params, src.images)
    d = float(np.abs(emb - src.emb).max())
    print(f"\niresnet18 from unfolded .onnx: emb max abs diff vs torch {d:.2e}, grad rel L2 vs torch64 "
          f"{_rel(grad, src.grad64):.2e}")
    assert d <= EMB_ATOL and _rel(grad, src.grad64) <= max(GRAD_RTOL, 3 * _rel(src.grad, src.grad64))


def test_taps_shapes_and_perturbation(source):
    src = source(18)
    apply, params = src.jax_apply("pth")
    x = jnp.asarray(src.images)
    emb, acts = apply(params, x)
    assert emb.shape == (2, 512) and tuple(acts) == iresnet.TAPS[18]
    sizes = {"stem": 112, "layer1": 56, "layer2": 28, "layer3": 14, "layer4": 7}
    for tap, a in acts.items():
        assert a.shape[:3] == (2, sizes[tap.split("_")[0]], sizes[tap.split("_")[0]]), tap
    zero = {t: jnp.zeros_like(a) for t, a in acts.items()}
    np.testing.assert_allclose(apply(params, x, zero)[0], emb, atol=1e-5)
    bump = {"layer3_1": jnp.ones_like(acts["layer3_1"])}
    emb2, acts2 = apply(params, x, bump)
    np.testing.assert_allclose(acts2["layer3_0"], acts["layer3_0"])
    assert float(jnp.abs(emb2 - emb).max()) > 1e-3
    with pytest.raises(ValueError, match="112"):
        apply(params, jnp.zeros((1, 100, 100, 3)))


def _pth_bytes(sd) -> bytes:
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


def test_strict_state_dict(source):
    sd = source(18).net.state_dict()

    def convert(d, name="iresnet18"):
        return conv.convert({"w.pth": _pth_bytes(d)}, "w.pth", name)

    missing = {k: v for k, v in sd.items() if k != "layer2.1.bn1.running_var"}
    with pytest.raises(ValueError, match=r"missing key 'layer2\.1\.bn1\.running_var'"):
        convert(missing)
    extra = dict(sd, **{"layer5.0.conv1.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match=r"unexpected key 'layer5\.0\.conv1\.weight'"):
        convert(extra)
    bad = dict(sd, **{"layer3.0.prelu.weight": torch.zeros(255)})
    with pytest.raises(ValueError, match=r"'layer3\.0\.prelu\.weight' has shape \(255,\)"):
        convert(bad)
    with pytest.raises(ValueError, match=r"missing key 'layer1\.2\.bn1\.weight'"):  # depth 34 has 3 blocks in layer1
        convert(sd, "iresnet34")
    # DataParallel prefixes and a {"state_dict": ...} wrapper are accepted.
    wrapped = {"state_dict": {f"module.{k}": v for k, v in sd.items()}}
    ref = convert(sd)
    got = convert(wrapped)
    assert all(np.array_equal(ref[k], got[k]) for k in ref)
    with pytest.raises(ValueError, match="weights_only"):
        conv.convert({"w.pth": _pth_bytes({"x": object()})}, "w.pth", "iresnet18")


def test_strict_onnx_and_flax_side(source):
    src = source(18)
    data = src.onnx.read_bytes()
    with pytest.raises(ValueError, match=r"\(layer1\.2\.conv1\): weight shape \(128, 64, 3, 3\)"):
        conv.convert({"m.onnx": data}, "m.onnx", "iresnet34")
    with pytest.raises(ValueError, match="unknown weight format"):
        conv.convert({"m.bin": data}, "m.bin", "iresnet18")
    flat = src.flat("pth")
    ctor = lambda: iresnet.IResNet(18, rngs=nnx.Rngs(0))  # noqa: E731
    with pytest.raises(ParamsError, match="missing key 'blocks/3/prelu/alpha'"):
        contract.from_flat(ctor, {k: v for k, v in flat.items() if k != "blocks/3/prelu/alpha"}, "t")
    with pytest.raises(ParamsError, match="'fc/bias' has shape"):
        contract.from_flat(ctor, dict(flat, **{"fc/bias": np.zeros(3, np.float32)}), "t")


def test_unmapped_onnx_initializer_is_an_error(source):
    import onnx

    m = onnx.load(str(source(18).onnx))
    m.graph.initializer.append(onnx.numpy_helper.from_array(np.zeros(4, np.float32), "stray.weight"))
    with pytest.raises(ValueError, match="unmapped initializer 'stray.weight'"):
        conv.convert({"m.onnx": m.SerializeToString()}, "m.onnx", "iresnet18")


def test_leam_self_maps(source):
    src = source(18)
    apply, params = src.jax_apply("onnx")
    maps = core.leam_maps(apply, params, jnp.asarray(src.images), target="self")
    overall = np.asarray(maps.overall)
    assert overall.shape == (2, 112, 112) and np.asarray(maps.per_layer).shape == (2, 9, 112, 112)
    assert np.isfinite(overall).all() and np.isfinite(np.asarray(maps.per_layer)).all()
    np.testing.assert_allclose(overall.sum((1, 2)), 1.0, atol=1e-4)
    assert not np.asarray(maps.overall_flags).any()


def test_cli_converts_a_user_file(source, tmp_path, monkeypatch):
    from leam_jax.weights.convert import ensure_converted

    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "ckpt"))
    src = source(18)
    path = ensure_converted("iresnet18", source_file=str(src.pth), quiet=True)
    flat = checkpoint.restore(path)
    want = src.flat("pth")
    assert sorted(flat) == sorted(want) and all(np.array_equal(flat[k], want[k]) for k in want)
