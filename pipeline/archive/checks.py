"""What an archive's own records may claim, checked before anything is read or allocated from them.

Bounds checks of the group attributes, the ``segments`` rows and the ``items`` rows against each other and
against the arrays' sizes. Pure functions of numbers already read: no zarr, no file system, so the reader
(:mod:`.reader`), the listing (:mod:`.listing`) and ``verify`` (:mod:`.verify`) share one definition of
"consistent". A check returns what is wrong as a sentence, or None.
"""

from __future__ import annotations

from latentzip.pipeline.archive.format import FAILED, OK, RECORDS_VERSION

_MAX_INT64 = (1 << 63) - 1


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def meta_problems(meta: dict) -> list[str]:
    """What is wrong with the structure of an archive's group attributes (format and version aside)."""
    problems = []

    def need(key: str, ok, what: str, where: dict = meta, prefix: str = "") -> None:
        if key not in where:
            problems.append(f"attribute {prefix}{key} is missing")
        elif not ok(where[key]):
            problems.append(f"attribute {prefix}{key} is {where[key]!r}, not {what}")

    count = lambda v: _int(v) and 0 <= v <= _MAX_INT64  # noqa: E731
    need("model_id", lambda v: isinstance(v, str) and len(v) == 32 and all(c in "0123456789abcdef" for c in v),
         "a 32-digit hex model id")
    need("model_ref", lambda v: isinstance(v, str), "a string")
    need("codec", lambda v: isinstance(v, dict), "a codec config")
    for key in ("segments", "count", "failures"):
        need(key, count, "a count")
    if isinstance(meta.get("format_version"), int) and meta["format_version"] >= RECORDS_VERSION:
        # Provenance records live under provenance/: the attributes count them (see .provenance).
        need("num_sources", count, "a count")
        need("num_jobs", count, "a count")
    else:
        need("sources", lambda v: isinstance(v, list) and all(isinstance(s, str) for s in v), "a list of names")
        need("jobs", lambda v: isinstance(v, list) and all(isinstance(j, dict) for j in v), "a list of job records")
    need("ends", lambda v: isinstance(v, dict), "a dict")
    if isinstance(meta.get("ends"), dict):
        for key in ("items", "ids", "bitstreams", "reasons"):
            need(key, count, "a count", meta["ends"], "ends.")
    need("index", lambda v: isinstance(v, dict), "a dict")
    if isinstance(meta.get("index"), dict):
        index = meta["index"]
        need("array", lambda v: isinstance(v, str) and (v == "" or (v.startswith("index_") and "/" not in v)),
             "an index array name", index, "index.")
        need("capacity", lambda v: count(v) and (v == 0 or v & (v - 1) == 0), "0 or a power of two", index, "index.")
        need("segments", count, "a count", index, "index.")
        need("entries", count, "a count", index, "index.")
        if _int(index.get("capacity")) and index.get("array") == "" and index["capacity"]:
            problems.append(f"attribute index.capacity is {index['capacity']} but no index array is named")
    return problems


def segment_problem(seg, number: int, shapes: dict[str, int], num_sources: int, num_jobs: int,
                    max_rows: int) -> str | None:
    """What is wrong with segment ``number``'s row of ``segments`` (a list of ints, SEGMENT_COLUMNS order)
    given the arrays' lengths ``shapes`` (items, ids, bitstreams, reasons) and the rows the attributes
    count (``max_rows``: items + failures; a segment claiming more is not read)."""
    (row_start, rows, ids_start, ids_bytes, bytes_start, num_bytes, reasons_start, reasons_bytes,
     images, failures, unit, job) = (int(v) for v in seg)
    if all(int(v) == -1 for v in seg):
        return "its row of `segments` is not stored (fill values): the segments array lost data"
    if min(row_start, rows, ids_start, ids_bytes, bytes_start, num_bytes, reasons_start, reasons_bytes,
           images, failures) < 0:
        return f"negative field in its row of `segments`: {[int(v) for v in seg]}"
    if images + failures != rows:
        return f"says {images} images + {failures} failures but {rows} rows"
    if rows > max_rows:
        return f"claims {rows} rows, more than the attributes count in the whole archive ({max_rows})"
    for name, start, length in (("items", row_start, rows), ("ids", ids_start, ids_bytes),
                                ("bitstreams", bytes_start, num_bytes), ("reasons", reasons_start, reasons_bytes)):
        # An array that cannot be opened is not in ``shapes``: its readers report it, and the segment's
        # other parts (e.g. its ids when only ``reasons`` is lost) stay listable.
        if length and name in shapes and start + length > shapes[name]:
            return f"claims {name}[{start}:{start + length}], but `{name}` holds {shapes[name]}"
    if not -1 <= unit < num_sources:
        return f"unit {unit} is not a source number (the archive lists {num_sources} sources)"
    if not -1 <= job < max(num_jobs, 1):
        return f"job {job} is not a job number (the archive records {num_jobs} jobs)"
    return None


