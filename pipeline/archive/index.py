"""The hash index: an open-addressing table from a 64-bit hash of each id (:func:`~.format.id_key`) to its
row of ``items``, so a lookup reads one index chunk, one row and the id's bytes.

Linear probing wraps inside the slot's inner chunk of the table, so a lookup reads exactly one chunk;
chunk sizes come from the table's own metadata. Rows of segments committed after the table was last
updated are found by scanning their keys (:func:`unindexed`; a writer folds them in, see
:meth:`~.writer.ArchiveWriter.update_index`). :func:`lookup` is the one lookup, over the reader interface
of :mod:`.arrays`: the same code reads a local archive's shard files directly or any store through zarr.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from latentzip.pipeline.archive.checks import lookup_problem
from latentzip.pipeline.archive.format import OK, ArchiveCorruptError, I, ItemCorruptError, S, id_bytes, id_key

_POOL: list[ThreadPoolExecutor] = []


def probe_start(key: int, capacity: int, size: int) -> int:
    """First slot of the ``size``-slot index chunk holding ``key``'s slot: probing never leaves it (see
    :func:`insert`). ``size`` is the table's own inner chunk (from its metadata)."""
    return (key & (capacity - 1)) // size * size


def insert(table: np.ndarray, base: int, capacity: int, keys: np.ndarray, rows: np.ndarray, size: int) -> bool:
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


def concurrently(calls: list, parallel: bool) -> list:
    """Each call's result, or the exception it raised. ``parallel``: on threads (reads through zarr on a
    remote store wait on the network, so they overlap); else one after the other."""
    def run(call):
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - returned to the caller, which decides
            return exc

    if not parallel or len(calls) < 2:
        return [run(call) for call in calls]
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=8, thread_name_prefix="latentzip-archive"))
    futures = [_POOL[0].submit(run, call) for call in calls[1:]]
    return [run(calls[0])] + [future.result() for future in futures]


def unindexed(archive) -> dict[int, list[int]]:
    """key -> rows of committed segments the index does not cover yet (normally none: nothing is read)."""
    meta, pending = archive.meta, {}
    if meta["index"]["segments"] >= meta["segments"]:
        return pending
    items = archive.reader("items")
    for seg in archive.segments(meta["index"]["segments"]):
        start, n = int(seg[S["row_start"]]), int(seg[S["rows"]])
        if start < 0 or n <= 0:
            continue  # a damaged segment row: verify reports it
        for i, key in enumerate(items.read(start, start + n)[:, I["key"]]):
            pending.setdefault(int(key), []).append(start + i)
    return pending


def lookup(archive, item_id: str, with_data: bool) -> tuple[int, np.ndarray, bytes | BaseException | None] | None:
    """(row, item record, its bitstream bytes or the ValueError reading them) of an encoded id, or None.

    Reads the index chunk, the item row, the id bytes (compared with ``item_id``) and, ``with_data``, the
    bitstream (with the id's bytes, at once on a remote store); every row number, offset and
    length is checked against the arrays' sizes before it is read (ItemCorruptError naming the id)."""
    key = id_key(item_id)
    pending = archive.unindexed().get(key, [])
    index = archive.meta["index"]
    names = ([index["array"]] if index["capacity"] else []) + ["items", "ids"] + (["bitstreams"] if with_data else [])
    readers = archive.readers(names)
    parallel = archive.overlapped_reads
    candidates = []
    if index["capacity"]:
        table = readers[index["array"]]
        if table.rows != index["capacity"]:
            raise ArchiveCorruptError(f"{archive.path}: the index table has {table.rows} slots, attribute "
                                      f"index.capacity says {index['capacity']}")
        start = probe_start(key, index["capacity"], table.chunk)
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
        if record[I["status"]] != OK or int(record[I["id_length"]]) != len(want):
            continue
        problem = lookup_problem(record, shapes, archive.num_sources)
        if problem is not None:  # raised if nothing else matches
            damage.append(problem)
            continue
        at, offset, length = int(record[I["id_offset"]]), int(record[I["offset"]]), int(record[I["length"]])
        reads = [lambda: readers["ids"].read(at, at + len(want))]
        if with_data:
            reads.append(lambda: readers["bitstreams"].read(offset, offset + length))
        stored, *data = concurrently(reads, parallel)
        if isinstance(stored, BaseException):
            raise stored
        if stored.tobytes() != want:
            continue
        if not with_data:
            return row, record, None
        if isinstance(data[0], BaseException) and not isinstance(data[0], ValueError):
            raise data[0]
        return row, record, data[0] if isinstance(data[0], BaseException) else data[0].tobytes()
    if damage:
        raise ItemCorruptError(f"item {item_id!r} in {archive.path}: {damage[0]}")
    return None
