"""The bitstream container (latentzip.codecs.bitstream) and how LearnedCodec reports damaged streams."""

from __future__ import annotations

import struct
import zlib

import pytest

from latentzip.codecs import bitstream
from latentzip.codecs.bitstream import (
    HEADER_BYTES,
    MAGIC,
    MODEL_ID_BYTES,
    VERSION,
    Bitstream,
    BitstreamError,
    ChecksumMismatchError,
    EntropyStreamError,
    HeaderCorruptError,
    MalformedStreamError,
    ModelMismatchError,
    NotABitstreamError,
    TrailingDataError,
    TruncatedStreamError,
    UnsupportedVersionError,
    pack,
    unpack,
)
from latentzip.codecs.learned import LearnedCodec

HEADER = struct.Struct("<4sBB16sIIHHI")  # the documented version-1 layout, written out independently
ERRORS = (
    NotABitstreamError, UnsupportedVersionError, HeaderCorruptError, TruncatedStreamError,
    TrailingDataError, ChecksumMismatchError, MalformedStreamError, ModelMismatchError, EntropyStreamError,
)


@pytest.fixture(scope="module")
def codec(tiny_codec_dir) -> LearnedCodec:
    return LearnedCodec.from_path(tiny_codec_dir)


@pytest.fixture(scope="module")
def other_codec(tiny_codec_factory) -> LearnedCodec:
    return LearnedCodec.from_path(tiny_codec_factory(seed=1))


@pytest.fixture(scope="module")
def image(_sample_image_cache):
    return _sample_image_cache[2]  # 93x70: not a multiple of the stride


@pytest.fixture(scope="module")
def stream(codec, image) -> bytes:
    return codec.encode(image)


def _raises_exactly(error_class, function, *args, **kwargs) -> BitstreamError:
    with pytest.raises(BitstreamError) as info:
        function(*args, **kwargs)
    assert type(info.value) is error_class, f"expected {error_class.__name__}, got {info.value!r}"
    assert isinstance(info.value, ValueError)
    assert str(info.value)
    return info.value


def _flip(data: bytes, position: int) -> bytes:
    damaged = bytearray(data)
    damaged[position] ^= 0xFF
    return bytes(damaged)


def _with_header(data: bytes, **fields) -> bytes:
    """``data`` with header fields replaced and a correct header CRC (as a newer writer would produce)."""
    names = ("magic", "version", "count", "model_id", "height", "width", "latent_h", "latent_w", "payload_len")
    values = dict(zip(names, HEADER.unpack_from(data)))
    values.update(fields)
    header = HEADER.pack(*(values[name] for name in names))
    return header + struct.pack("<I", zlib.crc32(header)) + data[HEADER_BYTES:]


# -- the container on its own ------------------------------------------------------------------------


def test_error_classes_are_bitstream_errors():
    for error_class in ERRORS:
        assert issubclass(error_class, BitstreamError)
    assert issubclass(BitstreamError, ValueError)
    assert len(set(ERRORS)) == len(ERRORS)


def test_pack_unpack_round_trip():
    original = Bitstream(bytes(range(16)), 70, 93, (2, 2), (b"y" * 33, b"", b"\x00zz"))
    data = pack(original)
    assert data[:4] == MAGIC and data[4] == VERSION
    assert len(data) == HEADER_BYTES + sum(4 + len(s) for s in original.strings) + 4
    assert unpack(data) == original
    assert unpack(data, expected_model_id=bytes(range(16))) == original
    assert unpack(bytearray(data)) == original and unpack(memoryview(data)) == original


def test_header_layout_is_the_documented_one():
    original = Bitstream(b"\xab" * 16, 70000, 93, (1095, 2), (b"abc", b"de"))
    data = pack(original)
    assert HEADER_BYTES == 42
    assert HEADER.unpack_from(data) == (MAGIC, 1, 2, b"\xab" * 16, 70000, 93, 1095, 2, 4 + 3 + 4 + 2)
    assert struct.unpack_from("<I", data, 38)[0] == zlib.crc32(data[:38])
    assert data[42:46] == struct.pack("<I", 3) and data[46:49] == b"abc"
    assert struct.unpack_from("<I", data, len(data) - 4)[0] == zlib.crc32(data[42:-4])


def test_pack_rejects_a_wrong_model_id_length():
    with pytest.raises(ValueError):
        pack(Bitstream(b"short", 1, 1, (1, 1), (b"", b"")))


def test_unpack_checks_the_model_id():
    data = pack(Bitstream(b"\x01" * MODEL_ID_BYTES, 64, 64, (1, 1), (b"a", b"b")))
    _raises_exactly(ModelMismatchError, unpack, data, expected_model_id=b"\x02" * MODEL_ID_BYTES)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack("<I", 5) + b"abc",  # string runs past the payload
        struct.pack("<I", 1) + b"a" + b"\x00\x00",  # ends inside the second length
        struct.pack("<I", 1) + b"a" + struct.pack("<I", 0) + b"extra",  # bytes after the last string
    ],
    ids=["string-too-long", "cut-length", "extra-bytes"],
)
def test_consistent_checksums_but_broken_payload_structure(payload):
    header = HEADER.pack(MAGIC, VERSION, 2, b"\x00" * 16, 64, 64, 1, 1, len(payload))
    data = header + struct.pack("<I", zlib.crc32(header)) + payload + struct.pack("<I", zlib.crc32(payload))
    _raises_exactly(MalformedStreamError, unpack, data)


# -- damaged streams from a real encoder ---------------------------------------------------------------


