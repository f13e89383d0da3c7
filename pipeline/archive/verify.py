"""Verify an archive's storage: every item's bytes against its checksum and its stream header, the index
against the items, the counts against the group attributes, the provenance records. Problems are reported
per id, per segment or per array. (That the archive's model loads and decodes a sample is checked by
:func:`latentzip.pipeline.decoding.verify_with_model`, which runs this first: no model is loaded here.)

Never raises for a damaged archive: whatever zarr, numcodecs or the file system raise while one part is
read becomes a finding for that part, and the rest is still checked. Reads every segment once, in order
(memory: one segment's bytes plus the index) through the reading methods of
:class:`~latentzip.pipeline.archive.Archive`.

Format 3 archives checksum each id together with its bytes, so a row moved, swapped or duplicated fails
it. Format 2 archives checksum the bytes only: verify still checks each id's hash (``key``), the index
and the counts, but two rows whose bitstreams were exchanged with their checksums are not detected (a
note says so).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentzip.codecs.bitstream import BitstreamError, unpack
from latentzip.pipeline.archive.checks import describe_exception, index_problems
from latentzip.pipeline.archive.format import (ARRAYS, FAILED, ID_BOUND_VERSION, ArchiveCorruptError, I, S, id_bytes,
                                               id_key, item_checksum)
from latentzip.pipeline.archive.reader import open_archive


@dataclass
class VerifyReport:
    archive: str
    items: int = 0
    failures: int = 0
    decoded: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (id or "<archive>", what is wrong)
    notes: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the encoded ids checked, sorted

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        lines = [f"{item_id!r}: {problem}" if _odd(item_id) else f"{item_id}: {problem}"
                 for item_id, problem in self.problems]
        lines += [f"note: {note}" for note in self.notes]
        verdict = "OK" if self.ok else f"{len(self.problems)} PROBLEMS"
        lines.append(f"verify {self.archive}: {verdict} - {self.items} items checked "
                     f"({self.failures} recorded failures, {self.decoded} decoded)")
        return "\n".join(lines)


def _odd(item_id: str) -> bool:
    """An id printed quoted: empty, with spaces at either end or characters that are not printable UTF-8."""
    return not item_id or item_id != item_id.strip() or not item_id.isprintable()


def verify_archive(path) -> VerifyReport:
    """Check an archive's storage (a path or URL, or an :class:`~.reader.Archive` already open): items,
    index, counts, provenance records. Raises ArchiveError only when ``path`` is not a latentzip archive of a
    version this release reads (damaged attributes are a finding). Whether its model loads and decodes is
    :func:`latentzip.pipeline.decoding.verify_with_model`'s part (``latentzip verify`` runs both)."""
    if isinstance(path, (str, Path)):
        report = VerifyReport(str(path))
        try:
            archive = open_archive(path)
        except ArchiveCorruptError as exc:
            report.problems.append(("<archive>", str(exc)))
            return report
    else:
        archive, report = path, VerifyReport(str(path.path))
    if archive.version < ID_BOUND_VERSION:
        report.notes.append(f"format {archive.version}: each checksum covers an item's bytes, not its id, so two rows "
                            "whose bytes and checksums were exchanged are not detected (format 3 binds them)")
    for name in ARRAYS:
        if name not in archive.shapes():
            report.problems.append((f"<{name}>", f"array cannot be opened: {archive.array_problem(name)}"))
    _check_provenance(archive, report)
    rows_of, unindexed = _check_items(archive, report)
    _check_index(archive, rows_of, unindexed, report)
    if report.items != archive.meta["count"] or report.failures != archive.meta["failures"]:
        report.problems.append(("<archive>", f"attributes count {archive.meta['count']} items and "
                                             f"{archive.meta['failures']} failures; the segments hold {report.items} "
                                             f"and {report.failures}"))
    report.ids = sorted(rows_of)
    return report


def _check_provenance(archive, report: VerifyReport) -> None:
    """Every source and job record the attributes count can be read (format 4 keeps them as files)."""
    for what, read in (("sources", archive.sources), ("jobs", archive.jobs)):
        try:
            read()
        except Exception as exc:  # noqa: BLE001 - a missing or damaged record is a finding
            report.problems.append(("<provenance>", f"{what}: {describe_exception(exc)}"))


def _check_items(archive, report: VerifyReport) -> tuple[dict[str, int], set[int]]:
    """Every segment and row: fields, ids, checksums, stream headers. Returns id -> row, unindexed rows."""
    problem = report.problems.append
    model_id = bytes.fromhex(archive.model_id)
    index_meta, ends = archive.meta["index"], archive.meta["ends"]
    rows_of: dict[str, int] = {}
    unindexed: set[int] = set()
    previous_end = {"items": 0, "ids": 0, "bitstreams": 0, "reasons": 0}
    for number, seg, rows, ids, seg_problem in archive.scan():
        where = f"<segment {number}>" if number >= 0 else "<segments>"
        if seg_problem is not None:
            problem((where, seg_problem))
            continue
        _check_segment_layout(number, seg, previous_end, ends, report)
        base = int(seg[S["bytes_start"]])
        try:
            blob = archive.read_bytes("bitstreams", base, int(seg[S["num_bytes"]]))
        except Exception as exc:  # noqa: BLE001 - a damaged shard or chunk: every id of the segment is unreadable
            problem((where, f"bitstreams cannot be read: {describe_exception(exc)}"))
            blob = None
        indexed = number < index_meta["segments"]
        for offset, (record, (item_id, row_problem)) in enumerate(zip(rows, ids)):
            row = int(seg[S["row_start"]]) + offset
            if row_problem is not None:
                problem((item_id, row_problem))
                continue
            if record[I["status"]] == FAILED:
                report.failures += 1
                continue
            report.items += 1
            if item_id in rows_of:
                problem((item_id, f"duplicate id (rows {rows_of[item_id]} and {row})"))
            rows_of.setdefault(item_id, row)
            if not indexed:
                unindexed.add(row)
            if blob is None:
                problem((item_id, "unreadable: its segment's bitstreams are damaged"))
                continue
            _check_stream(archive, item_id, record, blob, base, model_id, report)
    return rows_of, unindexed


