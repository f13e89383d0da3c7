"""Provenance: the names of an archive's sources (units of work and the inputs items came from) and its
job records.

Format 4 keeps each as a small record of its own: the attributes of a Zarr group,
``provenance/sources/<number>`` (``{"name": ...}``) and ``provenance/jobs/<number>`` (the job's record), so
the archive stays one plain Zarr hierarchy; only their counts (``num_sources``, ``num_jobs``) are in the
root group's attributes, so a commit rewrites a zarr.json of constant size however many units
and jobs came before. A record is written before the count that covers it is committed, so a record past
the count (a killed writer's) is not part of the archive, and the next writer overwrites it. Formats 2
and 3 keep lists in the attributes (``sources``, ``jobs``), and stay so when appended to: a release that
reads them finds everything where it looks.
"""

from __future__ import annotations

import json
from pathlib import Path

from latentzip.pipeline import storage
from latentzip.pipeline.archive.arrays import read_file
from latentzip.pipeline.archive.format import RECORDS_VERSION, ArchiveCorruptError, now

PREFIX = "provenance"
_GROUP = {"zarr_format": 3, "node_type": "group"}


def create(path) -> None:
    """The (empty) groups that hold a new format 4 archive's records."""
    for parts in ((PREFIX,), (PREFIX, "sources"), (PREFIX, "jobs")):
        storage.write_bytes(storage.join(path, *parts, "zarr.json"), json.dumps({**_GROUP, "attributes": {}}).encode())


class Provenance:
    """Sources and job records of one archive object (``archive.meta`` holds the attributes)."""

    def __init__(self, archive):
        self.archive = archive
        self._names: dict[int, str] = {}
        self._numbers: dict[str, int] = {}

    @property
    def records(self) -> bool:
        return self.archive.version >= RECORDS_VERSION

    @property
    def num_sources(self) -> int:
        meta = self.archive.meta
        return meta["num_sources"] if self.records else len(meta["sources"])

    @property
    def num_jobs(self) -> int:
        meta = self.archive.meta
        return meta["num_jobs"] if self.records else len(meta["jobs"])

    # -- reading ---------------------------------------------------------------------------------------
    def source(self, number: int) -> str:
        """The name of source ``number`` (callers check it against :attr:`num_sources`)."""
        if not self.records:
            return self.archive.meta["sources"][number]
        if number not in self._names:
            self._names[number] = _name(self._read(f"sources/{number}"), number)
        return self._names[number]

    def sources(self) -> list[str]:
        """Every source name, in number order (one bulk read of the records not read yet)."""
        if not self.records:
            return list(self.archive.meta["sources"])
        missing = [k for k in range(self.num_sources) if k not in self._names]
        for k, raw in zip(missing, self._read_many([f"sources/{k}" for k in missing])):
            self._names[k] = _name(raw, k)
        return [self._names[k] for k in range(self.num_sources)]

    def jobs(self) -> list[dict]:
        """Every job record, in the order the jobs started."""
        if not self.records:
            return list(self.archive.meta["jobs"])
        names = [f"jobs/{k}" for k in range(self.num_jobs)]
        return [_record(raw, name) for name, raw in zip(names, self._read_many(names))]

    def _read(self, name: str) -> bytes:
        where = storage.join(self.archive.path, PREFIX, name, "zarr.json")
        try:
            return read_file(where, 0, 1 << 24) if isinstance(where, Path) else storage.read_bytes(where)
        except (OSError, ValueError) as exc:
            raise ArchiveCorruptError(f"{self.archive.path}: provenance record {name} cannot be read: "
                                      f"{type(exc).__name__}: {exc}") from exc

    def _read_many(self, names: list[str]) -> list[bytes]:
        """Several records; on object storage in one concurrent request batch (fsspec ``cat``)."""
        if not names or isinstance(self.archive.path, Path):
            return [self._read(name) for name in names]
        fs, root = storage.filesystem(self.archive.path)
        paths = [f"{root}/{PREFIX}/{name}/zarr.json" for name in names]
        found = fs.cat(paths, on_error="return")
        out = []
        for name, path in zip(names, paths):
            raw = found.get(path)
            if not isinstance(raw, bytes):
                raise ArchiveCorruptError(f"{self.archive.path}: provenance record {name} cannot be read: {raw!r}")
            out.append(raw)
        return out

    # -- writing (a writer's attributes are committed by the writer) -------------------------------------
    def number(self, name: str) -> int:
        """The number of source ``name``, adding it (its record written, its count raised in ``meta``, not
        committed) if it is new."""
        meta = self.archive.meta
        if not self.records:
            if name not in meta["sources"]:
                meta["sources"].append(name)
            return meta["sources"].index(name)
        if len(self._numbers) != self.num_sources:  # first use, or another writer object committed more
            self._numbers = {source: k for k, source in enumerate(self.sources())}
        if name not in self._numbers:
            number = meta["num_sources"]
            self._write(f"sources/{number}", {"name": name})
            self._names[number], self._numbers[name] = name, number
            meta["num_sources"] = number + 1
        return self._numbers[name]

    def start_job(self, job_id: str, args: dict) -> None:
        record = {"job_id": job_id, "started": now(), "args": args}
        meta = self.archive.meta
        if not self.records:
            meta["jobs"].append(record)
            return
        self._write(f"jobs/{meta['num_jobs']}", record)
        meta["num_jobs"] += 1

    def finish_job(self, summary: dict, job_id: str | None) -> None:
        """Record ``summary`` in the job ``job_id`` (the last job with that id; default the last job)."""
        meta = self.archive.meta
        if not self.records:
            jobs = meta["jobs"]
            job = next((j for j in reversed(jobs) if j["job_id"] == job_id), jobs[-1]) if job_id else jobs[-1]
            job.update(finished=now(), **summary)
            return
        last = meta["num_jobs"] - 1
        number, record = last, None
        for k in range(last, -1, -1) if job_id else ():
            candidate = _record(self._read(f"jobs/{k}"), f"jobs/{k}")
            if candidate.get("job_id") == job_id:
                number, record = k, candidate
                break
        if record is None:
            record = _record(self._read(f"jobs/{last}"), f"jobs/{last}")
        record.update(finished=now(), **summary)
        self._write(f"jobs/{number}", record)

    def _write(self, name: str, record: dict) -> None:
        # Locally a rename, remotely one PUT: a reader never sees half a record.
        document = {**_GROUP, "attributes": record}
        storage.write_bytes(storage.join(self.archive.path, PREFIX, name, "zarr.json"), json.dumps(document).encode())


def _record(raw: bytes, name: str) -> dict:
    """The attributes of a record's group metadata document."""
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise ArchiveCorruptError(f"provenance record {name} is not JSON: {exc}") from exc
    record = document.get("attributes") if isinstance(document, dict) else None
    if not isinstance(record, dict):
        raise ArchiveCorruptError(f"provenance record {name} is not a Zarr group with attributes")
    return record


def _name(raw: bytes, number: int) -> str:
    name = _record(raw, f"sources/{number}").get("name")
    if not isinstance(name, str):
        raise ArchiveCorruptError(f"provenance record sources/{number} names no source")
    return name
