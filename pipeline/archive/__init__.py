"""The Zarr v3 archive of encoded images (format 4; reads and appends to 2 and 3): the only package that
imports zarr, and no model loading (decoding an archive's items is :mod:`latentzip.pipeline.decoding`).

The layout, the commit protocol and the index are specified in docs/archive-format.md; this package is
that specification's one implementation. In short: a Zarr v3 group whose arrays are all ``uint8`` or
``int64`` and sharded (``sharding_indexed``, ``crc32c`` inside every chunk's codecs), items arriving in
segments (one per unit of work) committed by raising a count in the group attributes, an open-addressing
hash index from each id's 64-bit hash to its row, and provenance records of their own.

- :mod:`.format`: versions, names, layout of new archives, :class:`Item`, :class:`Failure`, hashes,
  checksums, errors;
- :mod:`.checks`: what the archive's records may claim (pure bounds checks);
- :mod:`.arrays`: the reader interface, the direct shard reader and the zarr one;
- :mod:`.index`: the hash index and the one lookup;
- :mod:`.provenance`: source names and job records;
- :mod:`.reader`: :class:`Archive` and :func:`open_archive`;
- :mod:`.writer`: :class:`ArchiveWriter` and its lock;
- :mod:`.listing`: listing the ids of a possibly damaged archive;
- :mod:`.verify`: :func:`verify_archive`, the storage checks behind ``latentzip verify``.
"""

from latentzip.pipeline.archive.checks import describe_exception
from latentzip.pipeline.archive.format import (
    ATTRS_KEY,
    FAILED,
    FORMAT,
    FORMAT_VERSION,
    ID_BOUND_VERSION,
    ITEM_COLUMNS,
    MODES,
    OK,
    READ_VERSIONS,
    RECORDS_VERSION,
    SEGMENT_COLUMNS,
    ArchiveCorruptError,
    ArchiveError,
    Failure,
    I,
    Item,
    ItemCorruptError,
    ItemNotFoundError,
    Layout,
    RemoteModelRefusedError,
    S,
    checksum,
    id_bytes,
    id_key,
    id_text,
    is_utf8,
    item_checksum,
)
from latentzip.pipeline.archive.reader import Archive, check_archive_location, location, open_archive
from latentzip.pipeline.archive.verify import VerifyReport, verify_archive
from latentzip.pipeline.archive.writer import ArchiveWriter

__all__ = [
    "ATTRS_KEY", "FAILED", "FORMAT", "FORMAT_VERSION", "ID_BOUND_VERSION", "ITEM_COLUMNS", "MODES", "OK",
    "READ_VERSIONS", "RECORDS_VERSION", "SEGMENT_COLUMNS", "Archive", "ArchiveCorruptError", "ArchiveError",
    "ArchiveWriter", "Failure", "I", "Item", "ItemCorruptError", "ItemNotFoundError", "Layout",
    "RemoteModelRefusedError", "S", "VerifyReport", "check_archive_location", "checksum", "describe_exception",
    "id_bytes", "id_key", "id_text", "is_utf8", "item_checksum", "location", "open_archive", "verify_archive",
]
