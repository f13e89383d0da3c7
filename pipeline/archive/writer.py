"""Writing an archive: :class:`ArchiveWriter` adds segments, creating the archive on first use.

Items arrive in *segments* (one per unit of work: a shard or a file group). Each segment's rows and bytes
start on a fresh zarr shard of every array, so no zarr shard is ever written by two segments; the segment's
row in ``segments`` plus the group attribute ``segments`` (the count, raised last: one rewrite of the
group's zarr.json, whose size does not grow with the archive's history) are its completion marker.

The single-writer lock is a local ``flock``, so it guards local archives only: object stores offer no such
lock here, and keeping to one encode job per archive on object storage is the caller's job.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import numpy as np

import latentzip
from latentzip.pipeline.archive import index
from latentzip.pipeline.archive import provenance as records
from latentzip.pipeline.archive.arrays import compressors, has_file, shard_length, zarr
from latentzip.pipeline.archive.format import (ATTRS_KEY, DEFAULT_LAYOUT, FAILED, FORMAT, FORMAT_VERSION,
                                               INDEX_LAG, ITEM_COLUMNS, MODES, OK, READ_VERSIONS, RECORDS_VERSION,
                                               SEGMENT_COLUMNS, ArchiveError, Failure, I, Item, Layout, S, align,
                                               id_bytes, id_key, item_checksum, now)
from latentzip.pipeline.archive.reader import Archive, location

_LOCKS: dict[str, int] = {}


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

    layout: Layout = DEFAULT_LAYOUT

    @classmethod
    def open_or_create(cls, path: str | Path, codec_card: dict, model_ref: str, *, version: int = FORMAT_VERSION,
                       layout: Layout = DEFAULT_LAYOUT) -> "ArchiveWriter":
        """The writer of the archive at ``path``, created (in format ``version``, with the chunk and shard
        sizes of ``layout``) if there is none; an existing archive keeps its own version and sizes, and must
        have been written by the model of ``codec_card``. ``version`` and ``layout`` other than the
        defaults write archives as earlier releases did (tests of reading and appending to them)."""
        path = location(path)
        if not has_file(path, "zarr.json"):
            if version not in READ_VERSIONS:
                raise ValueError(f"cannot create an archive of format {version}: this release writes "
                                 f"{', '.join(map(str, READ_VERSIONS))}")
            _create(path, codec_card, model_ref, version, layout)
        writer = cls(path, mode="r+")
        writer.layout = layout
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
        self.provenance.start_job(job_id, args)
        self._commit()

    def finish_job(self, summary: dict, job_id: str | None = None) -> None:
        """Record the job's summary and fold every committed segment into the index."""
        self._refresh()
        self.provenance.finish_job(summary, job_id)
        if self.version < RECORDS_VERSION:  # the records are the attributes
            self._commit()
        self.update_index(force=True)

    def completed_units(self) -> set[str]:
        """The units of work (e.g. shard paths) whose completion marker is committed."""
        units = self.segments()[:, S["unit"]]
        names = self.sources()
        return {names[int(u)] for u in units if 0 <= u < len(names)}

    def known(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` are already encoded in the archive."""
        return {item_id for item_id in dict.fromkeys(ids) if self._find_record(item_id) is not None}

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

    def _rows(self, items: list[Item], failures: list[Failure], ids: list[bytes], reasons: list[bytes]) -> np.ndarray:
        """The segment's ``items`` rows (ITEM_COLUMNS), offsets from the attribute ``ends``."""
        ends, n = self.meta["ends"], len(items) + len(failures)
        table = np.full((n, len(ITEM_COLUMNS)), -1, dtype=np.int64)
        if not n:
            return table
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
        number = self.provenance.number
        table[:, I["source"]] = [number(x.source) for x in items] + [number(f.source) for f in failures]
        table[:, I["segment"]] = self.meta["segments"]
        return table

    def _write_segment(self, items: list[Item], failures: list[Failure], unit: str | None) -> None:
        meta, ends = self.meta, self.meta["ends"]
        n = len(items) + len(failures)
        ids = [id_bytes(x.id) for x in items] + [id_bytes(f.id) for f in failures]
        reasons = [f.reason.encode() for f in failures]
        table = self._rows(items, failures, ids, reasons)
        blobs = {"ids": b"".join(ids), "bitstreams": b"".join(x.data for x in items), "reasons": b"".join(reasons)}
        starts = dict(ends)
        for name, blob in blobs.items():
            if blob:
                ends[name] = align(starts[name] + len(blob), self._write_bytes(name, starts[name], blob))
        if n:
            # The rows are written up to the end of their last zarr shard (fill rows after them), so a
            # segment owns whole shards and no stale row of a killed earlier attempt survives in them.
            end = align(starts["items"] + n, shard_length(self.group["items"]))
            padded = np.full((end - starts["items"], len(ITEM_COLUMNS)), -1, dtype=np.int64)
            padded[:n] = table
            self._write_rows("items", starts["items"], padded)
            ends["items"] = end
        unit_index = self.provenance.number(unit) if unit is not None else -1
        segment = [starts["items"], n, starts["ids"], len(blobs["ids"]), starts["bitstreams"],
                   len(blobs["bitstreams"]), starts["reasons"], len(blobs["reasons"]), len(items),
                   len(failures), unit_index, self.provenance.num_jobs - 1]
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
        return shard_length(array)

    def _write_rows(self, name: str, start: int, rows: np.ndarray) -> None:
        array = self.group[name]
        if array.shape[0] < start + len(rows):
            array.resize((start + len(rows), array.shape[1]))
        array[start : start + len(rows)] = rows

    def update_index(self, force: bool = True) -> None:
        """Fold committed segments the index does not cover into it (all when ``force``, else once
        ``INDEX_LAG`` rows wait), growing (rebuilding) the table to keep it at most half full."""
        self._refresh()
        meta_index, committed = self.meta["index"], self.meta["segments"]
        todo = self.segments(meta_index["segments"])  # only the segments after it: a commit reads its own
        if not len(todo) or (not force and todo[:, S["rows"]].sum() < INDEX_LAG):
            return
        keys, rows = self._ok_keys(todo)
        entries = meta_index["entries"] + len(keys)
        capacity = meta_index["capacity"]
        if not capacity or 2 * entries > capacity or not self._insert_in_place(keys, rows):
            keys, rows = self._ok_keys(self.segments())
            capacity = max(self.layout.index_min, capacity)
            while capacity < 4 * entries:
                capacity *= 2
            self._rebuild_index(keys, rows, capacity)
            return
        self.meta["index"] = {**meta_index, "segments": committed, "entries": entries}
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
        meta_index = self.meta["index"]
        array, capacity = self.group[meta_index["array"]], meta_index["capacity"]
        shard_size, chunk_size = shard_length(array), int(array.chunks[0])  # this table's own, from its metadata
        shard_of = (keys & (capacity - 1)) // shard_size
        for shard in np.unique(shard_of):
            start = int(shard) * shard_size
            block = array[start : start + shard_size]  # read and written back whole: one zarr shard
            mine = shard_of == shard
            if not index.insert(block, start, capacity, keys[mine], rows[mine], chunk_size):
                return False
            array[start : start + shard_size] = block
        return True

    def _rebuild_index(self, keys: np.ndarray, rows: np.ndarray, capacity: int) -> None:
        layout = self.layout
        table = np.zeros((capacity, 2), dtype=np.int64)
        while not index.insert(table, 0, capacity, keys, rows, min(layout.index_chunk, capacity)):
            capacity *= 2
            table = np.zeros((capacity, 2), dtype=np.int64)
        name = f"index_{capacity.bit_length() - 1}"
        old = self.meta["index"]["array"]
        array = self.group.create_array(name, shape=(capacity, 2), dtype="int64",
                                        chunks=(min(layout.index_chunk, capacity), 2),
                                        shards=(min(layout.index_shard, capacity), 2),
                                        compressors=compressors("index" not in layout.uncompressed),
                                        fill_value=0, overwrite=True)
        array[:] = table
        self.meta["index"] = {"array": name, "capacity": capacity, "segments": self.meta["segments"],
                              "entries": len(keys)}
        self._commit()
        if old and old != name and old in self.group:
            del self.group[old]


def _create(path: str | Path, codec_card: dict, model_ref: str, version: int, layout: Layout) -> None:
    group = zarr().open_group(str(path), mode="w-", zarr_format=3)
    for name, (chunk, shard) in layout.byte_arrays.items():
        group.create_array(name, shape=(0,), dtype="uint8", chunks=(chunk,), shards=(shard,),
                           compressors=compressors(name not in layout.uncompressed), fill_value=0)
    for name, (columns, chunk, shard) in layout.tables.items():
        group.create_array(name, shape=(0, columns), dtype="int64", chunks=(chunk, columns),
                           shards=(shard, columns), compressors=compressors(name not in layout.uncompressed),
                           fill_value=-1,
                           attributes={"columns": list(ITEM_COLUMNS if name == "items" else SEGMENT_COLUMNS)})
    provenance = {"num_sources": 0, "num_jobs": 0} if version >= RECORDS_VERSION else {"sources": [], "jobs": []}
    group.attrs[ATTRS_KEY] = {
        "format": FORMAT,
        "format_version": version,
        "model_id": codec_card["model_id"],
        "codec": codec_card["config"],
        "model_ref": str(model_ref),
        "package_version": latentzip.__version__,
        "created": now(),
        "modes": list(MODES),
        "segments": 0,
        "count": 0,
        "failures": 0,
        "ends": {"items": 0, "ids": 0, "bitstreams": 0, "reasons": 0},
        "index": {"array": "", "capacity": 0, "segments": 0, "entries": 0},
        **provenance,
    }
    if version >= RECORDS_VERSION:
        records.create(path)
