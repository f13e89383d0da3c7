"""codecs/entropy_coding.py: symbols <-> rANS strings, code lengths, the bypass count, table validation.

On the entropy models of a small freshly built hyperprior (``update()`` builds their integer tables): the
bottleneck has one table per channel, the Gaussian conditional one per scale of its table.
"""

from __future__ import annotations

import math

import pytest
import torch
from compressai.entropy_models import EntropyBottleneck

from latentzip.codecs.bitstream import EntropyStreamError
from latentzip.codecs.entropy_coding import (PRECISION, SYMBOL_LIMIT, bypass_writes, check_tables, code_lengths,
                                             decode_symbols, encode_symbols, table_frequencies)
from latentzip.codecs.hyperprior import CodecConfig, build_model


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = build_model(CodecConfig(N=8, M=8))
    model.update(force=True)
    return model.entropy_bottleneck, model.gaussian_conditional


def _bottleneck_symbols(bottleneck, shape=(2, 8, 4, 4), spread=3, seed=0):
    """Symbols around each channel's table (a few outside it), and the per-channel indexes."""
    generator = torch.Generator().manual_seed(seed)
    offset = bottleneck._offset.reshape(1, -1, 1, 1).long()
    width = bottleneck._cdf_length.reshape(1, -1, 1, 1).long() - 2
    symbols = offset + torch.randint(-spread, int(width.min()) + spread, shape, generator=generator)
    return symbols.to(torch.int32), EntropyBottleneck._build_indexes(torch.Size(shape))


def _table_info(model, indexes):
    offset = model._offset.reshape(-1).long()[indexes.long()]
    return offset, model._cdf_length.reshape(-1).long()[indexes.long()] - 2


def test_round_trip_of_both_entropy_models(models):
    bottleneck, conditional = models
    symbols, indexes = _bottleneck_symbols(bottleneck)
    strings = encode_symbols(bottleneck, symbols, indexes)
    assert len(strings) == 2 and all(len(s) % 4 == 0 and len(s) >= 8 for s in strings)
    assert torch.equal(decode_symbols(bottleneck, strings, indexes), symbols)

    generator = torch.Generator().manual_seed(1)
    y_indexes = torch.randint(0, conditional._offset.numel(), (3, 8, 8, 8), generator=generator).to(torch.int32)
    y_symbols = torch.round(torch.randn(y_indexes.shape, generator=generator) * 4).to(torch.int32)
    strings = encode_symbols(conditional, y_symbols, y_indexes)
    decoded = decode_symbols(conditional, strings, y_indexes)
    assert decoded.dtype == torch.int32 and torch.equal(decoded, y_symbols)
    # One string per batch item, independent of the others.
    assert encode_symbols(conditional, y_symbols[1:2], y_indexes[1:2]) == strings[1:2]


def test_code_lengths_are_table_costs_and_add_up_to_the_strings(models):
    bottleneck, _ = models
    frequencies = table_frequencies(bottleneck)
    lengths = bottleneck._cdf_length.reshape(-1).long()
    assert torch.equal(frequencies.sum(1), torch.full_like(lengths, 2**PRECISION))
    assert bool((frequencies[torch.arange(frequencies.shape[1])[None, :] < (lengths[:, None] - 1)] > 0).all())

    symbols, indexes = _bottleneck_symbols(bottleneck, shape=(3, 8, 8, 8), spread=40, seed=2)
    offset, max_value = _table_info(bottleneck, indexes)
    value = symbols.long() - offset
    escaped = (value < 0) | (value >= max_value)
    assert 0 < int(escaped.sum()) < value.numel()  # both kinds present
    bits = code_lengths(bottleneck, symbols, indexes)
    assert bits.shape == symbols.shape and bits.dtype == torch.float32
    inside = ~escaped
    looked_up = frequencies[indexes.long()[inside], value[inside]].double()
    assert torch.allclose(bits[inside].double(), PRECISION - torch.log2(looked_up), atol=1e-5)
    # The estimate is within the rANS state flush (two 32-bit words) and rounding of the real string.
    for item, string in zip(bits, encode_symbols(bottleneck, symbols, indexes)):
        assert abs(float(item.sum()) - 8 * len(string)) < 96