def test_stream_decodes(codec, stream, image):
    assert codec.decode(stream).size == image.size
    parsed = unpack(stream, expected_model_id=codec.model_id)
    assert (parsed.height, parsed.width) == (image.height, image.width)
    assert parsed.latent_shape == (2, 2) and len(parsed.strings) == 2


def test_stream_of_another_model(codec, other_codec, image, stream):
    assert other_codec.model_id != codec.model_id
    _raises_exactly(ModelMismatchError, other_codec.decode, stream)
    _raises_exactly(ModelMismatchError, codec.decode, other_codec.encode(image))


@pytest.mark.parametrize("where", ["header-1", "header-4", "header-10", "header-41", "header-end",
                                   "payload-1", "payload-middle", "payload-crc", "last-byte"])
def test_truncated_stream(codec, stream, where):
    cut = {
        "header-1": 1, "header-4": 4, "header-10": 10, "header-41": HEADER_BYTES - 1, "header-end": HEADER_BYTES,
        "payload-1": HEADER_BYTES + 1, "payload-middle": (HEADER_BYTES + len(stream)) // 2,
        "payload-crc": len(stream) - 3, "last-byte": len(stream) - 1,
    }[where]
    assert 0 < cut < len(stream)
    _raises_exactly(TruncatedStreamError, codec.decode, stream[:cut])
    _raises_exactly(TruncatedStreamError, unpack, stream[:cut])


def test_flipped_payload_byte(codec, stream):
    payload_positions = range(HEADER_BYTES, len(stream) - 4)
    for position in (*payload_positions[:: max(1, len(payload_positions) // 16)], payload_positions[-1]):
        _raises_exactly(ChecksumMismatchError, codec.decode, _flip(stream, position))
    for position in range(len(stream) - 4, len(stream)):  # the payload CRC itself
        _raises_exactly(ChecksumMismatchError, codec.decode, _flip(stream, position))


def test_flipped_header_byte(codec, stream):
    for position in range(len(MAGIC), HEADER_BYTES):  # every header field and the header CRC
        _raises_exactly(HeaderCorruptError, codec.decode, _flip(stream, position))


def test_flipped_magic_byte(codec, stream):
    for position in range(len(MAGIC)):
        _raises_exactly(NotABitstreamError, codec.decode, _flip(stream, position))


@pytest.mark.parametrize("extra", [b"\x00", b"garbage", None], ids=["one-byte", "garbage", "second-stream"])
def test_appended_bytes(codec, stream, extra):
    _raises_exactly(TrailingDataError, codec.decode, stream + (stream if extra is None else extra))


@pytest.mark.parametrize(
    "data",
    [b"", b"X", b"LZIQ" + b"\x00" * 60, b"\xff\xd8\xff\xe0" + b"\x00" * 100, b"\x89PNG\r\n\x1a\n" + b"\x00" * 50],
    ids=["empty", "one-byte", "wrong-magic", "jpeg", "png"],
)
def test_not_a_bitstream(codec, data):
    _raises_exactly(NotABitstreamError, codec.decode, data)
    _raises_exactly(NotABitstreamError, unpack, data)


def test_jpeg_file_is_not_a_bitstream(codec, image):
    from latentzip.codecs.classical import ClassicalCodec

    _raises_exactly(NotABitstreamError, codec.decode, ClassicalCodec("jpeg").encode(image))


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(codec, stream, version):
    repacked = _with_header(stream, version=version)
    assert repacked[4] == version
    _raises_exactly(UnsupportedVersionError, codec.decode, repacked)


def test_repacking_the_header_unchanged_is_accepted(codec, stream):
    # Guards the helper used above: with the same fields it reproduces the stream byte for byte.
    assert _with_header(stream) == stream


@pytest.mark.parametrize(
    "fields",
    [{"latent_h": 3}, {"latent_w": 1}, {"height": 200}, {"width": 64}, {"height": 1000, "width": 1000}],
    ids=["latent-h", "latent-w", "height", "width", "both"],
)
def test_latent_shape_inconsistent_with_image_size(codec, stream, fields):
    repacked = _with_header(stream, **fields)
    unpack(repacked, expected_model_id=codec.model_id)  # the container itself is valid
    _raises_exactly(MalformedStreamError, codec.decode, repacked)


def test_wrong_number_of_strings(codec, stream, image):
    parsed = unpack(stream)
    for strings in (parsed.strings[:1], (*parsed.strings, b"")):
        data = pack(Bitstream(codec.model_id, image.height, image.width, parsed.latent_shape, strings))
        _raises_exactly(MalformedStreamError, codec.decode, data)


def test_forged_strings_behind_valid_checksums(codec, stream, image):
    # Checksums recomputed by a forger: only the entropy decoder's re-encoding check can tell.
    parsed = unpack(stream)
    y, z = parsed.strings
    forged_y = bytes([y[0] ^ 0x40]) + y[1:]
    for strings in ((z, y), (forged_y, z), (y, bytes(len(z))), (y[:-4], z), (y + b"\x00" * 4, z), (b"", z)):
        data = pack(Bitstream(codec.model_id, image.height, image.width, parsed.latent_shape, strings))
        _raises_exactly(EntropyStreamError, codec.decode, data)


def test_batch_decode_reports_the_damaged_stream(codec, stream):
    with pytest.raises(TruncatedStreamError):
        codec.decode_batch([stream, stream[:-1]])


def test_module_exports_one_layout():
    assert bitstream.HEADER_BYTES == HEADER.size + 4
    assert bitstream.MODEL_ID_BYTES == 16
