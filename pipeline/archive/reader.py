"""Read access to an archive: :func:`open_archive` and :class:`Archive` (ids, stored bytes, per-item
metadata, errors, provenance). Storage only: which model decodes the bytes is
:mod:`latentzip.pipeline.decoding`'s business.

Where: a local folder (a path or a ``file://`` URL), or any fsspec URL zarr can open (``s3://``,
``gs://``, ``memory://``...; the filesystem's package must be installed, e.g. s3fs, and it is configured
the usual way: for S3, AWS_* variables, AWS_ENDPOINT_URL for an S3-compatible endpoint).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

import latentzip
from latentzip.pipeline import storage
from latentzip.pipeline.archive import index
from latentzip.pipeline.archive.arrays import has_file, local_group_attributes, open_reader, zarr
from latentzip.pipeline.archive.checks import describe_exception, meta_problems
from latentzip.pipeline.archive.format import (ATTRS_KEY, FAILED, FORMAT, ITEM_COLUMNS, MODES, READ_VERSIONS,
                                               SEGMENT_COLUMNS, ArchiveCorruptError, ArchiveError, Failure, I,
                                               Item, ItemCorruptError, ItemNotFoundError, id_bytes, item_checksum)
from latentzip.pipeline.archive.provenance import Provenance


class Archive:
    """Read access to an archive. Opening reads the group attributes only; a lookup reads one index chunk,
    one item row and the id's bytes (plus, while a writer is mid-job, the keys of segments it has not indexed
    yet). ``direct``: read a local archive's shard files directly where their layout allows (the default,
    about ten times faster per read); False reads everything through zarr, as on object storage."""

    def __init__(self, path: str | Path, mode: str = "r", direct: bool = True):
        self.path = location(path)
        self.direct = direct
        if not has_file(self.path, "zarr.json"):
            raise ArchiveError(f"{self.path} is not a Zarr v3 archive (no zarr.json)")
        self._mode, self._group = mode, None
        # A local read-only archive reads its group's zarr.json directly and opens the zarr group only when
        # something needs it (a lookup does not); anything else opens it now.
        local = mode == "r" and isinstance(self.path, Path)
        attributes = local_group_attributes(self.path) if local else None
        if attributes is None:
            try:
                self._group = zarr().open_group(str(self.path), mode=mode)
            except (OSError, ValueError, KeyError, TypeError) as exc:  # JSON or UTF-8 errors of a damaged zarr.json
                raise ArchiveCorruptError(f"{self.path}: its zarr.json cannot be read as a Zarr v3 group: "
                                          f"{describe_exception(exc)}") from exc
        # Read-only: each array's reader is opened once per object, not on every lookup (a writer's arrays
        # change shape, so it opens them afresh).
        self._cache = mode == "r"
        self._refresh(attributes)

    @property
    def group(self):
        """The archive's zarr group."""
        if self._group is None:
            self._group = zarr().open_group(str(self.path), mode=self._mode)
        return self._group

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
            self._readers: dict = {}
            self._ids: list[str] | None = None
            self._pending: dict[int, list[int]] | None = None
        if not hasattr(self, "provenance"):
            self.provenance = Provenance(self)

    @property
    def version(self) -> int:
        """The archive's format version: 3 on binds each id to its bytes in the checksum, 2 does not; 4 on
        keeps provenance in records of its own (docs/archive-format.md, "Versions")."""
        return self.meta["format_version"]

    # -- provenance --------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    @property
    def num_sources(self) -> int:
        return self.provenance.num_sources

    def source(self, number: int) -> str:
        """The name of source ``number`` (an item's ``source``, a segment's ``unit``)."""
        return self.provenance.source(number)

    def sources(self) -> list[str]:
        """Every source name, in number order."""
        return self.provenance.sources()

    def jobs(self) -> list[dict]:
        """Every job record (``job_id``, ``started``, ``args``, and once finished ``finished`` and its summary)."""
        return self.provenance.jobs()

    # -- listing ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.meta["count"]

    def __contains__(self, item_id: str) -> bool:
        return self._find_record(item_id) is not None

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
        from latentzip.pipeline.archive.listing import listing

        return listing(self)

    def scan(self, segments: np.ndarray | None = None):
        """Each committed segment, checked before anything is read from its fields (see
        :func:`latentzip.pipeline.archive.listing.scan`)."""
        from latentzip.pipeline.archive.listing import scan

        return scan(self, segments)

    def segments(self, start: int = 0) -> np.ndarray:
        """The committed segment records from number ``start`` on, one row per ``SEGMENT_COLUMNS``."""
        count = self.meta["segments"]
        if start >= count:
            return np.zeros((0, len(SEGMENT_COLUMNS)), np.int64)
        return self.reader("segments").read(start, count)

    def shapes(self) -> dict[str, int]:
        """Lengths of the byte arrays and tables (first axis) from their metadata; a missing array is left
        out (its readers then report it)."""
        out = {}
        for name in ("items", "ids", "bitstreams", "reasons", "segments"):
            try:
                out[name] = self.reader(name).rows
            except Exception:  # noqa: BLE001 - a damaged or deleted array: reported where it is read
                pass
        return out

    def read_rows(self, start: int, n: int) -> np.ndarray:
        """Rows ``[start, start + n)`` of ``items`` (callers check the range against :meth:`shapes`)."""
        return self.reader("items").read(start, start + n) if n > 0 else np.zeros((0, len(ITEM_COLUMNS)), np.int64)

    def read_bytes(self, name: str, start: int, length: int) -> bytes:
        """``length`` bytes of the byte array ``name`` from ``start`` (callers check the range against
        :meth:`shapes` first). Raises what the reader raises for a damaged chunk."""
        return self.reader(name).read(start, start + length).tobytes() if length else b""

    # -- the reader interface ----------------------------------------------------------------------------
    def reader(self, name: str):
        """The reader of array ``name`` (:mod:`.arrays`); cached on a read-only object, opened afresh by a
        writer, whose arrays grow and whose index table may be replaced."""
        if self._cache and name in self._readers:
            return self._readers[name]
        reader = open_reader(self.path, name, lambda: self.group, self.direct)
        if self._cache:
            self._readers[name] = reader
        return reader

    def readers(self, names: list[str]) -> dict:
        """Readers of several arrays; those opened through zarr are opened concurrently (on object storage
        each is a request for its metadata)."""
        found = {n: self._readers[n] for n in names if self._cache and n in self._readers}
        missing = [n for n in names if n not in found]
        if len(missing) > 1 and self.overlapped_reads:
            _ = self.group  # opened here, once, not by several threads at a time
            opened = index.concurrently([lambda n=n: self.reader(n) for n in missing], True)
            for reader in opened:
                if isinstance(reader, BaseException):
                    raise reader
            found.update(zip(missing, opened))
        else:
            found.update((n, self.reader(n)) for n in missing)
        return {name: found[name] for name in names}

    @property
    def overlapped_reads(self) -> bool:
        """Whether independent reads go out together, on threads: on a store whose reads wait on the
        network (an fsspec filesystem with an async implementation: S3, GCS, HTTP...). Locally, and in
        ``memory://``, a thread's hand-off costs more than the read."""
        if not hasattr(self, "_overlapped"):
            self._overlapped = isinstance(self.path, str) and bool(getattr(storage.filesystem(self.path)[0],
                                                                           "async_impl", False))
        return self._overlapped

    def unindexed(self) -> dict[int, list[int]]:
        """key -> rows of committed segments the index does not cover yet (normally none)."""
        if self._pending is None:
            self._pending = index.unindexed(self)
        return self._pending

    # -- lookups ---------------------------------------------------------------------------------------
    def _lookup(self, item_id: str, with_data: bool):
        """:func:`.index.lookup`, with anything zarr or the file system raises made an ItemCorruptError naming
        the id."""
        try:
            return index.lookup(self, item_id, with_data)
        except ArchiveError:
            raise
        except Exception as exc:  # noqa: BLE001 - zarr, numcodecs, OS errors: a damaged archive, named per id
            raise ItemCorruptError(f"item {item_id!r} in {self.path} cannot be read, the archive is damaged: "
                                   f"{describe_exception(exc)}") from exc

    def _find_record(self, item_id: str) -> tuple[int, np.ndarray] | None:
        """(row, item record) of an encoded id, or None."""
        found = self._lookup(item_id, with_data=False)
        return None if found is None else found[:2]

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
        if isinstance(data, BaseException):  # a shard index or chunk fails its crc32c: the stored chunk is damaged
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: its zarr chunk is damaged "
                                   f"({describe_exception(data)})") from data
        if item_checksum(self.version, id_bytes(item_id), data) != int(record[I["checksum"]]):
            what = "id and bytes fail their" if self.version >= 3 else "bytes fail their"
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: stored {what} CRC-32C (row {row})")
        mode = int(record[I["mode"]])
        try:
            source = self.source(int(record[I["source"]]))
        except ArchiveCorruptError as exc:  # a missing or damaged provenance record
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: its source cannot be named: {exc}") from exc
        return Item(item_id, data, int(record[I["height"]]), int(record[I["width"]]), source,
                    MODES[mode] if 0 <= mode < len(MODES) else "?")

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
                        reason = self.read_bytes("reasons", int(record[I["offset"]]), int(record[I["length"]]))
                    except Exception as exc:  # noqa: BLE001 - zarr, numcodecs, OS errors: a damaged archive
                        raise ArchiveCorruptError(f"{self.path}: the reason of failed id {item_id!r} cannot be read: "
                                                  f"{describe_exception(exc)}") from exc
                    out.append(Failure(item_id, reason.decode("utf-8", "replace"), self.source(int(record[I["source"]]))))
        return out

    # -- the index, whole (for verify) -------------------------------------------------------------------
    def index_table(self, limit: int | None = None) -> tuple[np.ndarray, int]:
        """The whole hash table named by the attributes and its inner chunk size; at most ``limit`` slots
        are read (the length a table's metadata claims is not trusted)."""
        array = self.group[self.meta["index"]["array"]]
        if array.ndim != 2 or array.shape[1] != 2:
            raise ArchiveCorruptError(f"index array {self.meta['index']['array']!r} has shape {array.shape}, not (N, 2)")
        return array[: limit], int(array.chunks[0])

    def index_entries(self) -> np.ndarray:
        """Every (key, row) pair in the hash table."""
        if not self.meta["index"]["capacity"]:
            return np.zeros((0, 2), np.int64)
        table = self.index_table()[0]
        return table[table[:, 0] != 0]

    def array_problem(self, name: str) -> str:
        """Why array ``name`` cannot be opened through zarr ("unknown" if it can)."""
        try:
            self.group[name]
        except Exception as exc:  # noqa: BLE001 - the reason is the finding
            return describe_exception(exc)
        return "unknown"


def open_archive(path: str | Path, direct: bool = True) -> Archive:
    """An archive for reading (``direct``: see :class:`Archive`). To decode its items with the model that
    wrote them, open it with :func:`latentzip.pipeline.decoding.open_archive` instead."""
    return Archive(path, direct=direct)


def location(path: str | Path) -> str | Path:
    """A local archive as a Path (``file://`` URLs included); any other URL (``s3://...``) as its string."""
    return storage.normalise(path)


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
