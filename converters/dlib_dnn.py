"""Reader for dlib's binary DNN serialization, without importing dlib.

The format is defined by dlib's ``serialize.h`` (integers, floats, strings,
bools), ``cuda/tensor.h`` (tensors) and ``dnn/core.h`` / ``dnn/layers.h`` /
``dnn/input.h`` / ``dnn/loss.h`` (layer records). A dlib network is a nested
template type, and the stream does not name the nesting, only each layer's
details: so the caller passes the architecture (top-down, as dlib prints it)
and every record is checked against it. Any mismatch, truncation or trailing
byte raises :class:`DlibFormatError` naming the file and the byte offset.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


class DlibFormatError(ValueError):
    """The file is not the dlib network we expect (names file and offset)."""


# Special exponents of dlib's float_details (float_details.h).
_IS_INF, _IS_NINF, _IS_NAN = 32000, 32001, 32002


class DlibStream:
    """Cursor over the bytes of one serialized dlib object."""

    def __init__(self, data: bytes, source: str):
        self.data = memoryview(data)
        self.pos = 0
        self.source = source

    def fail(self, what: str) -> DlibFormatError:
        return DlibFormatError(f"{self.source}: {what} (at byte {self.pos} of {len(self.data)})")

    def _take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise self.fail(f"truncated file: needed {n} bytes for {what}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "integer") -> int:
        """dlib pack_int: a control byte (bit 7 = sign, low 4 bits = size), then
        the magnitude little-endian. Signed and unsigned share the layout."""
        ctrl = self._take(1, what)[0]
        size = ctrl & 0x0F
        if size == 0 or size > 8 or ctrl & 0x70:
            self.pos -= 1
            raise self.fail(f"bad integer control byte 0x{ctrl:02x} for {what}")
        value = int.from_bytes(self._take(size, what), "little")
        return -value if ctrl & 0x80 else value

    def float(self, what: str = "float") -> float:
        """dlib float_details: value = mantissa * 2**exponent (int64, int16)."""
        mantissa = self.int(what + " mantissa")
        exponent = self.int(what + " exponent")
        if exponent == _IS_INF:
            return math.inf
        if exponent == _IS_NINF:
            return -math.inf
        if exponent == _IS_NAN:
            return math.nan
        return math.ldexp(mantissa, exponent)

    def bool(self, what: str = "bool") -> bool:
        ch = self._take(1, what)[0]
        if ch not in (ord("0"), ord("1")):
            self.pos -= 1
            raise self.fail(f"bad bool byte 0x{ch:02x} for {what}")
        return ch == ord("1")

    def string(self, what: str = "string") -> str:
        n = self.int(what + " length")
        if n > 1 << 16:
            raise self.fail(f"implausible string length {n} for {what}")
        raw = bytes(self._take(n, what))
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"non-ascii {what}: {raw[:32]!r}") from None

    def version_string(self, allowed: Sequence[str], what: str) -> str:
        start = self.pos
        v = self.string(what + " version")
        if v not in allowed:
            self.pos = start
            raise self.fail(f"expected {what} record {list(allowed)}, found {v!r}")
        return v

    def version_int(self, allowed: Sequence[int], what: str) -> int:
        start = self.pos
        v = self.int(what + " version")
        if v not in allowed:
            self.pos = start
            raise self.fail(f"expected {what} version in {list(allowed)}, found {v}")
        return v

    def tensor(self, what: str = "tensor") -> np.ndarray:
        """resizable_tensor v2: dims (n, k, nr, nc) then little-endian float32."""
        self.version_int([2], what)
        dims = tuple(self.int(what + " dim") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"negative dims {dims} for {what}")
        count = int(np.prod(dims, dtype=np.int64))
        raw = self._take(4 * count, what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias_tensor(self, what: str = "alias_tensor") -> tuple[int, int, int, int]:
        self.version_int([1], what)
        return tuple(self.int(what + " dim") for _ in range(4))  # type: ignore[return-value]

    def at_end(self) -> bool:
        return self.pos == len(self.data)


@dataclasses.dataclass
class Layer:
    """One parsed layer record; ``index`` is dlib's ``layer<index>``."""

    kind: str
    index: int
    attrs: dict[str, Any]
    params: dict[str, np.ndarray]


# ---------------------------------------------------------------------------
# Layer details, one reader per record type (dnn/layers.h, input.h, loss.h).


def _check_attrs(s: DlibStream, kind: str, found: dict, expected: dict) -> None:
    for key, want in expected.items():
        if key in found and found[key] != want:
            raise s.fail(f"{kind}: {key}={found[key]} but the architecture says {want}")