def test_bypass_writes_count_the_escape_nibbles(models):
    value = torch.tensor([0, 5, 9, -1, 10, 11, -8, 10 + 1000, -1000, -(2**20)])
    max_value = torch.full_like(value, 10)
    # raw = 2|v|-1 below the table, 2(v - max) above; writes = nibbles of raw + one counting them.
    expected = [0, 0, 0, 2, 1, 2, 2, 4, 4, 7]
    assert bypass_writes(value, max_value).tolist() == expected

    # The count drives the estimate: strings with many far-out symbols grow by exactly their bypass bits
    # (give or take the final state), and the coder's buffer check refuses more than the buffer holds.
    bottleneck, _ = models
    symbols, indexes = _bottleneck_symbols(bottleneck, shape=(1, 8, 8, 8), spread=0, seed=3)
    offset, max_value = _table_info(bottleneck, indexes)
    far = symbols.clone()
    far.view(-1)[::4] = (offset + max_value + 1000).view(-1)[::4].to(torch.int32)
    base, bypassed = (encode_symbols(bottleneck, s, indexes)[0] for s in (symbols, far))
    extra_bits = float(code_lengths(bottleneck, far, indexes).sum() - code_lengths(bottleneck, symbols, indexes).sum())
    bypass_bits = 4 * int(bypass_writes(*(t.view(-1)[::4] for t in (far.long() - offset, max_value))).sum())
    assert bypass_bits == 128 * 16  # 128 escaped symbols, 1000 out: 3 nibbles + 1 counting them each
    assert abs(8 * (len(bypassed) - len(base)) - extra_bits) < 128
    assert torch.equal(decode_symbols(bottleneck, [bypassed], indexes), far)
    too_many = (offset + max_value + 2**20).to(torch.int32)
    with pytest.raises(ValueError, match="too many out-of-table symbols"):
        encode_symbols(bottleneck, too_many, indexes)


def test_encoder_refuses_what_the_coder_cannot_take(models):
    bottleneck, conditional = models
    symbols, indexes = _bottleneck_symbols(bottleneck)
    with pytest.raises(ValueError, match="share a"):
        encode_symbols(bottleneck, symbols, indexes[:1])
    with pytest.raises(ValueError, match="share a"):
        encode_symbols(bottleneck, symbols.flatten(), indexes.flatten())
    far = symbols.clone()
    far[0, 0, 0, 0] = SYMBOL_LIMIT + 100
    with pytest.raises(ValueError, match=f"{SYMBOL_LIMIT} or more away"):
        encode_symbols(bottleneck, far, indexes)
    bad = indexes.clone()
    bad[0, 0, 0, 0] = conditional._offset.numel() + 5
    with pytest.raises(ValueError, match="outside the"):
        encode_symbols(conditional, symbols, bad)
    with pytest.raises(ValueError, match="outside the"):
        encode_symbols(conditional, symbols, indexes - 1)


def test_decoder_accepts_only_exact_encodings(models):
    bottleneck, conditional = models
    symbols, indexes = _bottleneck_symbols(bottleneck)
    strings = encode_symbols(bottleneck, symbols, indexes)
    with pytest.raises(ValueError, match="expected 2 strings"):
        decode_symbols(bottleneck, strings[:1], indexes)
    for broken in (b"", strings[0][:6], strings[0] + b"\0\0"):
        with pytest.raises(EntropyStreamError, match="not a whole rANS stream"):
            decode_symbols(bottleneck, [broken, strings[1]], indexes)
    with pytest.raises(EntropyStreamError, match="not the encoding of what it decodes to"):
        decode_symbols(bottleneck, [strings[0] + bytes(4), strings[1]], indexes)
    # The same string under other tables (as with other entropy parameters) is refused, not misread.
    other = torch.full_like(indexes, conditional._offset.numel() - 1)
    with pytest.raises(EntropyStreamError):
        decode_symbols(conditional, strings, other)


def _tables(model):
    return model._quantized_cdf.clone(), model._cdf_length.clone(), model._offset.clone()


