"""Integer symbols to rANS strings and back, with the checks CompressAI's coder leaves out.

CompressAI's ``EntropyModel.compress``/``decompress`` quantize and dequantize around the range coder; the
hyperprior needs the integer symbols themselves (they are what the integer prior reads, see
``integer_prior.py``), so this module calls the coder directly. It adds:

- **Exact consumption.** The rANS decoder does not report how many bytes it read, and decodes *something*
  from any bytes. :func:`decode_symbols` re-encodes the decoded symbols with the same indexes and tables and
  requires the very same string: a string is accepted only if it is exactly the encoding of what it decodes
  to. Anything else (strings swapped between streams, forged with valid checksums, or decoded with other
  entropy parameters than the encoder's) raises :class:`~latentzip.codecs.bitstream.EntropyStreamError`.
- **Coder safety.** The C++ encoder writes into a buffer of one 32-bit word per symbol without bounds
  checks, and loops forever on symbols of ``2**27`` or more; :func:`_check_codable` refuses symbols that could do
  either, before they reach it. The decoder reads past the end of a string that is not a valid encoding, so
  strings are handed to it followed by zero words (a mitigation, not a proof: see docs/determinism.md).
- **Table safety.** The coder trusts its tables: a CDF that does not start at 0, is not strictly increasing
  or does not end at ``2**PRECISION``, a length beyond its row, or an index beyond the table list makes it
  read or write out of bounds (SIGSEGV) or loop forever. :func:`check_tables` states what it needs; codec
  folders are checked with it when loaded (checkpoint.py), and every table is checked again before it is
  handed to the coder, with every index.
- **One table conversion per batch**, not one per image.

It also says what symbols cost: :func:`code_lengths`, the ideal bits of each symbol under the same integer
tables, with the bypass writes counted by the one :func:`bypass_writes` the coder's buffer check uses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyModel

from latentzip.codecs.bitstream import EntropyStreamError

#: Symbols relative to their table's offset must stay below this: the encoder's bypass code counts the
#: nibbles of ``2 * |value| + 1`` with an int32 shift by ``4 * n``, which never reaches zero once 8 nibbles
#: are needed (x86 takes a shift by 32 as a shift by 0), so it would loop forever.
SYMBOL_LIMIT = 2**24
#: The coder's fixed CDF precision: every table ends at ``2**PRECISION``.
PRECISION = 16
#: Table offsets beyond this are refused: a table has at most ``2**PRECISION`` symbols, and the tables of a
#: real model sit around zero (latents minus their medians or means).
OFFSET_LIMIT = 2**16
#: Bypass values are written 4 bits at a time (CompressAI's ``bypass_precision``).
_BYPASS_BITS = 4
#: Zero words appended to a string before decoding: the decoder reads at most one word per symbol plus its
#: bypass words; a valid string is consumed before this padding is reached.
_PAD_WORDS_PER_SYMBOL = 1
_PAD_WORDS_EXTRA = 64


@dataclass(frozen=True)
class _Tables:
    cdf: list
    cdf_length: torch.Tensor
    offset: torch.Tensor
    cdf_length_list: list
    offset_list: list

    @classmethod
    def of(cls, model: EntropyModel) -> "_Tables":
        """The model's tables as the coder takes them, checked; built once per state of the model's buffers
        (rebuilt and checked again when one is replaced or changed in place)."""
        buffers = [model._quantized_cdf, model._cdf_length, model._offset]
        cached = getattr(model, "_latentzip_tables", None)
        if cached is not None and unchanged(buffers, cached[0]):
            return cached[1]
        model._check_cdf_size()
        model._check_cdf_length()
        model._check_offsets_size()
        require_usable(model)
        cdf_length = model._cdf_length.reshape(-1).to("cpu", torch.int64)
        offset = model._offset.reshape(-1).to("cpu", torch.int64)
        # Each row cut to its length: the coder reads no entry past it (an escape reads the last one).
        lengths = cdf_length.tolist()
        rows = [row[:n] for row, n in zip(model._quantized_cdf.tolist(), lengths)]
        tables = cls(rows, cdf_length, offset, lengths, offset.tolist())
        model._latentzip_tables = ([(t.detach(), t._version) for t in buffers], tables)
        return tables

    def coder_arguments(self, indexes: torch.Tensor) -> tuple[list, list, list, list]:
        """``(indexes, cdfs, cdf_lengths, offsets)`` for the C++ coder, holding only the tables ``indexes``
        (a flat int64 tensor) names, renumbered. The coder reads a symbol's table by its index alone, so the
        strings are the same as with every table; the subset spares converting all of them (about 10^5
        values for a Gaussian conditional's padded rows) at each call."""
        used, renumbered = torch.unique(indexes, return_inverse=True)
        used = used.tolist()
        return (renumbered.tolist(), [self.cdf[i] for i in used], [self.cdf_length_list[i] for i in used],
                [self.offset_list[i] for i in used])

    def check_indexes(self, indexes: torch.Tensor) -> None:
        """The coder reads ``cdf[index]`` unchecked: every index must name a table."""
        if indexes.numel() and (int(indexes.min()) < 0 or int(indexes.max()) >= len(self.cdf)):
            raise ValueError(f"table indexes {int(indexes.min())}..{int(indexes.max())} outside the "
                             f"{len(self.cdf)} tables")


def require_usable(*models: EntropyModel) -> None:
    """Raise a ValueError unless every model's tables are what the range coder needs (:func:`check_tables`):
    before the coder, and before anything derived from the tables (the prior's parameters) is computed."""
    for model in models:
        problem = check_tables(model._quantized_cdf, model._cdf_length, model._offset)
        if problem:
            raise ValueError(f"entropy-coder tables unusable by the range coder: {problem}")


def check_tables(cdf: torch.Tensor, cdf_length: torch.Tensor, offset: torch.Tensor) -> str | None:
    """Why the C++ range coder must not be given these tables, or None when it may.

    What it requires (compressai/cpp_exts/rans, which checks none of it in a release build): ``cdf`` an
    int32 (rows, L) table, ``cdf_length`` and ``offset`` int32 of one entry per row; each length in
    [2, L]; each row's first ``length`` entries starting at 0, strictly increasing (every symbol a non-zero
    frequency: the encoder's renormalisation never ends on a zero one) and ending at ``2**PRECISION``
    (the decoder's search reads past the row otherwise); offsets within ``OFFSET_LIMIT``.
    """
    for name, tensor, dims in (("cdf", cdf, 2), ("cdf_length", cdf_length, 1), ("offset", offset, 1)):
        if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.int32 or tensor.dim() != dims:
            what = f"{tensor.dtype} of {tensor.dim()} dims" if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            return f"{name} must be an int32 tensor of {dims} dims, got {what}"
    rows, width = cdf.shape
    if rows == 0 or width == 0:
        return "the tables are empty (not built: run update() before export)"
    if cdf_length.shape != (rows,) or offset.shape != (rows,):
        return (f"{rows} CDF rows need as many lengths and offsets, got {tuple(cdf_length.shape)} and "
                f"{tuple(offset.shape)}")
    lengths = cdf_length.to(torch.int64)
    bad = ((lengths < 2) | (lengths > width)).nonzero()
    if bad.numel():
        row = int(bad[0])
        return f"row {row}: CDF length {int(lengths[row])} outside [2, {width}] (its row holds {width})"
    bad = (offset.to(torch.int64).abs() > OFFSET_LIMIT).nonzero()
    if bad.numel():
        row = int(bad[0])
        return f"row {row}: offset {int(offset[row])} beyond +-{OFFSET_LIMIT}"
    table = cdf.to(torch.int64)
    bad = (table[:, 0] != 0).nonzero()
    if bad.numel():
        row = int(bad[0])
        return f"row {row}: CDF starts at {int(table[row, 0])}, not 0"
    ends = table.gather(1, (lengths - 1)[:, None])[:, 0]
    bad = (ends != 2**PRECISION).nonzero()
    if bad.numel():
        row = int(bad[0])
        return f"row {row}: CDF ends at {int(ends[row])}, not {2**PRECISION} (precision {PRECISION})"
    used = torch.arange(width - 1)[None, :] < (lengths - 1)[:, None]
    flat = ((table[:, 1:] - table[:, :-1] <= 0) & used).nonzero()
    if flat.numel():
        row, column = (int(v) for v in flat[0])
        return (f"row {row}: CDF not strictly increasing at entry {column + 1} ({int(table[row, column])} then "
                f"{int(table[row, column + 1])}): a symbol of zero frequency")
    return None


def bypass_writes(value: torch.Tensor, max_value: torch.Tensor) -> torch.Tensor:
    """Per symbol, how many 4-bit bypass writes the rANS encoder makes for it (int64, shaped like ``value``):
    the one count both the coder's buffer check and :func:`code_lengths` use.

    ``value`` is a symbol minus its table's offset, ``max_value`` its table's length minus 2. Mirrors the
    encoder: a value outside ``[0, max_value)`` is coded as the escape symbol, then ``n`` nibbles of
    ``raw`` and ``n // 15 + 1`` nibbles counting them; a value inside its table makes none.
    """
    escaped = (value < 0) | (value >= max_value)
    raw = torch.where(value < 0, -2 * value - 1, 2 * (value - max_value)).clamp_(min=0)
    nibbles = sum((raw >= 16**j).to(torch.int64) for j in range(8))
    return torch.where(escaped, nibbles + nibbles // (2**_BYPASS_BITS - 1) + 1, 0)


def _bypass_words(symbols: torch.Tensor, indexes: torch.Tensor, tables: _Tables) -> int:
    """How many 4-bit bypass writes the rANS encoder makes for ``symbols`` (flat int64 tensors, CPU)."""
    value = symbols - tables.offset[indexes]
    max_value = tables.cdf_length[indexes] - 2
    escaped = (value < 0) | (value >= max_value)
    if not bool(escaped.any()):
        return 0
    return int(bypass_writes(value[escaped], max_value[escaped]).sum())


def _check_codable(symbols: torch.Tensor, indexes: torch.Tensor, tables: _Tables) -> str | None:
    """Why the C++ encoder must not see these symbols, or None when it may."""
    if symbols.numel() == 0:
        return "no symbols"
    if bool(((symbols - tables.offset[indexes]).abs() >= SYMBOL_LIMIT).any()):
        return f"a symbol is {SYMBOL_LIMIT} or more away from its table"
    # Output bits: at most 16 per symbol (precision 16, every frequency >= 1), 4 per bypass write, 64 for
    # the final state and 64 of slack; the encoder's buffer holds 32 bits per symbol.
    needed_bits = 16 * symbols.numel() + _BYPASS_BITS * _bypass_words(symbols, indexes, tables) + 128
    if needed_bits > 32 * symbols.numel():
        return "too many out-of-table symbols for the coder's output buffer"
    return None


def encode_symbols(model: EntropyModel, symbols: torch.Tensor, indexes: torch.Tensor) -> list[bytes]:
    """One rANS string per batch item. ``symbols`` and ``indexes`` are integer tensors of one shape (B, ...)."""
    if symbols.shape != indexes.shape or symbols.dim() < 2:
        raise ValueError(f"symbols {tuple(symbols.shape)} and indexes {tuple(indexes.shape)} must share a (B, ...) shape")
    tables = _Tables.of(model)
    symbols = symbols.to("cpu", torch.int64)
    indexes = indexes.to("cpu", torch.int64)
    tables.check_indexes(indexes)
    strings = []
    for item_symbols, item_indexes in zip(symbols.flatten(1), indexes.flatten(1)):
        problem = _check_codable(item_symbols, item_indexes, tables)
        if problem:
            raise ValueError(f"cannot entropy-code these latents: {problem}")
        strings.append(_encode(model, item_symbols.tolist(), tables.coder_arguments(item_indexes)))
    return strings


def decode_symbols(model: EntropyModel, strings: list[bytes], indexes: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_symbols`: int32 symbols shaped like ``indexes``.

    Raises :class:`EntropyStreamError` unless every string is exactly the encoding of what it decodes to.
    """
    if not isinstance(strings, (list, tuple)) or len(strings) != indexes.shape[0]:
        raise ValueError(f"expected {indexes.shape[0]} strings, got {strings!r:.80}")
    tables = _Tables.of(model)
    flat_indexes = indexes.to("cpu", torch.int64).flatten(1)
    tables.check_indexes(flat_indexes)
    out = torch.empty(flat_indexes.shape, dtype=torch.int32)
    for i, (string, item_indexes) in enumerate(zip(strings, flat_indexes)):
        string = bytes(string)
        # The encoder writes whole 32-bit words, at least the two of its final state.
        if len(string) < 8 or len(string) % 4:
            raise EntropyStreamError(f"entropy-coded string {i} has {len(string)} bytes, not a whole rANS stream")
        arguments = tables.coder_arguments(item_indexes)
        padding = bytes(4 * (_PAD_WORDS_PER_SYMBOL * len(arguments[0]) + _PAD_WORDS_EXTRA))
        values = model.entropy_coder.decode_with_indexes(string + padding, *arguments)
        symbols = torch.tensor(values, dtype=torch.int64)
        problem = _check_codable(symbols, item_indexes, tables)
        if problem or _encode(model, values, arguments) != string:
            raise EntropyStreamError(
                f"entropy-coded string {i} is not the encoding of what it decodes to "
                f"({problem or 're-encoding gives other bytes'}): corrupt, mis-paired, or decoded with other "
                "entropy parameters than the encoder's"
            )
        out[i] = symbols.to(torch.int32)
    return out.reshape(indexes.shape).to(indexes.device)


def _encode(model: EntropyModel, symbols: list, arguments: tuple[list, list, list, list]) -> bytes:
    return bytes(model.entropy_coder.encode_with_indexes(symbols, *arguments))


def unchanged(tensors: list[torch.Tensor], cached: list[tuple[torch.Tensor, int]]) -> bool:
    """Whether each tensor still has the storage, layout and in-place version it had when cached. The
    cached aliases keep those storages alive, so a new tensor cannot reuse one of their addresses."""
    return len(tensors) == len(cached) and all(
        t.device == alias.device and t.data_ptr() == alias.data_ptr() and t.shape == alias.shape
        and t.stride() == alias.stride() and t._version == version
        for t, (alias, version) in zip(tensors, cached))


# -- code lengths: what each symbol costs under the coder's integer tables -----------------------------------
def table_frequencies(model: EntropyModel) -> torch.Tensor:
    """Per table, the integer frequency of each value (the quantized CDF's differences, the last one the
    escape symbol's), on CPU; zero past each table's length."""
    cdf = model._quantized_cdf.cpu().long()
    lengths = model._cdf_length.reshape(-1).cpu().long()
    frequencies = cdf[:, 1:] - cdf[:, :-1]
    valid = torch.arange(frequencies.shape[1])[None, :] < (lengths[:, None] - 1)
    return torch.where(valid, frequencies, torch.zeros((), dtype=torch.long))


def code_lengths(model: EntropyModel, symbols: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
    """Bits the range coder ideally spends on each symbol under its integer tables (float32, shaped like
    ``symbols``): ``-log2(frequency / 2**PRECISION)``; a value outside its table pays the escape symbol plus
    its bypass nibbles (:func:`bypass_writes`). Estimates: a rANS string is within a few bytes of their sum."""
    frequencies = table_frequencies(model)
    symbols = symbols.cpu().long()
    indexes = indexes.cpu().long()
    offsets = model._offset.reshape(-1).cpu().long()[indexes]
    max_value = model._cdf_length.reshape(-1).cpu().long()[indexes] - 2
    value = symbols - offsets
    escaped = (value < 0) | (value >= max_value)
    looked_up = torch.where(escaped, max_value, value)
    frequency = frequencies[indexes, looked_up].double()
    bits = PRECISION - torch.log2(frequency)
    return (bits + _BYPASS_BITS * bypass_writes(value, max_value)).float()