def _read_con(s: DlibStream, spec: dict) -> tuple[dict, dict]:
    version = s.version_string(["con_4", "con_5", "con_6"], "con_")
    params = s.tensor("con_ params")
    a = {
        "num_filters": s.int(),
        "nr": s.int(),
        "nc": s.int(),
        "stride_y": s.int(),
        "stride_x": s.int(),
        "padding_y": s.int(),
        "padding_x": s.int(),
    }
    filters = s.alias_tensor("con_ filters")
    biases = s.alias_tensor("con_ biases")
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        s.float(name)
    use_bias = True
    if version in ("con_5", "con_6"):
        use_bias = s.bool("use_bias")
    if version == "con_6" and s.bool("use_relu"):
        raise s.fail("con_ with a fused relu is not supported")
    _check_attrs(s, "con_", a, spec)
    n_f = int(np.prod(filters))
    n_b = int(np.prod(biases)) if use_bias else 0
    flat = params.reshape(-1)
    if flat.size != n_f + n_b:
        raise s.fail(f"con_ params hold {flat.size} values, filters+biases need {n_f + n_b}")
    out = {"kernel_oihw": flat[:n_f].reshape(filters)}
    if use_bias:
        out["bias"] = flat[n_f:].copy()
    return a, out


def _read_affine(s: DlibStream, spec: dict) -> tuple[dict, dict]:
    version = s.version_string(["affine_", "affine_2", "bn_con2"], "affine_")
    if version == "bn_con2":
        # A batch-norm record in place of affine: fold its running statistics
        # exactly as dlib's affine_(const bn_&) constructor does.
        params = s.tensor("bn params").reshape(-1)
        gamma = s.alias_tensor("bn gamma")
        s.alias_tensor("bn beta")
        for name in ("means", "invstds"):
            s.tensor("bn " + name)
        running_means = s.tensor("bn running_means").reshape(-1)
        running_vars = s.tensor("bn running_variances").reshape(-1)
        s.int("num_updates")
        s.int("running_stats_window_size")
        for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
            s.float(name)
        eps = s.float("eps")
        n = int(np.prod(gamma))
        g = params[:n] / np.sqrt(running_vars + np.float32(eps))
        b = params[n : 2 * n] - g * running_means
        return {"mode": 0}, {"gamma": g.astype(np.float32), "beta": b.astype(np.float32)}
    params = s.tensor("affine params").reshape(-1)
    gamma = s.alias_tensor("affine gamma")
    beta = s.alias_tensor("affine beta")
    mode = s.int("affine mode")
    if version == "affine_2" and s.bool("disabled"):
        raise s.fail("disabled affine_ layer is not supported")
    n_g, n_b = int(np.prod(gamma)), int(np.prod(beta))
    if params.size != n_g + n_b:
        raise s.fail(f"affine_ params hold {params.size} values, gamma+beta need {n_g + n_b}")
    return {"mode": mode}, {"gamma": params[:n_g].copy(), "beta": params[n_g:].copy()}


def _read_relu(s: DlibStream, spec: dict) -> tuple[dict, dict]:
    version = s.version_string(["relu_", "relu_2"], "relu_")
    if version == "relu_2" and s.bool("disabled"):
        raise s.fail("disabled relu_ layer is not supported")
    return {}, {}


def _read_pool(kind: str):
    def read(s: DlibStream, spec: dict) -> tuple[dict, dict]:
        s.version_string([kind + "_2"], kind + "_")
        a = {
            "nr": s.int(),
            "nc": s.int(),
            "stride_y": s.int(),
            "stride_x": s.int(),
            "padding_y": s.int(),
            "padding_x": s.int(),
        }
        _check_attrs(s, kind, a, spec)
        return a, {}

    return read


def _read_add_prev(s: DlibStream, spec: dict) -> tuple[dict, dict]:
    s.version_string(["add_prev_"], "add_prev_")
    return {}, {}