def record_problem(record, number: int, seg, num_sources: int, version: int) -> str | None:
    """What is wrong with one ``items`` row of segment ``number`` (ITEM_COLUMNS order): every offset must lie
    inside the segment's own byte ranges, so nothing is read or allocated from an unchecked length."""
    (key, status, id_offset, id_length, offset, length, height, width, checksum, mode, source,
     segment) = (int(v) for v in record)
    seg = [int(v) for v in seg]
    if status not in (OK, FAILED):
        return f"unknown status {status}"
    if segment != number:
        return f"row names segment {segment}, stored in segment {number}"
    if not (seg[2] <= id_offset and id_length >= 0 and id_offset + id_length <= seg[2] + seg[3]):
        return f"id bytes [{id_offset}, +{id_length}) lie outside the segment's ids [{seg[2]}, +{seg[3]})"
    lo, size, what = (seg[4], seg[5], "bitstreams") if status == OK else (seg[6], seg[7], "reasons")
    if not (lo <= offset and length >= 0 and offset + length <= lo + size):
        return f"{what} bytes [{offset}, +{length}) lie outside the segment's [{lo}, +{size})"
    if not 0 <= source < num_sources:
        return f"source {source} is not a source number (the archive lists {num_sources} sources)"
    if status == OK and not (height > 0 and width > 0):
        return f"size {width}x{height} is not an image size"
    if status == OK and not 0 <= checksum < 1 << 32:
        return f"checksum {checksum} is not a CRC-32C"
    return None


def lookup_problem(record, shapes: dict[str, int], num_sources: int) -> str | None:
    """What is wrong with an ``items`` row found by a lookup, against the arrays' lengths (before its id or
    bytes are read: a forged length must give this error, not an allocation of its size)."""
    (key, status, id_offset, id_length, offset, length, height, width, checksum, mode, source,
     segment) = (int(v) for v in record)
    if not (0 <= id_offset and 0 <= id_length and id_offset + id_length <= shapes["ids"]):
        return f"its id bytes [{id_offset}, +{id_length}) lie outside `ids` ({shapes['ids']} bytes)"
    if not (0 <= offset and 0 <= length and offset + length <= shapes["bitstreams"]):
        return f"its bytes [{offset}, +{length}) lie outside `bitstreams` ({shapes['bitstreams']} bytes)"
    if not 0 <= source < num_sources:
        return f"its source {source} is not a source number (the archive lists {num_sources} sources)"
    if not (height > 0 and width > 0):
        return f"its size {width}x{height} is not an image size"
    return None


def index_problems(table_rows: int, capacity: int, chunk: int, positions, keys) -> list[str]:
    """An index table against the attributes: its length is ``capacity``, and every stored entry (at
    ``positions``, with ``keys``) lies in the probe chunk of its key's slot, where a lookup looks."""
    problems = []
    if table_rows != capacity:
        problems.append(f"the index table has {table_rows} slots, attribute index.capacity says {capacity}")
    if capacity and chunk > 0:
        misplaced = [(int(p), int(k)) for p, k in zip(positions, keys) if int(p) // chunk != (int(k) & (capacity - 1)) // chunk]
        if misplaced:
            problems.append(f"{len(misplaced)} index entries lie outside the probe chunk of their key for capacity "
                            f"{capacity} (first at slot {misplaced[0][0]}): lookups cannot find them")
    return problems


def describe_exception(exc: BaseException) -> str:
    """``Type: message`` of an exception from zarr, numcodecs or the file system, for a finding."""
    text = str(exc) if not isinstance(exc, KeyError) or not exc.args else str(exc.args[0])
    return f"{type(exc).__name__}: {text}"[:500]

