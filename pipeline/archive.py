"""The Zarr v3 archive of encoded images, format version 3 (reads 2): the only module that imports zarr.

The layout, the commit protocol and the index are specified in docs/archive-format.md; this module is
that specification's one implementation. In short: a Zarr v3 group whose arrays are all ``uint8`` or
``int64`` and sharded (``sharding_indexed``, ``crc32c`` inside every chunk's codecs). Items arrive in
*segments* (one per unit of work: a shard or a file group). Each segment's rows and bytes start on a fresh zarr
shard of every array, so no zarr shard is ever written by two segments; the segment's row in ``segments``
plus the group attribute ``segments`` (the count, raised last) are its completion marker. An open-addressing
hash table maps a 64-bit hash of each id to its row, so a lookup reads one index chunk, one row and its id.
Every chunk and shard size is read from the arrays' own metadata (the constants below only shape new
archives), and a local archive's lookups read its shard files directly (``_ShardReader``), zarr the rest.

Where: a local folder (a path or a ``file://`` URL), or any fsspec URL zarr can open (``s3://``, ``gs://``,
...; the filesystem's package must be installed, e.g. s3fs, and it is configured the usual way: for S3,
AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible endpoint). The single-writer lock is a local
``flock``, so it guards local archives only: object stores offer no such lock here, and keeping to one
encode job per archive on object storage is the caller's job.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numcodecs
import numpy as np

import latentzip
from latentzip.codecs.registry import load_codec
from latentzip.pipeline import storage
from latentzip.pipeline.archive_checks import (  # noqa: F401 - the errors are part of this module's API
    FAILED,
    OK,
    READ_VERSIONS,
    ArchiveCorruptError,
    ArchiveError,
    ItemCorruptError,
    ItemNotFoundError,
    RemoteModelRefusedError,
    describe_exception,
    id_bytes,
    item_checksum,
    lookup_problem,
    meta_problems,
)

FORMAT = "latentzip-archive"
#: The version new archives are written in; an archive keeps its own version when appended to.
FORMAT_VERSION = 3
ATTRS_KEY = "latentzip"
ITEM_COLUMNS = ("key", "status", "id_offset", "id_length", "offset", "length", "height", "width",
                "checksum", "mode", "source", "segment")
SEGMENT_COLUMNS = ("row_start", "rows", "ids_start", "ids_bytes", "bytes_start", "num_bytes",
                   "reasons_start", "reasons_bytes", "images", "failures", "unit", "job")
#: Original image modes, by code (the ``mode`` column); -1 is a mode not in this list.
MODES = ("RGB", "L", "1", "P", "RGBA", "LA", "PA", "I;16", "I;16B", "I;16L", "I", "CMYK", "YCbCr", "LAB",
         "HSV", "F", "La", "RGBa")
I = {name: i for i, name in enumerate(ITEM_COLUMNS)}
S = {name: i for i, name in enumerate(SEGMENT_COLUMNS)}
#: Layout of NEW archives: name -> (inner chunk, shard) of the 1-D byte arrays, (columns, inner chunk, shard)
#: of the tables; index arrays have their own. Readers and writers of an existing archive take every chunk
#: and shard size from its arrays' zarr metadata, never from these (archives written with other sizes, e.g.
#: the 64 KiB / 16 MiB bitstreams chunks before the layout was tuned for one-id lookups, read and append alike).
#: Small inner chunks keep a lookup's reads close to the item's own bytes; a shard holds 64-256 chunks, so
#: its chunk index (16 bytes per inner chunk, read by every lookup) stays 1-4 KiB.
_BYTE_ARRAYS = {"bitstreams": (1 << 12, 1 << 20), "ids": (1 << 11, 1 << 17), "reasons": (1 << 14, 1 << 20)}
_TABLES = {"items": (len(ITEM_COLUMNS), 32, 1024), "segments": (len(SEGMENT_COLUMNS), 256, 4096)}
#: Entropy-coded bitstreams do not compress: stored without zstd (still crc32c-checked, chunk by chunk).
_UNCOMPRESSED = {"bitstreams"}
_INDEX_CHUNK, _INDEX_SHARD, _INDEX_MIN = 256, 1 << 14, 1 << 12
#: Rows committed but not yet in the hash table before a writer folds them in (bounds a reader's scan).
_INDEX_LAG = 1 << 16
_LOCKS: dict[str, list] = {}


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


def id_key(item_id: str) -> int:
    """The 64-bit hash of an id used by the index (0 and -1 are reserved: empty slot, fill row)."""
    key = int.from_bytes(hashlib.blake2b(id_bytes(item_id), digest_size=8).digest(), "little", signed=True)
    return 1 if key in (0, -1) else key


def checksum(data: bytes) -> int:
    """CRC-32C of bytes (the ``checksum`` column of format 2; format 3: :func:`item_checksum`)."""
    return int(google_crc32c.value(data))


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _align(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Archive:
    """Read access to an archive: ids, stored bytes, per-item metadata, errors, and decoding.

    Opening reads the group attributes only; a lookup reads one index chunk, one item row and the id's
    bytes (plus, while a writer is mid-job, the keys of segments it has not indexed yet).
    """

    def __init__(self, path: str | Path, mode: str = "r", model: str | None = None, allow_model_urls=()):
        self.path = location(path)
        self.model_override = None if model is None else str(model)
        self.allow_model_urls = tuple(allow_model_urls)
        if not _has_file(self.path, "zarr.json"):
            raise ArchiveError(f"{self.path} is not a Zarr v3 archive (no zarr.json)")
        self._mode, self._group = mode, None
        # A local read-only archive reads its group's zarr.json directly and opens the zarr group only when
        # something needs it (a lookup does not); anything else opens it now.
        attributes = _local_group_attributes(self.path) if mode == "r" and isinstance(self.path, Path) else None
        if attributes is None:
            try:
                self._group = _zarr().open_group(str(self.path), mode=mode)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # JSON or UTF-8 errors of a damaged zarr.json
                raise ArchiveCorruptError(f"{self.path}: its zarr.json cannot be read as a Zarr v3 group: "
                                          f"{describe_exception(exc)}") from exc
        self._codec = None
        # Read-only: each array's metadata is read once per object, not on every lookup (a writer's arrays
        # change shape, so it opens them afresh).
        self._arrays: dict | None = {} if mode == "r" else None
        self._refresh(attributes)

    @property
    def group(self):
        """The archive's zarr group."""
        if self._group is None:
            self._group = _zarr().open_group(str(self.path), mode=self._mode)
        return self._group

    @group.setter
    def group(self, group) -> None:
        self._group = group

    def _refresh(self, attributes: dict | None = None) -> None:
        meta = (dict(self.group.attrs) if attributes is None else attributes).get(ATTRS_KEY)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArchiveError(f"{self.path} is a Zarr group but not a latentzip archive")
        version = meta.get("format_version")
        if version not in READ_VERSIONS:
            hint = (" (version 1 archives, written before sharding, are not read by this release: re-run "
                    "`latentzip encode` on the same shards into a new archive)") if version == 1 else ""
            raise ArchiveError(f"{self.path} has archive format version {version}; this latentzip "
                               f"({latentzip.__version__}) reads versions "
                               f"{', '.join(map(str, READ_VERSIONS))}{hint}")
        problems = meta_problems(meta)
        if problems:
            raise ArchiveCorruptError(f"{self.path}: damaged archive attributes: {'; '.join(problems)} "
                                      "(`latentzip verify` lists what it can check)")
        self.meta = meta
        state = (meta["segments"], meta["index"]["segments"], meta["index"]["array"])
        if state != getattr(self, "_state", None):  # caches stay valid while nothing was committed
            self._state = state
            if self._arrays:
                self._arrays = {}
            self._readers: dict[str, _ShardReader | None] = {}
            self._ids: list[str] | None = None
            self._pending: dict[int, list[int]] | None = None

    @property
    def version(self) -> int:
        """The archive's format version: 3 binds each id to its bytes in the checksum, 2 does not."""
        return self.meta["format_version"]

    # -- reading -------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta["count"]

    def __contains__(self, item_id: str) -> bool:
        return self._find(item_id) is not None

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def ids(self) -> list[str]:
        """Every encoded id in commit order (reads every id: O(n); lookups do not need it). Raises
        ArchiveCorruptError if a segment or row cannot be read or is inconsistent (:meth:`listing` reports
        such problems and lists the rest)."""
        if self._ids is None:
            ids, problems = self.listing()
            if problems:
                where, what = next(iter(problems.items()))
                raise ArchiveCorruptError(f"{self.path}: {len(problems)} damaged segments or rows, e.g. {where}: "
                                          f"{what} (`latentzip verify` lists them)")
            self._ids = ids
        return self._ids

    def listing(self) -> tuple[list[str], dict[str, str]]:
        """(every encoded id whose row is consistent, in commit order; what is wrong elsewhere, by id or by
        ``<segment N>`` / ``<segment N row R>`` where no id can be read). Never raises for damage."""
        from latentzip.pipeline.archive_listing import listing

        return listing(self)

    def segments(self) -> np.ndarray:
        """The committed segment records, one row per ``SEGMENT_COLUMNS``."""
        count = self.meta["segments"]
        return self._read("segments", 0, count) if count else np.zeros((0, len(SEGMENT_COLUMNS)), np.int64)

    def shapes(self) -> dict[str, int]:
        """Lengths of the byte arrays and tables (first axis) from their metadata; a missing array is left
        out (its readers then report it)."""
        out = {}
        for name in ("items", "ids", "bitstreams", "reasons", "segments"):
            try:
                reader = self._reader(name)
                out[name] = reader.rows if reader is not None else int(self._array(name).shape[0])
            except Exception:  # noqa: BLE001 - a damaged or deleted array: reported where it is read
                pass
        return out

    def scan(self, segments: np.ndarray | None = None):
        """Each committed segment, checked before anything is read from its fields (see
        :func:`latentzip.pipeline.archive_listing.scan`)."""
        from latentzip.pipeline.archive_listing import scan

        return scan(self, segments)

    def read_rows(self, start: int, n: int) -> np.ndarray:
        """Rows ``[start, start + n)`` of ``items`` (callers check the range against :meth:`shapes`)."""
        return self._read("items", start, start + n) if n > 0 else np.zeros((0, len(ITEM_COLUMNS)), np.int64)

    def _read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of an array, clipped to its length: from a local archive's shard files when
        they are this format's layout (as lookups read them: no zarr machinery per read), else through zarr."""
        reader = self._reader(name)
        if reader is None:
            return self._array(name)[start:stop]
        if start < 0:
            raise ValueError(f"negative start {start} in `{name}`")
        return reader.read(start, min(stop, reader.rows))

    def _array(self, name: str):
        if self._arrays is None:
            return self.group[name]
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    async def _async_array(self, name: str):
        """The AsyncArray behind ``_array(name)`` (opened in the caller's event loop, cached alike)."""
        if self._arrays is not None and name in self._arrays:
            return self._arrays[name].async_array
        array = await self.group._async_group.getitem(name)
        if self._arrays is not None:
            self._arrays[name] = _zarr().Array(array)
        return array

    def _read_bytes(self, name: str, start: int, length: int) -> bytes:
        return self._read(name, start, start + length).tobytes() if length else b""

    def _find(self, item_id: str) -> int | None:
        """The row of an encoded id, or None."""
        found = self._find_record(item_id)
        return None if found is None else found[0]

    def _find_record(self, item_id: str) -> tuple[int, np.ndarray] | None:
        """(row, item record) of an encoded id, or None."""
        found = self._lookup(item_id, with_data=False)
        return None if found is None else found[:2]

    def _lookup(self, item_id: str, with_data: bool) -> tuple[int, np.ndarray, bytes | BaseException | None] | None:
        """(row, item record, its bitstream bytes or the error reading them) of an encoded id, or None.

        Reads the index chunk, the item row, the id bytes (compared with ``item_id``) and, ``with_data``,
        the bitstream; every row number, offset and length is checked against the arrays' sizes before it
        is read (ItemCorruptError naming the id), and anything zarr or the file system raises becomes an
        ItemCorruptError too. A local archive laid out as docs/archive-format.md says is read straight from
        its shard files (:class:`_ShardReader`: about ten small ``pread`` calls); anything else through
        zarr, in one pass through zarr's event loop (:meth:`_alookup`)."""
        try:
            return self._lookup_unchecked(item_id, with_data)
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - zarr, numcodecs, OS errors: a damaged archive, named per id
            raise ItemCorruptError(f"item {item_id!r} in {self.path} cannot be read, the archive is damaged: "
                                   f"{describe_exception(exc)}") from exc

    def _lookup_unchecked(self, item_id: str, with_data: bool):
        key = id_key(item_id)
        pending = self._unindexed().get(key, [])  # synchronous reads; normally nothing to read
        index = self.meta["index"]
        names = ([index["array"]] if index["capacity"] else []) + ["items", "ids"] + (["bitstreams"] if with_data else [])
        readers = [self._reader(name) for name in names]
        if None in readers:
            _ = self.group  # opened (lazily) here, not from inside zarr's event loop
            from zarr.core.sync import sync

            return sync(self._alookup(item_id, key, pending, with_data))
        readers = dict(zip(names, readers))
        candidates = []
        if index["capacity"]:
            table = readers[index["array"]]
            if table.rows != index["capacity"]:
                raise ArchiveCorruptError(f"{self.path}: the index table has {table.rows} slots, attribute "
                                          f"index.capacity says {index['capacity']}")
            start = _probe_start(key, index["capacity"], table.chunk)
            chunk = table.read(start, start + table.chunk)
            candidates = [int(row) for row in chunk[chunk[:, 0] == key, 1]]
        want = id_bytes(item_id)
        shapes = {"items": readers["items"].rows, "ids": readers["ids"].rows,
                  "bitstreams": readers["bitstreams"].rows if with_data else 1 << 62}
        damage = []
        for row in candidates + pending:
            if not 0 <= row < shapes["items"]:
                damage.append(f"the index points at row {row}, outside `items` ({shapes['items']} rows)")
                continue
            record = readers["items"].read(row, row + 1)[0]
            if not self._candidate(item_id, record, want, shapes, damage):
                continue
            start = int(record[I["id_offset"]])
            if readers["ids"].read(start, start + len(want)).tobytes() != want:
                continue
            if not with_data:
                return row, record, None
            offset, length = int(record[I["offset"]]), int(record[I["length"]])
            try:
                return row, record, readers["bitstreams"].read(offset, offset + length).tobytes()
            except ValueError as exc:  # a shard index or chunk fails its crc32c
                return row, record, exc
        return self._not_found(item_id, damage)

    def _candidate(self, item_id: str, record: np.ndarray, want: bytes, shapes: dict, damage: list) -> bool:
        """Whether an index candidate's row may hold ``item_id`` (its id is read next); a row whose id
        length matches but whose fields point outside the arrays is damage (raised if nothing else matches,
        at once when its id is this one: see :meth:`_lookup`)."""
        if record[I["status"]] != OK or int(record[I["id_length"]]) != len(want):
            return False
        problem = lookup_problem(record, shapes, len(self.meta["sources"]))
        if problem is not None:
            damage.append(problem)
            return False
        return True

    def _not_found(self, item_id: str, damage: list[str]) -> None:
        if damage:
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: {damage[0]}")
        return None

    def _reader(self, name: str) -> _ShardReader | None:
        """A direct reader of a local array, or None (not local, or not this format's layout: use zarr).
        Cached on a read-only object; a writer's arrays may be replaced (a rebuilt index), so it re-reads."""
        if not isinstance(self.path, Path):
            return None
        if self._arrays is None:
            return _ShardReader.open(self.path / name)
        if name not in self._readers:
            self._readers[name] = _ShardReader.open(self.path / name)
        return self._readers[name]

    async def _alookup(self, item_id: str, key: int, pending: list[int], with_data: bool):
        index = self.meta["index"]

        async def probe() -> list[int]:
            if not index["capacity"]:
                return []
            table = await self._async_array(index["array"])
            if int(table.shape[0]) != index["capacity"]:
                raise ArchiveCorruptError(f"{self.path}: the index table has {table.shape[0]} slots, attribute "
                                          f"index.capacity says {index['capacity']}")
            size = int(table.chunks[0])  # the table's own chunk size (its metadata), whatever this release creates
            start = _probe_start(key, index["capacity"], size)
            chunk = await table.getitem(slice(start, start + size))
            return [int(row) for row in chunk[chunk[:, 0] == key, 1]]

        names = ("items", "ids", "bitstreams") if with_data else ("items", "ids")
        candidates, items, ids, *bitstreams = await asyncio.gather(probe(), *map(self._async_array, names))
        want = id_bytes(item_id)
        shapes = {"items": int(items.shape[0]), "ids": int(ids.shape[0]),
                  "bitstreams": int(bitstreams[0].shape[0]) if with_data else 1 << 62}
        damage = []
        for row in candidates + pending:
            if not 0 <= row < shapes["items"]:
                damage.append(f"the index points at row {row}, outside `items` ({shapes['items']} rows)")
                continue
            record = await items.getitem(row)
            if not self._candidate(item_id, record, want, shapes, damage):
                continue
            start = int(record[I["id_offset"]])
            reads = [ids.getitem(slice(start, start + len(want)))]
            if with_data:
                offset, length = int(record[I["offset"]]), int(record[I["length"]])
                reads.append(bitstreams[0].getitem(slice(offset, offset + length)))
            stored, *data = await asyncio.gather(*reads, return_exceptions=True)
            if isinstance(stored, BaseException):
                raise stored
            if np.asarray(stored).tobytes() != want:
                continue
            if not with_data:
                return row, record, None
            return row, record, data[0] if isinstance(data[0], BaseException) else np.asarray(data[0]).tobytes()
        return self._not_found(item_id, damage)

    def _unindexed(self) -> dict[int, list[int]]:
        """key -> rows of committed segments the index does not cover yet (normally none)."""
        if self._pending is None:
            self._pending = {}
            if self.meta["index"]["segments"] >= self.meta["segments"]:  # all indexed: no table to read
                return self._pending
            segments = self.segments()[self.meta["index"]["segments"] :]
            for seg in segments:
                start, n = int(seg[S["row_start"]]), int(seg[S["rows"]])
                if start < 0 or n <= 0:
                    continue  # a damaged segment row: verify reports it
                for i, key in enumerate(self._array("items")[start : start + n, I["key"]]):
                    self._pending.setdefault(int(key), []).append(start + i)
        return self._pending

    def _located(self, item_id: str) -> tuple[int, np.ndarray]:
        found = self._find_record(item_id)
        if found is None:
            raise ItemNotFoundError(f"no item {item_id!r} in archive {self.path}")
        return found

    def position(self, item_id: str) -> int:
        """The id's row in ``items``; raises ItemNotFoundError."""
        return self._located(item_id)[0]

    def byte_range(self, item_id: str) -> tuple[int, int]:
        """Where the id's bitstream lies in the ``bitstreams`` array: [start, end)."""
        record = self._located(item_id)[1]
        return int(record[I["offset"]]), int(record[I["offset"]] + record[I["length"]])

    def item(self, item_id: str) -> Item:
        """The stored bitstream and metadata of one id, checksum verified."""
        found = self._lookup(item_id, with_data=True)
        if found is None:
            raise ItemNotFoundError(f"no item {item_id!r} in archive {self.path}")
        row, record, data = found
        return self._item_at(row, item_id, record, data)

    def _item_at(self, row: int, item_id: str, record: np.ndarray, data: bytes | BaseException) -> Item:
        if isinstance(data, BaseException):  # zarr's crc32c codec: the stored chunk itself is damaged
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: its zarr chunk is damaged "
                                   f"({describe_exception(data)})") from data
        if item_checksum(self.version, id_bytes(item_id), data) != int(record[I["checksum"]]):
            what = "id and bytes fail their" if self.version >= 3 else "bytes fail their"
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: stored {what} CRC-32C (row {row})")
        mode = int(record[I["mode"]])
        return Item(item_id, data, int(record[I["height"]]), int(record[I["width"]]),
                    self.meta["sources"][int(record[I["source"]])], MODES[mode] if 0 <= mode < len(MODES) else "?")

    def items(self, ids: list[str] | None = None):
        for item_id in self.ids if ids is None else ids:
            yield self.item(item_id)

    def errors(self) -> list[Failure]:
        """The errors table: every input a committed segment could not encode, with the reason (rows that
        are inconsistent are left out: :meth:`listing` and ``latentzip verify`` report them)."""
        out = []
        for number, seg, rows, ids, problem in self.scan():
            for record, (item_id, row_problem) in zip(rows, ids):
                if problem is None and row_problem is None and record[I["status"]] == FAILED:
                    try:
                        reason = self._read_bytes("reasons", int(record[I["offset"]]), int(record[I["length"]]))
                    except Exception as exc:  # noqa: BLE001 - zarr, numcodecs, OS errors: a damaged archive
                        raise ArchiveCorruptError(f"{self.path}: the reason of failed id {item_id!r} cannot be read: "
                                                  f"{describe_exception(exc)}") from exc
                    out.append(Failure(item_id, reason.decode("utf-8", "replace"),
                                       self.meta["sources"][int(record[I["source"]])]))
        return out

    def read_bytes(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes of the byte array ``name`` from ``start`` (for ``verify``; callers check the
        range against :meth:`shapes` first). Raises what zarr raises for a damaged chunk."""
        return self._read_bytes(name, start, length)

    def index_table(self, limit: int | None = None) -> tuple[np.ndarray, int]:
        """The whole hash table named by the attributes and its inner chunk size (for ``verify``); at most
        ``limit`` slots are read (the length a table's metadata claims is not trusted)."""
        array = self.group[self.meta["index"]["array"]]
        if array.ndim != 2 or array.shape[1] != 2:
            raise ArchiveCorruptError(f"index array {self.meta['index']['array']!r} has shape {array.shape}, not (N, 2)")
        return array[: limit], int(array.chunks[0])

    def index_entries(self) -> np.ndarray:
        """Every (key, row) pair in the hash table (for ``verify``)."""
        if not self.meta["index"]["capacity"]:
            return np.zeros((0, 2), np.int64)
        table = self.index_table()[0]
        return table[table[:, 0] != 0]

    def codec(self, **options):
        """The codec that wrote this archive, found from its provenance (or the ``model`` this object was
        opened with); never a different model. A remote ``model_ref`` (``http://``, ``s3://``, ...) is
        never fetched because an archive names it: only a ``model`` the caller gives, or a ref under one
        of the caller's ``allow_model_urls``, is (:class:`RemoteModelRefusedError` otherwise)."""
        if self._codec is None:
            from latentzip.codecs.hyperprior import CodecConfig
            from latentzip.codecs.registry import is_remote

            ref = self.model_override or self.meta["model_ref"]
            if self.model_override is None and is_remote(ref) and not _allowed(ref, self.allow_model_urls):
                raise RemoteModelRefusedError(
                    f"archive {self.path} names a remote model, {ref!r}; latentzip does not fetch code from a "
                    f"location an archive names: pass --model {ref} (or --allow-model-url with its prefix) to "
                    "fetch it, or --model with a local copy")
            try:
                options.setdefault("entropy_params", CodecConfig.from_dict(self.meta["codec"]).entropy_params)
            except (TypeError, ValueError) as exc:
                raise ArchiveCorruptError(f"archive {self.path}: attribute codec is not a codec config ({exc})") from exc
            codec = load_codec(ref, **options)
            if getattr(codec, "model_id", b"").hex() != self.model_id:
                raise ArchiveError(
                    f"model {ref!r} has id {getattr(codec, 'model_id', b'').hex()}, but archive "
                    f"{self.path} was written by model {self.model_id}"
                )
            self._codec = codec
        return self._codec

    def index_entries(self) -> np.ndarray:
        """Every (key, row) pair in the hash table (for ``verify``)."""
        index = self.meta["index"]
        if not index["capacity"]:
            return np.zeros((0, 2), np.int64)
        table = self.group[index["array"]][:]
        return table[table[:, 0] != 0]

    def decode(self, item_id: str):
        """Decode one id to an 8-bit RGB PIL image."""
        return self.codec().decode(self.item(item_id).data)


def _zarr():
    """zarr, imported when first needed: a one-id lookup in a local archive reads its files directly, and
    ``import latentzip.api`` should not pay for zarr's import."""
    import zarr

    return zarr


def open_archive(path: str | Path, model: str | None = None, allow_model_urls=()) -> Archive:
    """An archive for reading. ``model``: decode with this codec (a zoo name, a directory or a URL, still
    checked against the archive's model id) instead of the one its provenance names; ``allow_model_urls``:
    URL prefixes from which a remote ``model_ref`` of the archive may be fetched (by default none is)."""
    return Archive(path, model=model, allow_model_urls=allow_model_urls)


def _allowed(ref: str, prefixes) -> bool:
    return any(ref == p.rstrip("/") or ref.startswith(p.rstrip("/") + "/") for p in prefixes if p)


def check_archive_location(path: str | Path) -> None:
    """Raise ArchiveError unless a local ``path`` is an archive, or a place where one can be created (a new
    or empty folder in a writable folder). URLs are left to the first write."""
    path = location(path)
    if not isinstance(path, Path):
        return
    if path.exists() and not path.is_dir():
        raise ArchiveError(f"archive {path} exists and is not a folder")
    if path.is_dir() and not (path / "zarr.json").is_file() and any(path.iterdir()):
        raise ArchiveError(f"archive {path} is a folder that is not empty and not a Zarr archive")
    parent = next((p for p in (path, *path.parents) if p.exists()), None)
    if parent is not None and (not parent.is_dir() or not os.access(parent, os.W_OK)):
        raise ArchiveError(f"archive {path} cannot be written: {parent} is not a writable folder")


def location(path: str | Path) -> str | Path:
    """A local archive as a Path (``file://`` URLs included); any other URL (``s3://...``) as its string."""
    return storage.normalise(path)


def _local_group_attributes(path: Path) -> dict | None:
    """The attributes in a local group's zarr.json, or None (not a Zarr v3 group: zarr says why)."""
    try:
        meta = json.loads(_read_file(path / "zarr.json", 0, 1 << 26))
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and meta.get("zarr_format") == 3 and meta.get("node_type") == "group"
    return meta.get("attributes", {}) if ok and isinstance(meta.get("attributes", {}), dict) else None


_EMPTY_CHUNK = (1 << 64) - 1  # offset and length of a chunk a shard does not store


def _read_file(path: Path, start: int, length: int | None = None) -> bytes:
    """``length`` bytes of a file from ``start``, or with a negative ``start`` its last ``-start`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if start < 0:
            size = os.fstat(fd).st_size
            start, length = max(0, size + start), min(size, -start)
        parts = []
        while length > 0:
            part = os.pread(fd, length, start)
            if not part:
                break
            parts.append(part)
            start, length = start + len(part), length - len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


class _ShardReader:
    """Reads rows of one local array of this format straight from its shard files, as zarr would but
    without zarr's per-read machinery (about 0.3 ms a read, and a lookup makes four dependent reads).

    Only for an array whose ``zarr.json`` is exactly this format's layout (docs/archive-format.md):
    ``uint8``/``int64``, regular grid, default ``/`` keys, one ``sharding_indexed`` codec with the index
    at the end (``bytes`` little-endian + ``crc32c``), inner codecs ``bytes`` [+ ``zstd``] + ``crc32c``,
    a 2-D array's chunks spanning every column. Every size comes from that metadata; :meth:`open` returns
    None for anything else, and zarr reads it. Shard indexes and chunks are CRC-32C-checked (ValueError,
    as zarr's crc32c codec raises); a chunk or shard that is not stored reads as the fill value."""

    def __init__(self, folder: Path, dtype: str, shape: list, shard: int, chunk: int, zstd: bool, fill):
        self.folder, self.dtype, self.row_shape = folder, np.dtype(dtype).newbyteorder("<"), tuple(shape[1:])
        self.rows = int(shape[0])  # the array's length (first axis), from its metadata
        self.shard, self.chunk, self.zstd, self.fill = shard, chunk, zstd, fill
        self.per_shard = shard // chunk
        self.suffix = "/0" * len(self.row_shape)

    @classmethod
    def open(cls, folder: Path) -> _ShardReader | None:
        try:
            meta = json.loads(_read_file(folder / "zarr.json", 0, 1 << 20))
            keys = meta["chunk_key_encoding"]
            [sharding] = meta["codecs"]
            config = sharding["configuration"]
            shape, shard, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"], config["chunk_shape"]
            inner = [codec["name"] for codec in config["codecs"]]
            index = config["index_codecs"]
            ok = (meta["zarr_format"] == 3 and meta["node_type"] == "array" and meta["data_type"] in ("uint8", "int64")
                  and not meta.get("storage_transformers") and meta["chunk_grid"]["name"] == "regular"
                  and keys["name"] == "default" and keys.get("configuration", {}).get("separator", "/") == "/"
                  and sharding["name"] == "sharding_indexed" and config.get("index_location", "end") == "end"
                  and [codec["name"] for codec in index] == ["bytes", "crc32c"]
                  and index[0].get("configuration", {}).get("endian", "little") == "little"
                  and inner in (["bytes", "crc32c"], ["bytes", "zstd", "crc32c"])
                  and config["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and len(shape) in (1, 2) and len(shard) == len(chunk) == len(shape)
                  and all(isinstance(v, int) and v >= 0 for v in (*shape, *shard, *chunk))
                  and chunk[0] > 0 and shard[0] % chunk[0] == 0 and shard[0] > 0
                  and shard[1:] == chunk[1:] == shape[1:])
            fill = meta["fill_value"]
            if not ok or not isinstance(fill, int):
                return None
            return cls(folder, meta["data_type"], shape, int(shard[0]), int(chunk[0]), "zstd" in inner, fill)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _index(self, path: Path) -> np.ndarray | None:
        """(offset, length) of each chunk of one shard file, or None if the file is not stored."""
        size = 16 * self.per_shard
        try:
            raw = _read_file(path, -(size + 4))
        except FileNotFoundError:
            return None
        if len(raw) != size + 4 or google_crc32c.value(raw[:size]) != int.from_bytes(raw[size:], "little"):
            raise ValueError(f"{path}: shard index fails its crc32c checksum")
        return np.frombuffer(raw, "<u8", 2 * self.per_shard).reshape(self.per_shard, 2)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis."""
        out = np.full((max(0, stop - start),) + self.row_shape, self.fill, self.dtype)
        c = self.chunk
        nbytes = c * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        indexes: dict[int, np.ndarray | None] = {}
        for k in range(start // c, -(-stop // c)) if stop > start else ():
            number, local = divmod(k, self.per_shard)
            path = self.folder / "c" / f"{number}{self.suffix}"
            if number not in indexes:
                indexes[number] = self._index(path)
            if indexes[number] is None:
                continue
            offset, length = (int(v) for v in indexes[number][local])
            if offset == _EMPTY_CHUNK and length == _EMPTY_CHUNK:
                continue
            raw = _read_file(path, offset, length)
            if len(raw) != length or length < 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ValueError(f"{path}: chunk {local} fails its crc32c checksum")
            raw = raw[:-4]
            if self.zstd:
                raw = _ZSTD.decode(raw)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: chunk {local} holds {len(raw)} bytes, not {nbytes}")
            block = np.frombuffer(raw, self.dtype).reshape((c,) + self.row_shape)
            lo, hi = max(start, k * c), min(stop, (k + 1) * c)
            out[lo - start : hi - start] = block[lo - k * c : hi - k * c]
        return out


_ZSTD = numcodecs.Zstd()


def _has_file(where: str | Path, name: str) -> bool:
    return storage.is_file(storage.join(where, name))


def _probe_start(key: int, capacity: int, size: int) -> int:
    """First slot of the ``size``-slot index chunk holding ``key``'s slot: probing never leaves it (see
    _insert). ``size`` is the table's own inner chunk (from its metadata), whatever this release creates."""
    return (key & (capacity - 1)) // size * size


def _insert(table: np.ndarray, base: int, capacity: int, keys: np.ndarray, rows: np.ndarray, size: int) -> bool:
    """Insert (key, row) pairs into ``table`` (index rows ``base``...); linear probing wraps inside the
    slot's ``size``-slot chunk (the table's inner chunk), so a lookup reads one chunk. Idempotent. False if a
    chunk is full (grow the table)."""
    for key, row in zip(keys.tolist(), rows.tolist()):
        slot = (key & (capacity - 1)) - base
        chunk = slot // size * size
        for j in range(size):
            at = chunk + (slot - chunk + j) % size
            if table[at, 0] == 0:
                table[at] = (key, row)
                break
            if table[at, 0] == key and table[at, 1] == row:
                break
        else:
            return False
    return True


def _lock(path: Path) -> None:
    """Hold an exclusive flock on the archive folder for the rest of this process (one writing process per
    archive; the kernel drops the lock when the process dies, so a killed job never blocks its rerun)."""
    key = str(path.resolve())
    if key in _LOCKS:
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ArchiveError(f"{path} is being written by another process (one encode job per archive at a time)") from None
    _LOCKS[key] = fd


class ArchiveWriter(Archive):
    """Adds segments to an archive, creating it on first use; one writing process per archive (locked).

    Every write re-reads the group attributes first, so several writer objects in one process stay
    consistent as long as they take turns.
    """

    @classmethod
    def open_or_create(cls, path: str | Path, codec_card: dict, model_ref: str) -> "ArchiveWriter":
        path = location(path)
        if not _has_file(path, "zarr.json"):
            _create(path, codec_card, model_ref)
        writer = cls(path, mode="r+")
        if writer.model_id != codec_card["model_id"]:
            raise ArchiveError(
                f"{path} was written by model {writer.meta.get('model_ref')!r}, not by {str(model_ref)!r}: "
                f"refusing to add its images (encode into a new archive, or use --model "
                f"{writer.meta.get('model_ref')}); model ids {writer.model_id} and {codec_card['model_id']}"
            )
        if isinstance(path, Path):  # object storage: no lock (see the module docstring)
            _lock(path)
        writer.update_index(force=True)  # segments a killed job committed but never indexed
        return writer

    def _commit(self, row_start: int = 0, new_rows: np.ndarray | None = None) -> None:
        """Write the attributes (the commit point). ``new_rows`` (from ``row_start``): the item rows of a
        segment just committed, added to the unindexed-keys cache instead of rescanning every segment."""
        self.group.attrs[ATTRS_KEY] = self.meta
        pending = self._pending if new_rows is not None else None
        if pending is not None:
            for offset, record in enumerate(new_rows):
                if record[I["status"]] == OK:
                    pending.setdefault(int(record[I["key"]]), []).append(row_start + offset)
        self._ids, self._pending = None, pending
        self._state = (self.meta["segments"], self.meta["index"]["segments"], self.meta["index"]["array"])

    def start_job(self, job_id: str, args: dict) -> None:
        self._refresh()
        self.meta["jobs"].append({"job_id": job_id, "started": _now(), "args": args})
        self._commit()

    def finish_job(self, summary: dict, job_id: str | None = None) -> None:
        """Record the job's summary and fold every committed segment into the index."""
        self._refresh()
        jobs = self.meta["jobs"]
        job = next((j for j in reversed(jobs) if j["job_id"] == job_id), jobs[-1]) if job_id else jobs[-1]
        job.update(finished=_now(), **summary)
        self._commit()
        self.update_index(force=True)

    def completed_units(self) -> set[str]:
        """The units of work (e.g. shard paths) whose completion marker is committed."""
        units = self.segments()[:, S["unit"]]
        return {self.meta["sources"][int(u)] for u in units if u >= 0}

    def known(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already encoded in the archive."""
        return {item_id for item_id in dict.fromkeys(ids) if self._find(item_id) is not None}

    def append(self, items: list[Item], failures: list[Failure] = (), unit: str | None = None) -> int:
        """Write one segment: ``items`` whose ids are not in the archive yet (first of duplicates wins),
        ``failures`` into the errors table, and, with ``unit``, the unit's completion marker. Returns how
        many items were written."""
        self._refresh()
        known = self.known([item.id for item in items])
        fresh, seen = [], set()
        for item in items:
            if item.id not in known and item.id not in seen:
                fresh.append(item)
                seen.add(item.id)
        if fresh or failures or unit is not None:
            self._write_segment(fresh, list(failures), unit)
        return len(fresh)

    def _source(self, name: str) -> int:
        sources = self.meta["sources"]
        if name not in sources:
            sources.append(name)
        return sources.index(name)

    def _write_segment(self, items: list[Item], failures: list[Failure], unit: str | None) -> None:
        meta, ends = self.meta, self.meta["ends"]
        n = len(items) + len(failures)
        ids = [id_bytes(x.id) for x in items] + [id_bytes(f.id) for f in failures]
        reasons = [f.reason.encode() for f in failures]
        table = np.full((n, len(ITEM_COLUMNS)), -1, dtype=np.int64)
        if n:
            table[:, I["key"]] = [id_key(x.id) for x in items] + [id_key(f.id) for f in failures]
            table[:, I["status"]] = [OK] * len(items) + [FAILED] * len(failures)
            table[:, I["id_length"]] = [len(b) for b in ids]
            table[:, I["id_offset"]] = ends["ids"] + np.concatenate(([0], np.cumsum(table[:-1, I["id_length"]])))
            lengths = [len(x.data) for x in items] + [len(r) for r in reasons]
            table[:, I["length"]] = lengths
            data_starts = ends["bitstreams"] + np.concatenate(([0], np.cumsum(lengths[: len(items)])))[: len(items)]
            reason_starts = ends["reasons"] + np.concatenate(([0], np.cumsum(lengths[len(items) :])))[: len(failures)]
            table[:, I["offset"]] = np.concatenate((data_starts, reason_starts)).astype(np.int64)
            table[: len(items), I["height"]] = [x.height for x in items]
            table[: len(items), I["width"]] = [x.width for x in items]
            # The archive's own version decides what the checksum covers: appending to a format 2 archive
            # keeps it format 2 (docs/archive-format.md, "Versions").
            table[: len(items), I["checksum"]] = [item_checksum(self.version, b, x.data) for x, b in zip(items, ids)]
            table[: len(items), I["mode"]] = [MODES.index(x.mode) if x.mode in MODES else -1 for x in items]
            table[:, I["source"]] = [self._source(x.source) for x in items] + [self._source(f.source) for f in failures]
            table[:, I["segment"]] = meta["segments"]
        blobs = {"ids": b"".join(ids), "bitstreams": b"".join(x.data for x in items), "reasons": b"".join(reasons)}
        starts = dict(ends)
        for name, blob in blobs.items():
            if blob:
                ends[name] = _align(starts[name] + len(blob), self._write_bytes(name, starts[name], blob))
        if n:
            # The rows are written up to the end of their last zarr shard (fill rows after them), so a
            # segment owns whole shards and no stale row of a killed earlier attempt survives in them.
            end = _align(starts["items"] + n, _shard(self.group["items"]))
            padded = np.full((end - starts["items"], len(ITEM_COLUMNS)), -1, dtype=np.int64)
            padded[:n] = table
            self._write_rows("items", starts["items"], padded)
            ends["items"] = end
        unit_index = self._source(unit) if unit is not None else -1
        segment = [starts["items"], n, starts["ids"], len(blobs["ids"]), starts["bitstreams"],
                   len(blobs["bitstreams"]), starts["reasons"], len(blobs["reasons"]), len(items),
                   len(failures), unit_index, len(meta["jobs"]) - 1]
        self._write_rows("segments", meta["segments"], np.asarray([segment], dtype=np.int64))
        # The completion marker: raising the segment count (one atomic rewrite of zarr.json) commits it.
        meta["segments"] += 1
        meta["count"] += len(items)
        meta["failures"] += len(failures)
        self._commit(starts["items"], table)
        self.update_index(force=False)

    def _write_bytes(self, name: str, start: int, blob: bytes) -> int:
        """Write ``blob`` at ``start``; returns the array's shard size (its metadata's, not this release's)."""
        array = self.group[name]
        if array.shape[0] < start + len(blob):
            array.resize((start + len(blob),))
        array[start : start + len(blob)] = np.frombuffer(blob, dtype=np.uint8)
        return _shard(array)

    def _write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        array = self.group[name]
        if array.shape[0] < start + len(rows):
            array.resize((start + len(rows), array.shape[1]))
        array[start : start + len(rows)] = rows

    def update_index(self, force: bool = True) -> None:
        """Fold committed segments the index does not cover into it (all when ``force``, else once
        ``_INDEX_LAG`` rows wait), growing (rebuilding) the table to keep it at most half full."""
        self._refresh()
        index, committed = self.meta["index"], self.meta["segments"]
        todo = self.segments()[index["segments"] :]
        if not len(todo) or (not force and todo[:, S["rows"]].sum() < _INDEX_LAG):
            return
        keys, rows = self._ok_keys(todo)
        entries = index["entries"] + len(keys)
        capacity = index["capacity"]
        if not capacity or 2 * entries > capacity or not self._insert_in_place(keys, rows):
            keys, rows = self._ok_keys(self.segments())
            capacity = max(_INDEX_MIN, capacity)
            while capacity < 4 * entries:
                capacity *= 2
            self._rebuild_index(keys, rows, capacity)
            return
        self.meta["index"] = {**index, "segments": committed, "entries": entries}
        self._commit()

    def _ok_keys(self, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keys, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
        for seg in segments:
            start, n = int(seg[S["row_start"]]), int(seg[S["rows"]])
            if n:
                table = self.group["items"][start : start + n]
                ok = table[:, I["status"]] == OK
                keys.append(table[ok, I["key"]])
                rows.append(start + np.flatnonzero(ok))
        return np.concatenate(keys), np.concatenate(rows)

    def _insert_in_place(self, keys: np.ndarray, rows: np.ndarray) -> bool:
        index = self.meta["index"]
        array, capacity = self.group[index["array"]], index["capacity"]
        shard_size, chunk_size = _shard(array), int(array.chunks[0])  # this table's own, from its metadata
        shard_of = (keys & (capacity - 1)) // shard_size
        for shard in np.unique(shard_of):
            start = int(shard) * shard_size
            block = array[start : start + shard_size]  # read and written back whole: one zarr shard
            mine = shard_of == shard
            if not _insert(block, start, capacity, keys[mine], rows[mine], chunk_size):
                return False
            array[start : start + shard_size] = block
        return True

    def _rebuild_index(self, keys: np.ndarray, rows: np.ndarray, capacity: int) -> None:
        table = np.zeros((capacity, 2), dtype=np.int64)
        while not _insert(table, 0, capacity, keys, rows, min(_INDEX_CHUNK, capacity)):
            capacity *= 2
            table = np.zeros((capacity, 2), dtype=np.int64)
        name = f"index_{capacity.bit_length() - 1}"
        old = self.meta["index"]["array"]
        array = self.group.create_array(name, shape=(capacity, 2), dtype="int64", chunks=(min(_INDEX_CHUNK, capacity), 2),
                                        shards=(min(_INDEX_SHARD, capacity), 2),
                                        compressors=_compressors("index" not in _UNCOMPRESSED),
                                        fill_value=0, overwrite=True)
        array[:] = table
        self.meta["index"] = {"array": name, "capacity": capacity, "segments": self.meta["segments"],
                              "entries": len(keys)}
        self._commit()
        if old and old != name and old in self.group:
            del self.group[old]


def _compressors(compress: bool = True):
    # crc32c inside each chunk's codecs: zarr's sharding codec checksums only its shard index by default.
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=3), Crc32cCodec()] if compress else [Crc32cCodec()]


def _shard(array) -> int:
    """An array's zarr shard length along its first axis (from its metadata)."""
    return int(array.shards[0] if array.shards else array.chunks[0])


def _create(path: str | Path, codec_card: dict, model_ref: str) -> None:
    group = _zarr().open_group(str(path), mode="w-", zarr_format=3)
    for name, (chunk, shard) in _BYTE_ARRAYS.items():
        group.create_array(name, shape=(0,), dtype="uint8", chunks=(chunk,), shards=(shard,),
                           compressors=_compressors(name not in _UNCOMPRESSED), fill_value=0)
    for name, (columns, chunk, shard) in _TABLES.items():
        group.create_array(name, shape=(0, columns), dtype="int64", chunks=(chunk, columns),
                           shards=(shard, columns), compressors=_compressors(name not in _UNCOMPRESSED), fill_value=-1,
                           attributes={"columns": list(ITEM_COLUMNS if name == "items" else SEGMENT_COLUMNS)})
    group.attrs[ATTRS_KEY] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_id": codec_card["model_id"],
        "codec": codec_card["config"],
        "model_ref": str(model_ref),
        "package_version": latentzip.__version__,
        "created": _now(),
        "modes": list(MODES),
        "segments": 0,
        "count": 0,
        "failures": 0,
        "ends": {"items": 0, "ids": 0, "bitstreams": 0, "reasons": 0},
        "index": {"array": "", "capacity": 0, "segments": 0, "entries": 0},
        "sources": [],
        "jobs": [],
    }
