"""Listing the ids of a possibly damaged archive: every segment and row checked before it is read.

``Archive.scan`` and ``Archive.listing`` (and through them ``Archive.ids``, ``errors``, ``decode --all``
and ``verify``) walk the committed segments here. Each row of ``segments`` is checked against the arrays'
sizes and the attributes before its ranges are read, and each ``items`` row against its segment's byte
ranges, its ``source`` against the archive's sources and its ``key`` against its id (:mod:`.checks`), so a
damaged or crafted archive yields problems, by id or by ``<segment N row R>`` when no id can be read,
instead of exceptions, wrong ids or allocations of forged sizes. Reads go through the archive's reading
methods (the reader interface of :mod:`.arrays`).
"""

from __future__ import annotations

import numpy as np

from latentzip.pipeline.archive.checks import describe_exception, record_problem, segment_problem
from latentzip.pipeline.archive.format import ITEM_COLUMNS, OK, I, S, id_key, id_text


def scan(archive, segments: np.ndarray | None = None):
    """Each committed segment: (number, its row of ``segments``, its item rows, [(id, problem or None) per
    row], problem of the whole segment or None). Number -1 is the ``segments`` array itself. Exceptions
    from zarr, numcodecs or the file system become problems."""
    empty = np.zeros((0, len(ITEM_COLUMNS)), np.int64)
    meta = archive.meta
    if segments is None:
        try:
            segments = archive.segments()
        except Exception as exc:  # noqa: BLE001 - any failure to read is a finding
            yield -1, None, empty, [], f"`segments` cannot be read: {describe_exception(exc)}"
            return
        if len(segments) != meta["segments"]:
            yield -1, None, empty, [], f"attributes claim {meta['segments']} segments, `segments` holds {len(segments)}"
    shapes, sources, jobs = archive.shapes(), archive.num_sources, archive.provenance.num_jobs
    for number, seg in enumerate(segments):
        problem = segment_problem(seg, number, shapes, sources, jobs, meta["count"] + meta["failures"])
        rows, named = empty, []
        if problem is None:
            try:
                rows, named = _segment_rows(archive, number, seg, sources)
            except Exception as exc:  # noqa: BLE001
                problem = f"cannot be read: {describe_exception(exc)}"
        yield number, seg, rows, named, problem


def _segment_rows(archive, number: int, seg: np.ndarray, sources: int) -> tuple[np.ndarray, list]:
    start = int(seg[S["row_start"]])
    rows = archive.read_rows(start, int(seg[S["rows"]]))
    base = int(seg[S["ids_start"]])
    raw = archive.read_bytes("ids", base, int(seg[S["ids_bytes"]]))
    named = []
    for offset, record in enumerate(rows):
        problem = record_problem(record, number, seg, sources, archive.version)
        o, length = int(record[I["id_offset"]]), int(record[I["id_length"]])
        item_id = None
        if base <= o and 0 <= length and o + length <= base + len(raw):
            item_id = id_text(raw[o - base : o - base + length])
            if int(record[I["key"]]) != id_key(item_id):
                problem = problem or f"its key column does not match its id {item_id!r} (a moved or edited row)"
                item_id = None  # a row that is not this id's: its problem must not be charged to the id
        named.append((f"<segment {number} row {start + offset}>" if item_id is None else item_id, problem))
    return rows, named


def listing(archive) -> tuple[list[str], dict[str, str]]:
    """(every encoded id whose row is consistent, in commit order; what is wrong elsewhere, by id or by
    ``<segment N>`` / ``<segment N row R>`` where no id can be read). Never raises for damage."""
    ids, problems = [], {}
    for number, seg, rows, row_ids, problem in scan(archive):
        if problem is not None:
            problems[f"<segment {number}>" if number >= 0 else "<segments>"] = problem
            continue
        for record, (item_id, row_problem) in zip(rows, row_ids):
            if row_problem is not None:
                problems[item_id] = row_problem
            elif record[I["status"]] == OK:
                ids.append(item_id)
    if not problems and len(ids) != archive.meta["count"]:
        problems["<archive>"] = f"attribute count is {archive.meta['count']}, the segments list {len(ids)} items"
    return ids, problems
