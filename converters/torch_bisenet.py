"""Face-parsing BiSeNet weights (.pth state dict, e.g. ``79999_iter.pth``) -> Flax params of BiSeNet.

No registry package ships these weights (``SOURCES`` is empty); users convert
their own file: ``python -m converters bisenet --source 79999_iter.pth``.

The state dict is read with ``torch.load(..., weights_only=True)`` (tensors
only; a ``module.`` prefix from DataParallel is stripped) and checked key by
key against :func:`torch_shapes`: a missing, unexpected or mis-shaped key is
an error naming it. ``num_batches_tracked`` entries are optional and unused.

Every batch norm follows a bias-free convolution directly (zero padding comes
before the convolution), so each one is folded into that convolution, in
float64, then cast to float32: kernel ``w * gamma / sqrt(var + eps)``, bias
``beta - mean * gamma / sqrt(var + eps)`` (``converters.folding``). :func:`units`
lists each convolution with the BN folded into it and its Flax module path;
the transform rule is one: ``oihw_to_hwio`` (``converters.mapping``).

The auxiliary heads ``conv_out16`` and ``conv_out32`` (training-time deep
supervision, not used for parsing) are accepted, shape-checked and dropped;
a checkpoint without them converts as well, but a partial one is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from converters.folding import fold
from converters.mapping import TRANSFORMS
from converters.torch_state_dict import batch_norms, bn_params, first_of, read_state_dict
from leam_jax.models import bisenet as model

SOURCES: dict = {}  # user-supplied weights only
BN_EPS = 1e-5  # PyTorch's BatchNorm2d default, which the face-parsing BiSeNet uses; a state dict does not store it
AUX_HEADS = ("conv_out16", "conv_out32")
AUX_MID = 64  # conv_out16 / conv_out32: 3x3 conv 128 -> 64 + BN + ReLU, 1x1 conv 64 -> 19


class Unit:
    """One convolution (torch module path) with the BN folded into it, and its Flax module path."""

    def __init__(self, flax: str, conv: str, bn: str | None, cin: int, cout: int, k: int):
        self.flax, self.conv, self.bn, self.cin, self.cout, self.k = flax, conv, bn, cin, cout, k

    def __repr__(self) -> str:
        return f"Unit({self.conv} + {self.bn} -> {self.flax})"


def _cbr(torch_path: str, cin: int, cout: int, k: int) -> Unit:
    """A ConvBNReLU module: ``{path}.conv`` + ``{path}.bn`` -> Flax ``{path}/conv``."""
    flax = torch_path.replace(".", "/") + "/conv"
    return Unit(flax, f"{torch_path}.conv", f"{torch_path}.bn", cin, cout, k)


def _head(prefix: str, cin: int, mid: int) -> list[Unit]:
    return [_cbr(f"{prefix}.conv", cin, mid, 3),
            Unit(f"{prefix}/conv_out", f"{prefix}.conv_out", None, mid, model.NUM_CLASSES, 1)]


def units(*, aux: bool = False) -> list[Unit]:
    """The main network's convolutions, input side first (``aux``: the two auxiliary heads instead)."""
    if aux:
        return [u for h in AUX_HEADS for u in _head(h, model.CONTEXT_CHANNELS, AUX_MID)]
    r, fr = "cp.resnet", "cp/resnet"
    w = model.RESNET_WIDTHS
    rows = [Unit(f"{fr}/conv1", f"{r}.conv1", f"{r}.bn1", 3, w[0], 7)]
    cin = w[0]
    for s, width in enumerate(w):
        for i in range(model.BLOCKS_PER_STAGE):
            p, fp = f"{r}.layer{s + 1}.{i}", f"{fr}/layer{s + 1}/{i}"
            rows += [Unit(f"{fp}/conv1", f"{p}.conv1", f"{p}.bn1", cin, width, 3),
                     Unit(f"{fp}/conv2", f"{p}.conv2", f"{p}.bn2", width, width, 3)]
            if cin != width or (i == 0 and s > 0):
                rows.append(Unit(f"{fp}/downsample", f"{p}.downsample.0", f"{p}.downsample.1", cin, width, 1))
            cin = width
    c = model.CONTEXT_CHANNELS
    for name, cin_arm in (("arm16", w[2]), ("arm32", w[3])):
        rows += [_cbr(f"cp.{name}.conv", cin_arm, c, 3),
                 Unit(f"cp/{name}/conv_atten", f"cp.{name}.conv_atten", f"cp.{name}.bn_atten", c, c, 1)]
    rows += [_cbr("cp.conv_head32", c, c, 3), _cbr("cp.conv_head16", c, c, 3), _cbr("cp.conv_avg", w[3], c, 1)]
    f = model.FUSION_CHANNELS
    rows += [_cbr("ffm.convblk", 2 * c, f, 1),
             Unit("ffm/conv1", "ffm.conv1", None, f, f // 4, 1),
             Unit("ffm/conv2", "ffm.conv2", None, f // 4, f, 1)]
    rows += _head("conv_out", f, f)
    return rows


def _unit_shapes(u: Unit) -> dict[str, tuple[int, ...]]:
    shapes = {f"{u.conv}.weight": (u.cout, u.cin, u.k, u.k)}
    if u.bn is not None:
        for p in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{u.bn}.{p}"] = (u.cout,)
    return shapes


def torch_shapes(*, aux: bool = False) -> dict[str, tuple[int, ...]]:
    """Every required state-dict key and its shape (``aux``: the auxiliary heads' keys instead)."""
    out: dict[str, tuple[int, ...]] = {}
    for u in units(aux=aux):
        out.update(_unit_shapes(u))
    return out


def check_state_dict(sd: Mapping[str, np.ndarray], source: str) -> None:
    """Strict: every main-network key present with its shape; auxiliary heads whole or absent; nothing else."""
    want, aux = torch_shapes(), torch_shapes(aux=True)
    optional = {f"{b}.num_batches_tracked" for b in batch_norms([*want, *aux])}
    missing = [k for k in want if k not in sd]
    if missing:
        raise ValueError(f"{source}: missing key {first_of(missing)} for the face-parsing BiSeNet")
    extra = [k for k in sd if k not in want and k not in aux and k not in optional]
    if extra:
        raise ValueError(f"{source}: unexpected key {first_of(extra)} for the face-parsing BiSeNet")
    for head in AUX_HEADS:
        keys = [k for k in aux if k.startswith(f"{head}.")]
        absent = [k for k in keys if k not in sd]
        if absent and len(absent) != len(keys):
            raise ValueError(f"{source}: auxiliary head {head} is incomplete: missing key {first_of(absent)}")
    for k, shape in {**want, **aux}.items():
        if k in sd and tuple(sd[k].shape) != shape:
            raise ValueError(f"{source}: key {k!r} has shape {tuple(sd[k].shape)}, the face-parsing BiSeNet expects {shape}")


def to_flat(sd: Mapping[str, np.ndarray], dtype=np.float32) -> dict[str, np.ndarray]:
    """A checked state dict -> flat Flax params {'cp/resnet/conv1/kernel': HWIO, ...}, BNs folded.

    The auxiliary heads (``conv_out16``, ``conv_out32``) are dropped here: the
    Flax model has the main head only.
    """
    flat: dict[str, np.ndarray] = {}
    for u in units():
        folded = fold(sd[f"{u.conv}.weight"], None, None if u.bn is None else bn_params(sd, u.bn, BN_EPS))
        flat[f"{u.flax}/kernel"] = TRANSFORMS["oihw_to_hwio"](folded["weight"]).astype(dtype)
        if u.bn is not None:  # bias-free convs without a BN stay bias-free
            flat[f"{u.flax}/bias"] = folded["bias"].astype(dtype)
    return flat


def convert(files: dict[str, bytes], source: str, name: str = "bisenet") -> dict[str, np.ndarray]:
    """One user ``.pth``/``.pt`` state dict -> flat Flax params of ``leam_jax.models.bisenet.BiSeNet``."""
    if name != "bisenet":
        raise ValueError(f"{name}: this converter makes 'bisenet' only")
    if len(files) != 1:
        raise ValueError(f"{source}: expected one .pth/.pt file, got {sorted(files)}")
    ((fname, data),) = files.items()
    suffix = Path(fname).suffix.lower()
    if suffix not in (".pth", ".pt"):
        raise ValueError(f"{source}: unknown weight format {suffix!r}; expected a PyTorch state dict (.pth or .pt)")
    sd = read_state_dict(data, source)
    check_state_dict(sd, source)
    return to_flat(sd)
