"""Verify an archive: every item's bytes against its checksum, the index against the items, the counts
against the group attributes, and optionally a decoded sample. Problems are reported per id.

Reads every segment once, in order (memory: one segment's bytes plus the index); uses only the public
reading methods of :class:`~latentzip.pipeline.archive.Archive`, so it needs no zarr of its own.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from latentzip.codecs.bitstream import BitstreamError, unpack
from latentzip.pipeline.archive import FAILED, OK, I, S, checksum, id_key, open_archive


@dataclass
class VerifyReport:
    archive: str
    items: int = 0
    failures: int = 0
    decoded: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (id or "<archive>", what is wrong)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        lines = [f"{item_id}: {problem}" for item_id, problem in self.problems]
        lines += [f"note: {note}" for note in self.notes]
        verdict = "OK" if self.ok else f"{len(self.problems)} PROBLEMS"
        lines.append(f"verify {self.archive}: {verdict} - {self.items} items checked "
                     f"({self.failures} recorded failures, {self.decoded} decoded)")
        return "\n".join(lines)


def verify_archive(path: str | Path, decode_sample: int = 0, seed: int = 0) -> VerifyReport:
    archive = open_archive(path)
    report = VerifyReport(str(path))
    problem = report.problems.append
    model_id = bytes.fromhex(archive.model_id)
    entries = defaultdict(set)
    for key, row in archive.index_entries().tolist():
        entries[key].add(row)
    index_meta = archive.meta["index"]
    rows_of: dict[str, int] = {}
    unindexed: set[int] = set()
    for number, seg in enumerate(archive.segments()):
        try:
            rows, ids, blob = archive.read_segment(seg)
        except ValueError as exc:
            problem((f"<segment {number}>", f"unreadable, a zarr chunk fails its checksum: {exc}"))
            continue
        base = int(seg[S["bytes_start"]])
        indexed = number < index_meta["segments"]
        for row, record, item_id in zip(range(int(seg[S["row_start"]]), 1 << 62), rows, ids):
            if record[I["segment"]] != number:
                problem((item_id, f"row names segment {record[I['segment']]}, stored in segment {number}"))
            if record[I["key"]] != id_key(item_id):
                problem((item_id, "index key column does not match the id's hash"))
            if record[I["status"]] == FAILED:
                report.failures += 1
                continue
            if record[I["status"]] != OK:
                problem((item_id, f"unknown status {record[I['status']]}"))
                continue
            report.items += 1
            start = int(record[I["offset"]]) - base
            data = blob[start : start + int(record[I["length"]])]
            if len(data) != int(record[I["length"]]) or checksum(data) != int(record[I["checksum"]]):
                problem((item_id, "stored bytes fail their CRC-32C"))
                continue
            try:
                stream = unpack(data, expected_model_id=model_id)
                if (stream.height, stream.width) != (int(record[I["height"]]), int(record[I["width"]])):
                    problem((item_id, f"stream is {stream.height}x{stream.width}, row says "
                                      f"{record[I['height']]}x{record[I['width']]}"))
            except BitstreamError as exc:
                problem((item_id, f"{type(exc).__name__}: {exc}"))
            if item_id in rows_of:
                problem((item_id, f"duplicate id (rows {rows_of[item_id]} and more)"))
            rows_of.setdefault(item_id, row)
            if not indexed:
                unindexed.add(row)
    _check_index(archive, rows_of, entries, unindexed, report)
    if report.items != archive.meta["count"] or report.failures != archive.meta["failures"]:
        problem(("<archive>", f"attributes count {archive.meta['count']} items and {archive.meta['failures']} "
                              f"failures; the segments hold {report.items} and {report.failures}"))
    if decode_sample:
        ids = sorted(rows_of)
        for item_id in random.Random(seed).sample(ids, min(decode_sample, len(ids))):
            try:
                archive.decode(item_id)
                report.decoded += 1
            except Exception as exc:  # noqa: BLE001 - reported per id
                problem((item_id, f"decode failed: {type(exc).__name__}: {exc}"))
    return report


def _check_index(archive, rows_of: dict[str, int], entries: dict[int, set], unindexed: set[int],
                 report: VerifyReport) -> None:
    """Every encoded id is in the index at its row, and every index entry is such an id."""
    for item_id, row in rows_of.items():
        if row not in entries.get(id_key(item_id), ()) and row not in unindexed:
            report.problems.append((item_id, f"not in the index (row {row})"))
    valid = set(rows_of.values())
    stale = [(key, row) for key, rows in entries.items() for row in rows if row not in valid]
    for key, row in stale:
        report.problems.append(("<index>", f"entry {key:#x} -> row {row} names no encoded item"))
    total = sum(len(rows) for rows in entries.values())
    if total != archive.meta["index"]["entries"]:
        report.problems.append(("<index>", f"holds {total} entries, attributes say {archive.meta['index']['entries']}"))
    if unindexed:
        report.notes.append(f"{len(unindexed)} items of segments committed after the index was last updated "
                            "(looked up by scanning; the next writer folds them in)")
