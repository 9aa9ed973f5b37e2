"""facenet-pytorch InceptionResnetV1 state dict (.pt/.pth) -> Flax params of InceptionResnetV1.

No registry package ships these weights (``SOURCES`` is empty); users convert
their own file, e.g. facenet-pytorch's VGGFace2 or CASIA-WebFace state dict:
``python -m converters facenet --source 20180402-114759-vggface2.pt``.
The file is read with ``torch.load(weights_only=True)`` (tensors only).

The state-dict keys are facenet-pytorch's module names, checked strictly key
by key against :func:`torch_shapes` (``num_batches_tracked`` optional):

* every BasicConv2d ``P`` (``conv2d_1a`` ... ``conv2d_4b``,
  ``repeat_1.N.branch0``, ``repeat_1.N.branch1.M``, ``mixed_6a.branch0``,
  ``mixed_7a.branch2.M``, ...): ``P.conv.weight`` and ``P.bn.*``, folded
  (eval-mode batch norm, eps 0.001, float64) into one conv with a bias;
* every residual block's ``conv2d`` (1x1 with bias, no batch norm), as is;
* ``last_linear.weight`` with ``last_bn.*`` folded in (eps 0.001).

The classifier ``logits.weight`` / ``logits.bias`` ([N, 512], [N]: the
training identities, e.g. N = 8631 for VGGFace2) is present in facenet-pytorch's
pretrained files; it is not part of the embedding network and is dropped
(its shapes are still checked). The Flax key of a unit is its PyTorch module
path with ``/`` for ``.`` (``repeat_2/3/branch1/2/kernel``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converters.folding import fold
from converters.mapping import TRANSFORMS
from converters.torch_state_dict import bn_params, check_keys, read_state_dict
from leam_jax.models import inception_resnet_v1 as model

SOURCES: dict = {}  # user-supplied weights only
NAMES = ("facenet",)
BN_EPS = 1e-3  # facenet-pytorch's BatchNorm eps (the TensorFlow original's); a state dict does not store it
OPTIONAL_HEAD = ("logits.weight", "logits.bias")  # the training classifier: checked, not converted

# --- the units, input side first ------------------------------------------------


def _block_convs(p: str, kind: str) -> list[tuple[str, int, int, tuple[int, int], bool]]:
    """(module path, cin, cout, (kh, kw), has_bn) of one residual block ``p``."""
    if kind == "block35":
        c, b = 256, 32
        rows = [(f"{p}.branch0", c, b, (1, 1)), (f"{p}.branch1.0", c, b, (1, 1)), (f"{p}.branch1.1", b, b, (3, 3)),
                (f"{p}.branch2.0", c, b, (1, 1)), (f"{p}.branch2.1", b, b, (3, 3)), (f"{p}.branch2.2", b, b, (3, 3))]
        cat = 3 * b
    elif kind == "block17":
        c, b = 896, 128
        rows = [(f"{p}.branch0", c, b, (1, 1)), (f"{p}.branch1.0", c, b, (1, 1)), (f"{p}.branch1.1", b, b, (1, 7)),
                (f"{p}.branch1.2", b, b, (7, 1))]
        cat = 2 * b
    else:  # block8
        c, b = 1792, 192
        rows = [(f"{p}.branch0", c, b, (1, 1)), (f"{p}.branch1.0", c, b, (1, 1)), (f"{p}.branch1.1", b, b, (1, 3)),
                (f"{p}.branch1.2", b, b, (3, 1))]
        cat = 2 * b
    return [(*r, True) for r in rows] + [(f"{p}.conv2d", cat, c, (1, 1), False)]


def convs() -> list[tuple[str, int, int, tuple[int, int], bool]]:
    """Every conv of InceptionResnetV1: (module path, cin, cout, (kh, kw), has_bn), forward order."""
    rows = [("conv2d_1a", 3, 32, (3, 3)), ("conv2d_2a", 32, 32, (3, 3)), ("conv2d_2b", 32, 64, (3, 3)),
            ("conv2d_3b", 64, 80, (1, 1)), ("conv2d_4a", 80, 192, (3, 3)), ("conv2d_4b", 192, 256, (3, 3))]
    out = [(*r, True) for r in rows]
    for i in range(model.REPEATS["repeat_1"]):
        out += _block_convs(f"repeat_1.{i}", "block35")
    out += [(p, ci, co, k, True) for p, ci, co, k in (
        ("mixed_6a.branch0", 256, 384, (3, 3)), ("mixed_6a.branch1.0", 256, 192, (1, 1)),
        ("mixed_6a.branch1.1", 192, 192, (3, 3)), ("mixed_6a.branch1.2", 192, 256, (3, 3)))]
    for i in range(model.REPEATS["repeat_2"]):
        out += _block_convs(f"repeat_2.{i}", "block17")
    out += [(p, ci, co, k, True) for p, ci, co, k in (
        ("mixed_7a.branch0.0", 896, 256, (1, 1)), ("mixed_7a.branch0.1", 256, 384, (3, 3)),
        ("mixed_7a.branch1.0", 896, 256, (1, 1)), ("mixed_7a.branch1.1", 256, 256, (3, 3)),
        ("mixed_7a.branch2.0", 896, 256, (1, 1)), ("mixed_7a.branch2.1", 256, 256, (3, 3)),
        ("mixed_7a.branch2.2", 256, 256, (3, 3)))]
    for i in range(model.REPEATS["repeat_3"]):
        out += _block_convs(f"repeat_3.{i}", "block8")
    out += _block_convs("block8", "block8")
    return out


def torch_shapes() -> dict[str, tuple[int, ...]]:
    """Every required state-dict key of facenet-pytorch's InceptionResnetV1 and its shape."""
    shapes: dict[str, tuple[int, ...]] = {}

    def bn(name: str, c: int) -> None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{p}"] = (c,)

    for p, cin, cout, (kh, kw), has_bn in convs():
        if has_bn:
            shapes[f"{p}.conv.weight"] = (cout, cin, kh, kw)
            bn(f"{p}.bn", cout)
        else:
            shapes[f"{p}.weight"] = (cout, cin, kh, kw)
            shapes[f"{p}.bias"] = (cout,)
    shapes["last_linear.weight"] = (model.EMBEDDING_DIM, 1792)
    bn("last_bn", model.EMBEDDING_DIM)
    return shapes