def test_check_tables_accepts_built_tables_and_says_what_is_wrong(models):
    bottleneck, conditional = models
    assert check_tables(*_tables(bottleneck)) is None and check_tables(*_tables(conditional)) is None
    cdf, length, offset = _tables(bottleneck)
    width = cdf.shape[1]

    def problem(cdf=cdf, length=length, offset=offset):
        return check_tables(cdf, length, offset)

    assert "int32 tensor of 2 dims" in problem(cdf=cdf.long())
    assert "int32 tensor of 1 dims" in problem(length=length[:, None])
    assert "must be an int32 tensor" in problem(offset=offset.tolist())
    assert "empty" in problem(cdf=cdf[:0], length=length[:0], offset=offset[:0])
    assert "need as many lengths and offsets" in problem(length=length[:-1])
    short = length.clone()
    short[1] = 1
    assert problem(length=short).startswith("row 1: CDF length 1 outside")
    long = length.clone()
    long[2] = width + 1
    assert problem(length=long).startswith("row 2: CDF length")
    far = offset.clone()
    far[3] = 2**17
    assert problem(offset=far).startswith("row 3: offset 131072 beyond")
    shifted = cdf.clone()
    shifted[0, 0] = 1
    assert problem(cdf=shifted) == "row 0: CDF starts at 1, not 0"
    ends = cdf.clone()
    ends[4, int(length[4]) - 1] -= 1
    assert problem(cdf=ends) == f"row 4: CDF ends at {2**PRECISION - 1}, not {2**PRECISION} (precision {PRECISION})"
    flat = cdf.clone()
    flat[5, 2] = flat[5, 1]
    assert problem(cdf=flat).startswith("row 5: CDF not strictly increasing at entry 2")
    # What it finds, encode_symbols refuses to hand to the coder.
    symbols, indexes = _bottleneck_symbols(bottleneck)
    saved = bottleneck._quantized_cdf.clone()
    try:
        bottleneck._quantized_cdf.copy_(flat)
        with pytest.raises(ValueError, match="unusable by the range coder: row 5"):
            encode_symbols(bottleneck, symbols, indexes)
    finally:
        bottleneck._quantized_cdf.copy_(saved)
    assert math.isfinite(float(code_lengths(bottleneck, symbols, indexes).sum()))


def test_strings_are_the_coders_own_with_every_table(models):
    """The coder gets only the tables a string uses, each cut to its length: the bytes are those of
    CompressAI's coder given every padded table, and they decode with it."""
    _, conditional = models
    generator = torch.Generator().manual_seed(2)
    indexes = torch.randint(0, conditional._offset.numel(), (2, 4, 6, 6), generator=generator).to(torch.int32)
    symbols = torch.round(torch.randn(indexes.shape, generator=generator) * 3).to(torch.int32)
    strings = encode_symbols(conditional, symbols, indexes)
    tables = (conditional._quantized_cdf.tolist(), conditional._cdf_length.reshape(-1).tolist(),
              conditional._offset.reshape(-1).tolist())
    for i in range(2):
        flat_symbols, flat_indexes = symbols[i].flatten().tolist(), indexes[i].flatten().tolist()
        assert bytes(conditional.entropy_coder.encode_with_indexes(flat_symbols, flat_indexes, *tables)) == strings[i]
        assert conditional.entropy_coder.decode_with_indexes(strings[i], flat_indexes, *tables) == flat_symbols


def test_tables_are_checked_again_after_a_change_in_place(models):
    """The coder's tables are cached per state of the model's buffers: a table changed in place is checked
    (and refused) at the next call, not coded with the cached copy."""
    _, conditional = models
    indexes = torch.zeros((1, 2, 2, 2), dtype=torch.int32)
    symbols = torch.zeros_like(indexes)
    assert decode_symbols(conditional, encode_symbols(conditional, symbols, indexes), indexes).eq(0).all()
    saved = conditional._quantized_cdf.clone()
    try:
        conditional._quantized_cdf[0, 0] = 5  # in place: same storage, new version
        with pytest.raises(ValueError, match="row 0: CDF starts at 5"):
            encode_symbols(conditional, symbols, indexes)
    finally:
        conditional._quantized_cdf.copy_(saved)
    assert encode_symbols(conditional, symbols, indexes)
