"""PyTorch state dicts: read with ``weights_only=True``, checked key by key against a model's shapes.

The reader returns ``{key: array}`` (floating tensors as float64), strips a
``module.`` prefix saved from DataParallel and unwraps ``{"state_dict": ...}``
/ ``{"model": ...}`` checkpoints; anything but tensors is an error.
"""

from __future__ import annotations

import io
from collections.abc import Collection, Mapping

import numpy as np


def read_state_dict(data: bytes, source: str) -> dict[str, np.ndarray]:
    """A .pth state dict as {key: float64 array}; tensors only (``weights_only=True``)."""
    import torch

    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for foreign or unsafe pickles
        raise ValueError(f"{source}: not a PyTorch state dict loadable with weights_only=True ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model"):  # {"state_dict": {...}} checkpoints
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    keys = list(obj)
    if keys and all(str(k).startswith("module.") for k in keys):  # saved from DataParallel
        obj = {str(k)[len("module."):]: v for k, v in obj.items()}
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"{source}: key {k!r} is a {type(v).__name__}, not a tensor")
        out[str(k)] = v.detach().to(torch.float64).numpy() if v.is_floating_point() else v.numpy()
    return out


def first_of(keys: list[str]) -> str:
    """``'k' (+n more)``: the first offending key of an error message."""
    return repr(keys[0]) + (f" (+{len(keys) - 1} more)" if len(keys) > 1 else "")


def batch_norms(keys: Collection[str]) -> set[str]:
    """Module paths of the batch norms among state-dict keys (those with a ``running_var``)."""
    return {k.rsplit(".", 1)[0] for k in keys if k.endswith(".running_var")}


def check_keys(sd: Mapping[str, np.ndarray], want: Mapping[str, tuple[int, ...]], source: str, model: str,
               *, also_allowed: Collection[str] = ()) -> None:
    """Every key of ``want`` present with its shape, nothing else but ``num_batches_tracked`` and ``also_allowed``."""
    optional = {f"{b}.num_batches_tracked" for b in batch_norms(want)}
    missing = [k for k in want if k not in sd]
    extra = [k for k in sd if k not in want and k not in optional and k not in also_allowed]
    if missing:
        raise ValueError(f"{source}: missing key {first_of(missing)} for {model}")
    if extra:
        raise ValueError(f"{source}: unexpected key {first_of(extra)} for {model}")
    for k, shape in want.items():
        if tuple(sd[k].shape) != shape:
            raise ValueError(f"{source}: key {k!r} has shape {tuple(sd[k].shape)}, {model} expects {shape}")


def bn_params(sd: Mapping[str, np.ndarray], module: str, eps: float) -> tuple:
    """(gamma, beta, mean, var, eps) of the batch norm at ``module`` (a state dict does not store eps)."""
    return (sd[f"{module}.weight"], sd[f"{module}.bias"], sd[f"{module}.running_mean"], sd[f"{module}.running_var"], eps)
