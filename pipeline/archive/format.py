"""The archive's format: versions, attribute and column names, the layout of new archives, the item and
failure records, id hashing and checksums, and the errors. Pure Python: no zarr, no file system.

docs/archive-format.md is the specification; this module holds its numbers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, field

import google_crc32c

FORMAT = "latentzip-archive"
#: The version new archives are written in; an archive keeps its own version when appended to.
FORMAT_VERSION = 4
#: Format versions this release reads.
READ_VERSIONS = (2, 3, 4)
#: The first format whose ``checksum`` column covers the id as well as the bitstream.
ID_BOUND_VERSION = 3
#: The first format whose provenance (sources, job records) lives in small records of its own under
#: ``provenance/`` instead of lists in the group attributes (so a commit rewrites a constant-size zarr.json).
RECORDS_VERSION = 4
ATTRS_KEY = "latentzip"
OK, FAILED = 0, 1
ITEM_COLUMNS = ("key", "status", "id_offset", "id_length", "offset", "length", "height", "width",
                "checksum", "mode", "source", "segment")
SEGMENT_COLUMNS = ("row_start", "rows", "ids_start", "ids_bytes", "bytes_start", "num_bytes",
                   "reasons_start", "reasons_bytes", "images", "failures", "unit", "job")
#: The arrays every archive has (plus its index table, ``index_<log2 capacity>``).
ARRAYS = ("items", "ids", "bitstreams", "reasons", "segments")
#: Original image modes, by code (the ``mode`` column); -1 is a mode not in this list.
MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "I;16", "I;16B", "I;16L", "I", "CMYK", "YCbCr", "LAB",
         "HSV", "F", "La", "RGBa")
I = {name: i for i, name in enumerate(ITEM_COLUMNS)}
S = {name: i for i, name in enumerate(SEGMENT_COLUMNS)}
#: Rows committed but not yet in the hash table before a writer folds them in (bounds a reader's scan).
INDEX_LAG = 1 << 16


@dataclass(frozen=True)
class Layout:
    """Chunk and shard sizes of a NEW archive: name -> (inner chunk, shard) of the 1-D byte arrays,
    (columns, inner chunk, shard) of the tables, and the index table's. Readers and writers of an existing
    archive take every size from its arrays' zarr metadata, never from here (archives written with other
    sizes, e.g. the 64 KiB / 16 MiB bitstreams chunks before the layout was tuned for one-id lookups, read
    and append alike). Small inner chunks keep a lookup's reads close to the item's own bytes; a shard holds
    64-256 chunks, so its chunk index (16 bytes per inner chunk, read by every lookup) stays 1-4 KiB."""
    byte_arrays: dict = field(default_factory=lambda: {
        "bitstreams": (1 << 12, 1 << 20), "ids": (1 << 11, 1 << 17), "reasons": (1 << 14, 1 << 20)})
    tables: dict = field(default_factory=lambda: {
        "items": (len(ITEM_COLUMNS), 32, 1024), "segments": (len(SEGMENT_COLUMNS), 256, 4096)})
    #: Entropy-coded bitstreams do not compress: stored without zstd (still crc32c-checked, chunk by chunk).
    uncompressed: frozenset = frozenset({"bitstreams"})
    index_chunk: int = 256
    index_shard: int = 1 << 14
    index_min: int = 1 << 12


DEFAULT_LAYOUT = Layout()


class ArchiveError(ValueError):
    """An archive cannot be opened or written: unknown format or version, or another model's archive."""


class ArchiveCorruptError(ArchiveError):
    """The archive's attributes, arrays or records contradict each other or the layout (a damaged archive)."""


class RemoteModelRefusedError(ArchiveError):
    """An archive names a remote model location, and the caller did not ask for it to be fetched."""


class ItemNotFoundError(KeyError):
    """No item with this id in the archive."""


class ItemCorruptError(ArchiveError):
    """An item's stored bytes or record do not match their checksum or the arrays (names the id)."""


@dataclass(frozen=True)
class Item:
    id: str
    data: bytes
    height: int
    width: int
    source: str
    mode: str = "RGB"

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.height * self.width)


@dataclass(frozen=True)
class Failure:
    """An input that could not be encoded, with why (the archive's errors table)."""
    id: str
    reason: str
    source: str


def id_bytes(item_id: str) -> bytes:
    """The stored bytes of an id (an id read back from undecodable bytes round-trips, see :func:`id_text`)."""
    return item_id.encode("utf-8", "surrogateescape")


def id_text(raw: bytes) -> str:
    """An id's stored bytes as text; bytes that are not UTF-8 become lone surrogates (as Python does for file
    names), so the id can still be named, listed and refused per id instead of stopping a whole listing."""
    return raw.decode("utf-8", "surrogateescape")


def is_utf8(item_id: str) -> bool:
    try:
        item_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def id_key(item_id: str) -> int:
    """The 64-bit hash of an id used by the index (0 and -1 are reserved: empty slot, fill row)."""
    key = int.from_bytes(hashlib.blake2b(id_bytes(item_id), digest_size=8).digest(), "little", signed=True)
    return 1 if key in (0, -1) else key


def checksum(data: bytes) -> int:
    """CRC-32C of bytes (the ``checksum`` column of format 2; format 3 on: :func:`item_checksum`)."""
    return int(google_crc32c.value(data))


def item_checksum(version: int, id_bytes: bytes, data: bytes) -> int:
    """The ``checksum`` column of an encoded row: CRC-32C of the bitstream (format 2), or of the id's length
    (8 bytes, little-endian), the id's UTF-8 bytes and the bitstream (format 3 on), so a row whose id and
    bytes were moved, swapped or duplicated apart fails it."""
    if version < ID_BOUND_VERSION:
        return int(google_crc32c.value(data))
    crc = google_crc32c.extend(0, struct.pack("<Q", len(id_bytes)))
    crc = google_crc32c.extend(crc, id_bytes)
    return int(google_crc32c.extend(crc, data))


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def align(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
