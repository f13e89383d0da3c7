"""Fuzzing the decoder with damaged and forged bitstreams: every one is refused with a specific error.

Over a thousand variants of real streams from the tiny codecs (both architectures): bit flips, truncations,
appended bytes, splices of two streams, header bytes changed with and without a matching checksum, strings
swapped between streams, and entropy-coded bytes edited behind valid checksums. Each must raise one of the
specific :class:`BitstreamError` subclasses (never the base class, never another exception, never an
image) within a time bound.

Not generated, because no decoder could tell: a header whose image height or width is edited (with the
checksum recomputed) to another size with the same padded grid. That is a valid stream of a different crop;
the container has checksums, not signatures.
"""

from __future__ import annotations

import random
import struct
import time
import zlib
from collections import Counter

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck

from latentzip.codecs import bitstream
from latentzip.codecs.bitstream import (
    HEADER_BYTES,
    MAGIC,
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
)
from latentzip.codecs.entropy_coding import decode_symbols
from latentzip.codecs.images import padded_size
from latentzip.codecs.learned import LearnedCodec

SEED = 20240601
CASE_SECONDS = 2.0
HEADER = struct.Struct("<4sBB16sIIHHI")
FIELDS = ("magic", "version", "count", "model_id", "height", "width", "latent_h", "latent_w", "payload_len")
SPECIFIC = (NotABitstreamError, UnsupportedVersionError, HeaderCorruptError, TruncatedStreamError,
            TrailingDataError, ChecksumMismatchError, MalformedStreamError, ModelMismatchError, EntropyStreamError)
#: Cases per kind of damage (1050 in all).
PLAN = {"bit-flip": 250, "truncate": 150, "extend": 100, "splice": 100, "header-byte": 100,
        "header-field": 150, "string-swap": 75, "forged-payload": 125}


@pytest.fixture(scope="module")
def codecs(tiny_codec_factory) -> list[LearnedCodec]:
    return [LearnedCodec.from_path(tiny_codec_factory(seed=0, arch=arch))
            for arch in ("scale-hyperprior", "mean-scale-hyperprior")]


@pytest.fixture(scope="module")
def corpus(codecs, _sample_image_cache) -> list[list[bytes]]:
    """Per codec, streams of the five sample images plus two more sharing the (2, 2) latent grid."""
    images = [*_sample_image_cache, _sample_image_cache[1].transpose(0), _sample_image_cache[4].rotate(90)]
    return [codec.encode_batch(images) for codec in codecs]


def _fields(data: bytes) -> dict:
    return dict(zip(FIELDS, HEADER.unpack_from(data)))


def _repack_header(data: bytes, **changes) -> bytes:
    header = HEADER.pack(*({**_fields(data), **changes}[name] for name in FIELDS))
    return header + struct.pack("<I", zlib.crc32(header)) + data[HEADER_BYTES:]


