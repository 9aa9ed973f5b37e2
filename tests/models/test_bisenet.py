"""Face-parsing BiSeNet: Flax vs PyTorch from a .pth state dict, strict loading, the analysis-frame hook.

The source network is ``tests/references/torch_bisenet_reference.py`` (the standard
module names, so its ``state_dict()`` has the keys of ``79999_iter.pth``) with
random weights and random batch-norm running statistics, in eval mode; its
main head is balanced (``balance_head``) so the argmax varies across an image.
The state dict is saved to a temporary .pth and converted with
``converters.torch_bisenet``. Logits are compared on noise and on real faces
(the dlib_johns chips resized to 256 as analysis-frame stand-ins; those tests
skip when ../shared/faces is absent): max abs difference <= 1e-4 of the torch
logits' max magnitude, argmax agreement >= 99.9% of pixels. One 512 pass
checks the analysis-frame path of ``leam_jax.face.parsing`` (256 -> 512
bilinear -> parse -> 2x2 mean -> argmax) against the same steps in PyTorch.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest

from leam_jax import core
from leam_jax.face import alignment, parsing, regions
from leam_jax.models import bisenet
from leam_jax.models.params import ParamsError, flatten

REL_TOL = 1e-4  # max |JAX - torch| / max |torch logits|
AGREE = 0.999  # argmax agreement, fraction of pixels


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch", reason="PyTorch (the BiSeNet source runtime) not installed")
    torch.set_num_threads(2)
    return torch


@pytest.fixture(scope="module")
def ref(torch):
    from tests.references import torch_bisenet_reference

    return torch_bisenet_reference


def _noise(n: int, size: int = 256, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def source(torch, ref, tmp_path_factory):
    """(torch net, .pth path, state dict as numpy, converted flat params, Flax params)."""
    from converters import torch_bisenet as conv

    net = ref.randomize(ref.BiSeNet(), seed=1)
    # Balance on a smooth synthetic image (independent of whether the faces are present).
    calib = cv2.GaussianBlur(_noise(1, seed=99)[0], (0, 0), 6)[None]
    ref.balance_head(net, ref.preprocess(calib))
    path = tmp_path_factory.mktemp("bisenet") / "79999_iter.pth"
    torch.save(net.state_dict(), path)
    flat = conv.convert({path.name: path.read_bytes()}, str(path))
    params = bisenet.params_from_flat(flat, str(path))
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    return net, path, sd, flat, params


@pytest.fixture(scope="module")
def face_frames(faces_dir):
    """Three dlib_johns chips (150) resized to 256, uint8 RGB [3, 256, 256, 3]."""
    from leam_jax.face import decode

    items = decode.list_people(faces_dir / "dlib_johns")
    picks = [items[0], items[len(items) // 2], items[-1]]
    return np.stack([cv2.resize(decode.read_aligned_chip(it.path, 150), (256, 256), interpolation=cv2.INTER_LINEAR)
                     for it in picks])


_apply_jit = core.jit(bisenet.apply)


def _compare(torch_logits: np.ndarray, jax_logits: np.ndarray, what: str) -> None:
    assert jax_logits.shape == torch_logits.shape
    scale = float(np.abs(torch_logits).max())
    d = float(np.abs(jax_logits - torch_logits).max())
    agree = float(np.mean(jax_logits.argmax(-1) == torch_logits.argmax(-1)))
    top = np.sort(torch_logits, -1)
    n_cls = len(np.unique(torch_logits.argmax(-1)))
    print(f"\n{what}: logits max |torch| {scale:.3f}; max abs diff {d:.2e} (rel {d / scale:.2e}); "
          f"argmax agreement {agree:.6f} ({int(round((1 - agree) * torch_logits[..., 0].size))} px differ of "
          f"{torch_logits[..., 0].size}); classes present {n_cls}; smallest top-2 margin {float((top[..., -1] - top[..., -2]).min()):.1e}")
    assert d <= REL_TOL * scale, f"{what}: max abs diff {d:.3e} > {REL_TOL} x {scale:.3f}"
    assert agree >= AGREE


def _torch_main(torch, ref, net, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(ref.preprocess(images))[0].permute(0, 2, 3, 1).numpy()


# --- parity -------------------------------------------------------------------------


@pytest.mark.torch
def test_logits_parity_noise_256(torch, ref, source):
    net, _, _, _, params = source
    x = _noise(2, seed=3)
    _compare(_torch_main(torch, ref, net, x), np.asarray(_apply_jit(params, x)), "noise 256 x2")


@pytest.mark.torch
@pytest.mark.faces
def test_logits_parity_faces_256(torch, ref, source, face_frames):
    net, _, _, _, params = source
    x = np.concatenate([face_frames, _noise(1, seed=4)])
    _compare(_torch_main(torch, ref, net, x), np.asarray(_apply_jit(params, x)), "3 faces + noise, 256")


@pytest.mark.torch
@pytest.mark.faces
def test_analysis_frame_labels_512(torch, ref, source, face_frames):
    """The hook: 256 frame -> 512 (bilinear, half-pixel) -> logits -> 2x2 mean -> argmax, vs the same in PyTorch."""
    import torch.nn.functional as F

    net, _, _, _, params = source
    frames = np.concatenate([face_frames[:1], _noise(1, seed=5)])
    with torch.no_grad():
        x = torch.from_numpy(frames).to(torch.float32).permute(0, 3, 1, 2)
        x512 = F.interpolate(x, size=(512, 512), mode="bilinear", align_corners=False)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255
        out = net((x512 - mean) / std)[0]
        assert out.shape[2:] == (512, 512)
        want = F.avg_pool2d(out, 2).permute(0, 2, 3, 1).numpy()
    # The parser itself at 512, on the very same resized input.
    x512_nhwc = x512.permute(0, 2, 3, 1).numpy()
    _compare(out.permute(0, 2, 3, 1).numpy(), np.asarray(_apply_jit(params, x512_nhwc)), "1 face + noise, 512")
    got = np.asarray(parsing.frame_logits(params, frames))
    _compare(want, got, "analysis frame (1 face + noise), parsed at 512, logits at 256")
    labels = parsing.bisenet_labels(frames, params)
    assert labels.shape == (2, 256, 256) and labels.dtype == np.int32
    agree = float(np.mean(labels == want.argmax(-1)))
    print(f"bisenet_labels vs torch argmax: agreement {agree:.6f}")
    assert agree >= AGREE


# --- converter: strictness and bad files ------------------------------------------------


def _pth(torch, sd: dict) -> bytes:
    buf = io.BytesIO()
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}, buf)
    return buf.getvalue()


def _convert(torch, sd: dict, name: str = "x.pth"):
    from converters import torch_bisenet as conv

    return conv.convert({name: _pth(torch, sd)}, name)


@pytest.mark.torch
@pytest.mark.parametrize("change, key, message", [
    ("drop", "cp.arm16.bn_atten.running_var", "missing key 'cp.arm16.bn_atten.running_var'"),
    ("drop", "conv_out.conv_out.weight", "missing key 'conv_out.conv_out.weight'"),
    ("add", "cp.resnet.fc.weight", "unexpected key 'cp.resnet.fc.weight'"),
    ("reshape", "ffm.conv1.weight", "key 'ffm.conv1.weight' has shape (64, 256, 1, 2)"),
    ("reshape", "conv_out16.conv_out.weight", "key 'conv_out16.conv_out.weight' has shape"),
    ("drop", "conv_out32.conv.bn.weight", "auxiliary head conv_out32 is incomplete: missing key 'conv_out32.conv.bn.weight'"),
])
def test_strict_loading_names_the_key(torch, source, change, key, message):
    sd = dict(source[2])
    if change == "drop":
        del sd[key]
    elif change == "add":
        sd[key] = np.zeros((1000, 512), np.float32)
    else:
        shape = sd[key].shape
        sd[key] = np.zeros(shape[:-1] + (shape[-1] + 1,), np.float32)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _convert(torch, sd)


@pytest.mark.torch
def test_aux_heads_dropped_and_optional(torch, source):
    """The auxiliary heads do not change the converted params; a checkpoint without them converts the same."""
    _, _, sd, flat, _ = source
    assert any(k.startswith("conv_out16.") for k in sd)
    bare = {k: v for k, v in sd.items() if not k.startswith(("conv_out16.", "conv_out32."))}
    bare = {k: v for k, v in bare.items() if not k.endswith("num_batches_tracked")}  # optional too
    again = _convert(torch, bare)
    assert sorted(again) == sorted(flat) and all(np.array_equal(again[k], flat[k]) for k in flat)
    assert not any("conv_out16" in k or "conv_out32" in k for k in flat)
    # BN folded: 32 convs, biases only where a BN was folded in (all but ffm.conv1/conv2 and the 1x1 classifier).
    assert sum(k.endswith("/kernel") for k in flat) == 32 and sum(k.endswith("/bias") for k in flat) == 29


@pytest.mark.torch
def test_bad_files(torch, source, ref, tmp_path):
    from converters import torch_bisenet as conv

    with pytest.raises(ValueError, match=r"junk\.pth: not a PyTorch state dict loadable with weights_only=True"):
        conv.convert({"junk.pth": b"\x00not a checkpoint" * 10}, "junk.pth")
    with pytest.raises(ValueError, match=r"w\.onnx: unknown weight format '\.onnx'"):
        conv.convert({"w.onnx": b"x"}, "w.onnx")
    buf = io.BytesIO()
    torch.save(source[0], buf)  # a pickled module, not a state dict: weights_only refuses it
    with pytest.raises(ValueError, match="net.pth: not a PyTorch state dict loadable with weights_only=True"):
        conv.convert({"net.pth": buf.getvalue()}, "net.pth")
    buf = io.BytesIO()
    torch.save({"cp.resnet.conv1.weight": 3}, buf)
    with pytest.raises(ValueError, match="is a int, not a tensor"):
        conv.convert({"odd.pth": buf.getvalue()}, "odd.pth")
    with pytest.raises(ValueError, match="makes 'bisenet' only"):
        conv.convert({"x.pth": b""}, "x.pth", "iresnet50")


@pytest.mark.torch
def test_cli_convert_and_load(torch, source, tmp_path, monkeypatch, capsys):
    """``python -m converters bisenet --source FILE`` -> checkpoint -> ``load_apply("bisenet")`` gives the same params."""
    from converters import __main__ as cli
    from leam_jax.weights import load_apply

    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "ckpt"))
    _, path, _, flat, params = source
    assert cli.main(["bisenet", "--source", str(path)]) == 0
    apply, loaded = load_apply("bisenet")
    assert apply is bisenet.apply
    got = flatten(loaded.to_pure_dict())
    assert sorted(got) == sorted(flat) and all(np.array_equal(np.asarray(got[k]), flat[k]) for k in flat)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    assert cli.main(["bisenet", "--source", str(bad)]) == 2
    assert "bad.pth: not a PyTorch state dict" in capsys.readouterr().err


def test_load_without_checkpoint_says_how_to_convert(tmp_path, monkeypatch):
    from leam_jax.weights import load_apply, packages

    monkeypatch.setenv("LEAM_JAX_CHECKPOINTS", str(tmp_path / "empty"))
    with pytest.raises(packages.SourceError, match="python -m converters bisenet --source PATH"):
        load_apply("bisenet")


# --- helpers (torch oracles where cheap) ---------------------------------------------------


@pytest.mark.torch
@pytest.mark.parametrize("hin, win, hout, wout", [(7, 5, 13, 16), (16, 16, 32, 32), (4, 6, 4, 6), (1, 1, 8, 8)])
def test_interpolation_helpers_match_torch(torch, hin, win, hout, wout):
    import torch.nn.functional as F

    x = np.random.default_rng(0).normal(size=(2, hin, win, 3)).astype(np.float32)
    t = torch.from_numpy(x).permute(0, 3, 1, 2)
    near = F.interpolate(t, (hout, wout), mode="nearest").permute(0, 2, 3, 1).numpy()
    bil = F.interpolate(t, (hout, wout), mode="bilinear", align_corners=True).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(np.asarray(bisenet.upsample_nearest(x, (hout, wout))), near)
    np.testing.assert_allclose(np.asarray(bisenet.upsample_bilinear_align_corners(x, (hout, wout))), bil, atol=1e-6)


def test_bad_shapes():
    params = bisenet.random_params()
    with pytest.raises(ValueError, match=r"BiSeNet expects RGB images \[B, H, W, 3\]"):
        bisenet.apply(params, np.zeros((1, 64, 64, 1), np.uint8))
    with pytest.raises(ValueError, match=r"frames must be \[N, S, S, 3\]"):
        parsing.bisenet_labels(np.zeros((256, 256, 3), np.uint8), params)
    with pytest.raises(ValueError, match="labels19"):
        parsing.to_face_classes(np.full((4, 4), 19))
    flat = flatten(params.to_pure_dict())
    del flat["ffm/conv2/kernel"]
    with pytest.raises(ParamsError, match="missing key 'ffm/conv2/kernel'"):
        bisenet.params_from_flat(flat, "cut")
    flat["ffm/conv2/kernel"] = np.zeros((1, 1, 64, 255), np.float32)
    with pytest.raises(ParamsError, match=r"key 'ffm/conv2/kernel' has shape \(1, 1, 64, 255\)"):
        bisenet.params_from_flat(flat, "cut")


# --- the mapping to face_regions classes ---------------------------------------------------


def test_class_mapping():
    ids, fr = bisenet.CLASS_ID, regions.CLASS_ID
    assert len(bisenet.CLASSES) == bisenet.NUM_CLASSES == 19 and set(parsing.TO_FACE_CLASS) == set(bisenet.CLASSES)
    assert all(v is None or v in fr for v in parsing.TO_FACE_CLASS.values())
    s = alignment.ANALYSIS_SIZE
    lab = np.zeros((s, s), np.int32)
    lab[10:20, 10:20] = ids["nose"]
    lab[30:40, 30:40] = ids["hair"]
    lab[50:60, 50:60] = ids["eye_g"]
    lab[70:80, 60:70] = ids["u_lip"]
    lab[100:110, 90:100] = ids["l_eye"]  # image left = the subject's right, whatever the parser called it
    lab[100:110, 150:160] = ids["l_eye"]
    lab[80:90, 90:100] = ids["r_brow"]
    lab[80:90, 150:160] = ids["r_brow"]
    out = parsing.to_face_classes(lab)
    assert out.dtype == np.int32 and out.shape == (s, s)
    assert out[15, 15] == fr["nose"] and out[35, 35] == fr["background"] and out[55, 55] == fr["background"]
    assert out[75, 65] == fr["u_lip"] and out[200, 200] == fr["background"]
    assert out[105, 95] == fr["r_eye"] and out[105, 155] == fr["l_eye"]
    assert out[85, 95] == fr["r_brow"] and out[85, 155] == fr["l_brow"]
    kept = parsing.to_face_classes(lab, by_side=False)
    assert kept[105, 95] == fr["l_eye"] and kept[85, 155] == fr["r_brow"]
    # Batched labels map row by row the same way.
    np.testing.assert_array_equal(parsing.to_face_classes(np.stack([lab, lab])), np.stack([out, out]))
    # The midline: between the template's eye centres (x ~ 127.9 of 256).
    mid = alignment.analysis_template(s)[:2, 0].mean()
    assert 120 < mid < 136


# --- the pipeline hook -------------------------------------------------------------------


@pytest.mark.weights
@pytest.mark.faces
@pytest.mark.slow  # ~40 s on 2 busy cores, mostly loading and compiling the detector and mesh
def test_face_pipeline_parser_option(faces_dir):
    from leam_jax.face import decode
    from leam_jax.face.pipeline import FacePipeline

    photo = sorted((faces_dir / "wild_small" / "obama").iterdir())[0]
    image = decode.read_rgb(photo)
    params = bisenet.random_params(0)
    pipe = FacePipeline(parser="bisenet", parser_params=params)
    bis_face = pipe.faces(image, str(photo))[0]
    pipe.parser = "mesh"  # the default parser on the same (already compiled) pipeline
    mesh_face = pipe.faces(image, str(photo))[0]
    assert mesh_face.labels19 is None
    np.testing.assert_array_equal(mesh_face.labels, regions.label_map(mesh_face.frame_mesh, (256, 256)))
    np.testing.assert_array_equal(mesh_face.frame, bis_face.frame)  # the parser changes the labels only
    assert bis_face.labels19.shape == (256, 256) and bis_face.labels19.max() < 19
    np.testing.assert_array_equal(bis_face.labels19, parsing.bisenet_labels(bis_face.frame[None], params)[0])
    np.testing.assert_array_equal(bis_face.labels, parsing.to_face_classes(bis_face.labels19))
    with pytest.raises(ValueError, match="parser must be one of"):
        FacePipeline(parser="bogus")