# --- unit -> Flax parameter -----------------------------------------------------

def mapping_table() -> list[tuple[str, str, str, str]]:
    """Rows (unit, unit param, flax key, transform), input side first."""
    rows = []
    for p, *_ in convs():
        f = p.replace(".", "/")
        rows += [(p, "weight", f"{f}/kernel", "oihw_to_hwio"), (p, "bias", f"{f}/bias", "identity")]
    rows += [("last_linear", "weight", "last_linear/kernel", "linear_oi_to_io"),
             ("last_linear", "bias", "last_linear/bias", "identity")]
    return rows


# --- reader: PyTorch state dict (converters.torch_state_dict) ---------------------


def units_from_state_dict(sd: Mapping[str, np.ndarray], source: str) -> dict[str, dict[str, np.ndarray]]:
    """Strictly check the state dict against ``torch_shapes`` and fold it into units."""
    check_keys(sd, torch_shapes(), source, "facenet-pytorch InceptionResnetV1", also_allowed=OPTIONAL_HEAD)
    if any(k in sd for k in OPTIONAL_HEAD):  # the classifier: dropped, but it must be a well-formed Linear(512, N)
        w, b = (sd.get(k) for k in OPTIONAL_HEAD)
        if w is None or b is None or w.ndim != 2 or w.shape[1] != model.EMBEDDING_DIM or b.shape != (w.shape[0],):
            got = {k: tuple(sd[k].shape) for k in OPTIONAL_HEAD if k in sd}
            raise ValueError(f"{source}: classifier keys {got} are not a Linear(512, N) (logits.weight [N, 512], "
                             "logits.bias [N])")

    def bn(m: str) -> tuple:
        return bn_params(sd, m, BN_EPS)

    out: dict[str, dict[str, np.ndarray]] = {}
    for p, *_, has_bn in convs():
        out[p] = fold(sd[f"{p}.conv.weight"], None, bn(f"{p}.bn")) if has_bn else fold(sd[f"{p}.weight"], sd[f"{p}.bias"], None)
    out["last_linear"] = fold(sd["last_linear.weight"], None, bn("last_bn"))
    return out


# --- entry point ----------------------------------------------------------------


def to_flat(unit_arrays: Mapping[str, Mapping[str, np.ndarray]], dtype=np.float32) -> dict[str, np.ndarray]:
    """Units -> flat Flax params {'a/b/c': array} through ``mapping_table`` (float32; float64 for parity checks)."""
    return {key: TRANSFORMS[rule](np.asarray(unit_arrays[unit][param])).astype(dtype)
            for unit, param, key, rule in mapping_table()}


def convert(files: dict[str, bytes], source: str, name: str = "facenet") -> dict[str, np.ndarray]:
    """One user ``.pt``/``.pth`` state dict -> flat Flax params of ``InceptionResnetV1``."""
    if name not in NAMES:
        raise ValueError(f"{name}: facenet_pytorch converts {list(NAMES)}")
    if len(files) != 1:
        raise ValueError(f"{source}: expected one .pt/.pth file, got {sorted(files)}")
    ((fname, data),) = files.items()
    if Path(fname).suffix.lower() not in (".pt", ".pth"):
        raise ValueError(f"{source}: unknown weight format {Path(fname).suffix!r}; {name} converts a .pt/.pth state dict")
    return to_flat(units_from_state_dict(read_state_dict(data, source), source))