def _read_fc(s: DlibStream, spec: dict) -> tuple[dict, dict]:
    version = s.version_string(["fc_2", "fc_3"], "fc_")
    a = {"num_outputs": s.int(), "num_inputs": s.int()}
    params = s.tensor("fc params").reshape(-1)
    weights = s.alias_tensor("fc weights")
    biases = s.alias_tensor("fc biases")
    a["bias_mode"] = s.int("fc bias mode")  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
    for name in ("lr_mult", "wd_mult", "bias_lr_mult", "bias_wd_mult"):
        s.float(name)
    use_bias = a["bias_mode"] == 0
    if version == "fc_3":
        use_bias = s.bool("use_bias") and use_bias
    _check_attrs(s, "fc_", a, spec)
    n_w = int(np.prod(weights))
    n_b = int(np.prod(biases)) if use_bias else 0
    if params.size < n_w + n_b:
        raise s.fail(f"fc_ params hold {params.size} values, weights+biases need {n_w + n_b}")
    # dlib computes output = input @ W with W stored [num_inputs, num_outputs].
    out = {"weights_io": params[:n_w].reshape(a["num_inputs"], a["num_outputs"]).copy()}
    if use_bias:
        out["bias"] = params[n_w : n_w + n_b].copy()
    return a, out


_DETAIL_READERS = {
    "con": _read_con,
    "affine": _read_affine,
    "relu": _read_relu,
    "max_pool": _read_pool("max_pool"),
    "avg_pool": _read_pool("avg_pool"),
    "add_prev": _read_add_prev,
    "fc": _read_fc,
}


def _read_input_rgb_image_sized(s: DlibStream, spec: dict) -> dict:
    s.version_string(["input_rgb_image_sized"], "input layer")
    a = {
        "avg_red": s.float(),
        "avg_green": s.float(),
        "avg_blue": s.float(),
        "nr": s.int(),
        "nc": s.int(),
    }
    _check_attrs(s, "input_rgb_image_sized", a, spec)
    return a


def _read_loss_metric(s: DlibStream) -> dict:
    version = s.version_string(["loss_metric_", "loss_metric_2"], "loss layer")
    if version == "loss_metric_":
        return {"margin": 0.1, "distance_threshold": 0.75}
    return {"margin": s.float(), "distance_threshold": s.float()}


# ---------------------------------------------------------------------------
# Whole networks.


def read_network(data: bytes, arch: Sequence[tuple[str, dict]], source: str) -> tuple[dict, list[Layer]]:
    """Parse a serialized ``loss<layer<...<input>>>`` dlib network.

    Args:
      data: the file's bytes.
      arch: the architecture top-down, as dlib prints it: ``("loss_metric",
        {})`` first, then ``(kind, expected_attrs)`` per layer, where kind is
        one of the detail readers, ``"tag"`` or ``"skip"``; the last entry is
        the input layer ``("input_rgb_image_sized", attrs)``.
      source: file name used in error messages.

    Returns:
      (header, layers): header holds the loss and input attributes; layers are
      the computational layers bottom-up (input side first).
    """
    s = DlibStream(data, source)
    if not arch or arch[0][0] != "loss_metric" or arch[-1][0] != "input_rgb_image_sized":
        raise ValueError("arch must start with loss_metric and end with input_rgb_image_sized")
    s.version_int([1], "add_loss_layer")
    header: dict[str, Any] = {"loss": _read_loss_metric(s)}
    body = list(arch[1:-1])
    # Top-down: every wrapper writes its version, then its subnetwork first.
    versions = []
    for depth, (kind, _) in enumerate(body):
        if kind in ("tag", "skip"):
            versions.append(s.version_int([1], f"add_{kind}_layer (layer<{depth + 1}>)"))
        elif depth == len(body) - 1:
            versions.append(s.version_int([2, 3], f"add_layer over input (layer<{depth + 1}>)"))
        else:
            versions.append(s.version_int([1, 2], f"add_layer (layer<{depth + 1}>)"))
    header["input"] = _read_input_rgb_image_sized(s, arch[-1][1])
    layers: list[Layer] = []
    # Bottom-up: each add_layer's details and state, after its subnetwork.
    for depth in range(len(body) - 1, -1, -1):
        kind, spec = body[depth]
        if kind in ("tag", "skip"):
            continue
        if kind not in _DETAIL_READERS:
            raise ValueError(f"no reader for layer kind {kind!r}")
        attrs, params = _DETAIL_READERS[kind](s, spec)
        for flag in ("this_layer_setup_called", "gradient_input_is_stale", "output_disabled"):
            s.bool(flag)
        s.tensor("x_grad")
        s.tensor("cached_output")
        if depth == len(body) - 1:
            s.tensor("grad_final")
            if versions[depth] >= 3:
                s.int("sample_expansion_factor")
        elif versions[depth] == 2:
            s.tensor("params_grad")
        layers.append(Layer(kind=kind, index=depth + 1, attrs=attrs, params=params))
    if not s.at_end():
        raise s.fail(f"{len(s.data) - s.pos} unexpected trailing bytes")
    return header, layers