def _check_segment_layout(number: int, seg, previous_end: dict, ends: dict, report: VerifyReport) -> None:
    """Segments follow each other without overlapping, and the attribute ``ends`` (where the next writer
    starts) lies past every committed segment, so an append cannot overwrite one."""
    for name, start, length in (("items", S["row_start"], S["rows"]), ("ids", S["ids_start"], S["ids_bytes"]),
                                ("bitstreams", S["bytes_start"], S["num_bytes"]),
                                ("reasons", S["reasons_start"], S["reasons_bytes"])):
        lo, hi = int(seg[start]), int(seg[start]) + int(seg[length])
        if hi > lo and lo < previous_end[name]:
            report.problems.append((f"<segment {number}>", f"its {name} [{lo}, {hi}) overlap the previous segment's"))
        if hi > ends[name]:
            report.problems.append((f"<segment {number}>", f"its {name} end at {hi}, past attribute ends.{name} = "
                                                           f"{ends[name]}: the next append would overwrite them"))
        previous_end[name] = max(previous_end[name], hi)


def _check_stream(archive, item_id: str, record, blob: bytes, base: int, model_id: bytes, report) -> None:
    start, length = int(record[I["offset"]]) - base, int(record[I["length"]])
    data = blob[start : start + length]
    if len(data) != length or item_checksum(archive.version, id_bytes(item_id), data) != int(record[I["checksum"]]):
        what = "id and bytes fail" if archive.version >= ID_BOUND_VERSION else "stored bytes fail"
        report.problems.append((item_id, f"{what} their CRC-32C"))
        return
    try:
        stream = unpack(data, expected_model_id=model_id)
    except BitstreamError as exc:
        report.problems.append((item_id, f"{type(exc).__name__}: {exc}"))
        return
    if (stream.height, stream.width) != (int(record[I["height"]]), int(record[I["width"]])):
        report.problems.append((item_id, f"stream is {stream.height}x{stream.width}, row says "
                                         f"{record[I['height']]}x{record[I['width']]}"))


def _check_index(archive, rows_of: dict[str, int], unindexed: set[int], report: VerifyReport) -> None:
    """The index both ways: every encoded id is reachable through it (its entry at its row, in the probe
    chunk a lookup reads for the attributes' capacity), and every entry names such an id."""
    index = archive.meta["index"]
    problem = report.problems.append
    if index["segments"] > archive.meta["segments"]:
        problem(("<index>", f"attributes say it covers {index['segments']} segments, only "
                            f"{archive.meta['segments']} are committed"))
    entries = defaultdict(set)
    # A writer keeps the table between 2x and about 8x its entries (at least 4096 slots): a capacity far
    # beyond that is not read (a forged one could ask for terabytes), it is a finding.
    plausible = max(1 << 13, 16 * (len(rows_of) + len(unindexed) + 1))
    if index["capacity"] > plausible:
        problem(("<index>", f"attribute index.capacity {index['capacity']} is implausible for {len(rows_of)} items "
                            "(not read)"))
        return
    if index["capacity"]:
        try:
            table, chunk = archive.index_table(limit=plausible)
        except Exception as exc:  # noqa: BLE001
            problem(("<index>", f"index array {index['array']!r} cannot be read: {describe_exception(exc)}"))
            for item_id, row in rows_of.items():
                if row not in unindexed:
                    problem((item_id, "not reachable: the index cannot be read"))
            return
        positions = np.flatnonzero(table[:, 0] != 0)
        for message in index_problems(len(table), index["capacity"], chunk, positions, table[positions, 0]):
            problem(("<index>", message))
        for key, row in table[positions].tolist():
            entries[key].add(row)
    for item_id, row in rows_of.items():
        if row not in entries.get(id_key(item_id), ()) and row not in unindexed:
            problem((item_id, f"not in the index (row {row})"))
    valid = set(rows_of.values())
    for key, rows in entries.items():
        for row in rows:
            if row not in valid:
                problem(("<index>", f"entry {key:#x} -> row {row} names no encoded item"))
    total = sum(len(rows) for rows in entries.values())
    if total != index["entries"]:
        problem(("<index>", f"holds {total} entries, attributes say {index['entries']}"))
    if unindexed:
        report.notes.append(f"{len(unindexed)} items of segments committed after the index was last updated "
                            "(looked up by scanning; the next writer folds them in)")
