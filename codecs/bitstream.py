"""The per-image bitstream container: the only module that knows its byte layout.

Layout, version 1 (all integers little-endian)::

    offset  size  field
    0       4     magic b"LZIP"
    4       1     format version (1)
    5       1     number of strings S
    6       16    model id (first 16 bytes of the model's SHA-256, see checkpoint.py)
    22      4     image height (original, before padding)
    26      4     image width
    30      2     hyper-latent height
    32      2     hyper-latent width
    34      4     payload length P in bytes
    38      4     CRC-32 of bytes 0..37 (the header)
    42      P     payload: S times (u32 length, string bytes); string 0 codes y, string 1 codes z
    42+P    4     CRC-32 of the payload

Two checksums let decoding say *what* is wrong: a damaged header (so the lengths cannot be trusted), a
stream cut short, bytes appended after the end, or a damaged payload. Every failure is a subclass of
:class:`BitstreamError` that names the problem. The checksums cannot tell a forged or mis-paired string
from a real one; the decoder catches those by re-encoding what it decoded (:class:`EntropyStreamError`).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

MAGIC = b"LZIP"
VERSION = 1
MODEL_ID_BYTES = 16
_HEADER = struct.Struct("<4sBB16sIIHHI")
_CRC = struct.Struct("<I")
HEADER_BYTES = _HEADER.size + _CRC.size


class BitstreamError(ValueError):
    """Base class: the bytes are not a valid latentzip bitstream for this codec."""


class NotABitstreamError(BitstreamError):
    """The bytes do not start with the latentzip magic."""


class UnsupportedVersionError(BitstreamError):
    """The stream was written by a newer (or unknown) container format version."""


class HeaderCorruptError(BitstreamError):
    """The header checksum does not match: some header byte was changed."""


class TruncatedStreamError(BitstreamError):
    """The stream is shorter than its header says."""


class TrailingDataError(BitstreamError):
    """The stream is longer than its header says: bytes were appended or two streams were joined."""


class ChecksumMismatchError(BitstreamError):
    """The payload checksum does not match: some payload byte was changed."""


class MalformedStreamError(BitstreamError):
    """Checksums pass but the payload structure is inconsistent (a hand-made or buggy stream)."""


class ModelMismatchError(BitstreamError):
    """The stream was encoded by a different model than the one asked to decode it."""


class EntropyStreamError(BitstreamError):
    """The container is intact but an entropy-coded string is not exactly the encoding of what it decodes to.

    Raised by the decoder (see ``entropy_coding.py``), not by :func:`unpack`: strings swapped between
    streams, forged with valid checksums, or decoded with parameters other than the encoder's.
    """


@dataclass(frozen=True)
class Bitstream:
    model_id: bytes
    height: int
    width: int
    latent_shape: tuple[int, int]
    strings: tuple[bytes, ...]


def pack(stream: Bitstream) -> bytes:
    if len(stream.model_id) != MODEL_ID_BYTES:
        raise ValueError(f"model id must be {MODEL_ID_BYTES} bytes, got {len(stream.model_id)}")
    payload = b"".join(_CRC.pack(len(s)) + bytes(s) for s in stream.strings)
    header = _HEADER.pack(
        MAGIC, VERSION, len(stream.strings), stream.model_id,
        stream.height, stream.width, *stream.latent_shape, len(payload),
    )
    return header + _CRC.pack(zlib.crc32(header)) + payload + _CRC.pack(zlib.crc32(payload))


def pack_batch(model_id: bytes, sizes: list[tuple[int, int]], compressed: dict) -> list[bytes]:
    """One container per image of a model's ``compress`` output (``{"strings": [y_strings, z_strings],
    "shape": (h, w)}``, one string per image in each list); ``sizes``: the images' true (height, width)."""
    return [pack(Bitstream(model_id, height, width, tuple(compressed["shape"]),
                           tuple(strings[i] for strings in compressed["strings"])))
            for i, (height, width) in enumerate(sizes)]


def unpack(data: bytes, expected_model_id: bytes | None = None) -> Bitstream:
    """Parse and verify ``data``; raise the specific :class:`BitstreamError` subclass on any problem."""
    data = bytes(data)
    if not data:
        raise NotABitstreamError("empty input: not a latentzip bitstream")
    if not MAGIC.startswith(data[: len(MAGIC)]):
        raise NotABitstreamError("not a latentzip bitstream (bad magic bytes)")
    if len(data) < HEADER_BYTES:
        raise TruncatedStreamError(f"stream truncated inside the header ({len(data)} of {HEADER_BYTES} bytes)")
    header = data[: _HEADER.size]
    (stored_header_crc,) = _CRC.unpack_from(data, _HEADER.size)
    if zlib.crc32(header) != stored_header_crc:
        raise HeaderCorruptError("bitstream header checksum mismatch: the header is corrupt")
    _, version, count, model_id, height, width, latent_h, latent_w, payload_len = _HEADER.unpack(header)
    if version != VERSION:
        raise UnsupportedVersionError(f"bitstream format version {version} is not supported (this is {VERSION})")
    expected_len = HEADER_BYTES + payload_len + _CRC.size
    if len(data) < expected_len:
        raise TruncatedStreamError(f"stream truncated: {len(data)} of {expected_len} bytes")
    if len(data) > expected_len:
        raise TrailingDataError(f"{len(data) - expected_len} unexpected bytes after the end of the stream")
    payload = data[HEADER_BYTES : HEADER_BYTES + payload_len]
    (stored_payload_crc,) = _CRC.unpack_from(data, HEADER_BYTES + payload_len)
    if zlib.crc32(payload) != stored_payload_crc:
        raise ChecksumMismatchError("bitstream payload checksum mismatch: the coded data is corrupt")
    if expected_model_id is not None and model_id != expected_model_id:
        raise ModelMismatchError(
            f"stream was encoded by model {model_id.hex()}, not by this model {expected_model_id.hex()}"
        )
    return Bitstream(model_id, height, width, (latent_h, latent_w), _split_strings(payload, count))


def _split_strings(payload: bytes, count: int) -> tuple[bytes, ...]:
    strings, pos = [], 0
    for _ in range(count):
        if pos + _CRC.size > len(payload):
            raise MalformedStreamError("payload ends inside a string length")
        (length,) = _CRC.unpack_from(payload, pos)
        pos += _CRC.size
        if pos + length > len(payload):
            raise MalformedStreamError("string length runs past the payload")
        strings.append(payload[pos : pos + length])
        pos += length
    if pos != len(payload):
        raise MalformedStreamError("payload has bytes after its last string")
    return tuple(strings)