def _header_field_edit(rng: random.Random, data: bytes, stride: int) -> bytes | None:
    fields = _fields(data)
    name = rng.choice(FIELDS)
    if name == "magic":
        value = bytes(rng.getrandbits(8) for _ in range(4))
    elif name == "model_id":
        value = bytes(rng.getrandbits(8) for _ in range(16))
    elif name in ("version", "count"):
        value = rng.randrange(256)
    elif name in ("height", "width"):
        value = rng.choice([rng.randrange(0, 400), rng.randrange(2**32)])
        height, width = (value, fields["width"]) if name == "height" else (fields["height"], value)
        if tuple(s // stride for s in padded_size(height, width, stride)) == (fields["latent_h"], fields["latent_w"]):
            return None  # same padded grid: a valid stream of another crop (see module docstring)
    elif name in ("latent_h", "latent_w"):
        value = rng.choice([rng.randrange(0, 8), rng.randrange(2**16)])
    else:
        value = rng.choice([rng.randrange(0, 2 * fields["payload_len"] + 2), rng.randrange(2**32)])
    return _repack_header(data, **{name: value})


def _forge_payload(rng: random.Random, data: bytes) -> bytes:
    """Change bytes inside one entropy-coded string and recompute the payload checksum."""
    parsed = bitstream.unpack(data)
    strings = [bytearray(s) for s in parsed.strings]
    target = strings[rng.randrange(len(strings))]
    for _ in range(rng.choice([1, 1, 2, 4])):
        target[rng.randrange(len(target))] ^= rng.randrange(1, 256)
    return bitstream.pack(bitstream.Bitstream(parsed.model_id, parsed.height, parsed.width, parsed.latent_shape,
                                              tuple(bytes(s) for s in strings)))


def _y_indexes(codec: LearnedCodec, z_string: bytes, shape) -> torch.Tensor:
    model = codec.model
    z_size = (1, model.entropy_bottleneck.channels, *shape)
    z = decode_symbols(model.entropy_bottleneck, [z_string], EntropyBottleneck._build_indexes(z_size))
    return model.entropy_parameters(z)[0].flatten().long()


def _still_valid(codec: LearnedCodec, stream, z_string: bytes) -> bool:
    """Whether ``stream``'s y string stays a valid encoding next to another z string.

    The rANS decoder follows the encoder's states exactly as long as, at every position, the interval
    (start, frequency) that coded the symbol is also an interval of the new table there; then it decodes
    (other) symbols and re-encoding gives the same bytes. Neighbouring small scales quantize to identical
    tables, so with an untrained prior this is common. If some interval is missing the states diverge and
    the string is damaged. (Means do not matter: they shift the decoded values, not the string.)
    """
    gaussian = codec.model.gaussian_conditional
    ours = _y_indexes(codec, stream.strings[1], stream.latent_shape)
    theirs = _y_indexes(codec, z_string, stream.latent_shape)
    symbols = decode_symbols(gaussian, [stream.strings[0]], ours[None]).flatten().long()
    cdf, length, offset = gaussian._quantized_cdf.long(), gaussian._cdf_length.long(), gaussian._offset.long()
    value = symbols - offset[ours]
    slot = torch.where((value < 0) | (value >= length[ours] - 2), length[ours] - 2, value)
    low = cdf[ours, slot]
    high = cdf[ours, slot + 1]
    rows = cdf[theirs]
    k = torch.arange(rows.shape[1] - 1)
    match = (rows[:, :-1] == low[:, None]) & (rows[:, 1:] == high[:, None]) & (k[None] < length[theirs, None] - 1)
    return bool(match.any(1).all())


def _swap_strings(rng: random.Random, data: bytes, pool: list[bytes], codec: LearnedCodec) -> bytes | None:
    """This stream's container around strings taken from other streams of the same latent grid."""
    parsed = bitstream.unpack(data)
    donors = [bitstream.unpack(d) for d in pool if d != data]
    donors = [d for d in donors if d.latent_shape == parsed.latent_shape] or donors
    donor = rng.choice(donors)
    y_from, z_from, swapped = rng.choice([(donor, parsed, False), (parsed, donor, False),
                                          (parsed, parsed, True), (donor, donor, True)])
    if swapped:
        y, z = y_from.strings[1], z_from.strings[0]
    else:
        y, z = y_from.strings[0], z_from.strings[1]
        if y_from.latent_shape == z_from.latent_shape:
            if _still_valid(codec, y_from, z):
                return None  # a valid stream of other latents, not a damaged one
    return bitstream.pack(bitstream.Bitstream(codec.model_id, parsed.height, parsed.width, parsed.latent_shape, (y, z)))


def _mutate(kind: str, rng: random.Random, data: bytes, pool: list[bytes], codec: LearnedCodec) -> bytes | None:
    if kind == "bit-flip":
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 1, 1, 2, 3])):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        return bytes(damaged)
    if kind == "truncate":
        return data[: rng.randrange(len(data))]
    if kind == "extend":
        return data + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64)))
    if kind == "splice":
        other = rng.choice([d for d in pool if d != data])
        return data[: rng.randrange(len(data) + 1)] + other[rng.randrange(len(other)):]
    if kind == "header-byte":
        damaged = bytearray(data)
        position = rng.randrange(len(MAGIC), HEADER_BYTES)
        damaged[position] = (damaged[position] + rng.randrange(1, 256)) % 256
        return bytes(damaged)
    if kind == "header-field":
        return _header_field_edit(rng, data, codec.model.stride)
    if kind == "string-swap":
        return _swap_strings(rng, data, pool, codec)
    return _forge_payload(rng, data)


def test_fuzzed_streams_are_refused_with_specific_errors(codecs, corpus):
    rng = random.Random(SEED)
    valid = {data for streams in corpus for data in streams}
    pool = sorted(valid)
    outcomes: Counter = Counter()
    accepted, generic, slowest = [], [], 0.0
    cases = 0
    for kind, count in PLAN.items():
        made = 0
        while made < count:
            which = rng.randrange(len(codecs))
            codec, data = codecs[which], rng.choice(corpus[which])
            damaged = _mutate(kind, rng, data, pool if kind == "splice" else corpus[which], codec)
            if damaged is None or damaged in valid:
                continue  # not damaged after all
            made += 1
            started = time.perf_counter()
            try:
                image = codec.decode(damaged)
            except SPECIFIC as exc:
                outcomes[(kind, type(exc).__name__)] += 1
            except Exception as exc:  # noqa: BLE001 - the failure this test looks for
                generic.append((kind, repr(exc)[:200]))
            else:
                accepted.append((kind, image.size))
            slowest = max(slowest, time.perf_counter() - started)
        cases += made
    by_error = Counter()
    for (_, name), n in outcomes.items():
        by_error[name] += n
    rejected = sum(outcomes.values())
    print(f"\nfuzz: {cases} corrupted streams, {rejected} rejected with a specific error, "
          f"{len(accepted)} accepted, {len(generic)} other exceptions; slowest case {slowest * 1000:.1f} ms")
    print("  by error: " + ", ".join(f"{name} {n}" for name, n in by_error.most_common()))
    assert cases >= 1000
    assert not generic, f"non-specific exceptions: {generic[:5]}"
    assert not accepted, f"damaged streams decoded to images: {accepted[:5]}"
    assert rejected == cases
    assert slowest < CASE_SECONDS
    # Forged strings get past both checksums: only the entropy decoder's own check can refuse them.
    assert outcomes[("forged-payload", "EntropyStreamError")] == PLAN["forged-payload"]
    assert outcomes[("string-swap", "EntropyStreamError")] == PLAN["string-swap"]
    assert not any(issubclass(BitstreamError, cls) for cls in SPECIFIC)
