"""dlib serialization reader: primitive encodings and failure modes."""

import math

import numpy as np
import pytest

from converters.dlib_dnn import DlibFormatError, DlibStream
from converters.dlib_resnet import convert, dlib_architecture, mapping_table


def s(data: bytes) -> DlibStream:
    return DlibStream(bytes(data), "mem.dat")


@pytest.mark.parametrize(
    "raw, value",
    [
        (b"\x01\x00", 0),
        (b"\x01\x05", 5),
        (b"\x81\x05", -5),
        (b"\x02\x2c\x01", 300),
        (b"\x82\x2c\x01", -300),
        (b"\x08" + (2**63 - 1).to_bytes(8, "little"), 2**63 - 1),
    ],
)
def test_int_encoding(raw, value):
    # dlib pack_int: control byte (sign bit 0x80, size in low nibble), little-endian magnitude.
    st = s(raw)
    assert st.int() == value
    assert st.at_end()


def test_float_encoding_mantissa_exponent():
    # 0.04 as dlib writes it: mantissa 10737418 (3 bytes), exponent -28.
    st = s(b"\x03\x0a\xd7\xa3\x81\x1c")
    assert st.float() == pytest.approx(10737418 * 2.0**-28, rel=0, abs=0)
    # Special exponents 32000/32001/32002 = +inf/-inf/nan.
    assert s(b"\x01\x00\x02\x00\x7d").float() == math.inf
    assert s(b"\x01\x00\x02\x01\x7d").float() == -math.inf
    assert math.isnan(s(b"\x01\x00\x02\x02\x7d").float())


def test_tensor_and_string():
    payload = np.arange(6, dtype="<f4").tobytes()
    st = s(b"\x01\x02" + b"\x01\x01\x01\x02\x01\x03\x01\x01" + payload + b"\x01\x03abc\x31")
    t = st.tensor()
    assert t.shape == (1, 2, 3, 1) and t.dtype == np.float32
    np.testing.assert_array_equal(t.reshape(-1), np.arange(6))
    assert st.string() == "abc"
    assert st.bool() is True


def test_bad_bytes_name_file_and_offset():
    with pytest.raises(DlibFormatError, match=r"mem\.dat: bad integer control byte 0x00 .*at byte 0"):
        s(b"\x00").int()
    with pytest.raises(DlibFormatError, match=r"mem\.dat: truncated file"):
        s(b"\x02\x01").int()
    with pytest.raises(DlibFormatError, match="bad bool"):
        s(b"x").bool()


def test_mapping_table_covers_every_param():
    from leam_jax.models import REGISTRY, abstract_flat

    target = abstract_flat(lambda: REGISTRY["dlib_resnet"].ctor(__import__("flax").nnx.Rngs(0)))
    keys = [row[2] for row in mapping_table()]
    assert len(keys) == len(set(keys))
    assert set(keys) == set(target)
    # 29 conv layers + 1 fc, as in dlib's ResNet-29; 14 add_prev layers.
    arch = dlib_architecture()
    assert sum(k == "con" for k, _ in arch) == 29
    assert sum(k == "add_prev" for k, _ in arch) == 14


def test_real_file_parses_exactly(dlib_dat):
    data, name = dlib_dat
    flat = convert(data, name)
    assert flat["stem_conv/kernel"].shape == (7, 7, 3, 32)
    assert flat["fc/kernel"].shape == (256, 128)
    assert all(np.isfinite(v).all() for v in flat.values())


@pytest.mark.parametrize("cut", [10, 1000, 5_000_000, -1])
def test_truncated_file_is_an_error(dlib_dat, cut):
    data, _ = dlib_dat
    with pytest.raises(DlibFormatError, match=r"cut\.dat: .*(truncated|expected|bad)"):
        convert(data[:cut], "cut.dat")


def test_altered_or_extended_file_is_an_error(dlib_dat):
    data, _ = dlib_dat
    altered = bytearray(data)
    i = data.index(b"con_4")
    altered[i : i + 5] = b"con_9"
    with pytest.raises(DlibFormatError, match=r"bad\.dat: expected con_ record .* found 'con_9'"):
        convert(bytes(altered), "bad.dat")
    with pytest.raises(DlibFormatError, match="trailing bytes"):
        convert(data + b"\x00", "long.dat")
    # A layer with the wrong geometry is caught by the architecture check.
    i = data.index(b"max_pool_2") + len(b"max_pool_2")
    wrong = bytearray(data)
    assert wrong[i : i + 2] == b"\x01\x03"  # nr = 3
    wrong[i + 1] = 2
    with pytest.raises(DlibFormatError, match="max_pool: nr=2 but the architecture says 3"):
        convert(bytes(wrong), "geom.dat")
