"""``latentzip bench archive-commit``: what one commit costs as an archive grows.

For each number of units (default 10, 100 and 1,000), a new archive is written as ``latentzip encode``
writes one: a job whose record lists every unit, then one segment per unit (``images_per_unit`` items of
synthetic bytes; the storage layer does not parse them, and no model is loaded) committed with its
completion marker. Each commit (:meth:`~latentzip.pipeline.archive.ArchiveWriter.append`) is timed; the
figures are the mean over all units, the median of the first and the last ten, and the size of the group's
zarr.json at the end. Flat means the last ten cost what the first ten do, at every size. ``version`` 3
writes provenance as format 3 did (lists in zarr.json, rewritten at every commit), for comparison.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from latentzip.pipeline.archive import FORMAT_VERSION, ArchiveWriter, Item

#: A model id and config for archives of synthetic bytes (never decoded).
CARD = {"model_id": "00" * 16, "config": {"arch": "synthetic"}}


@dataclass
class CommitCost:
    units: int
    version: int
    mean_ms: float
    first10_ms: float
    last10_ms: float
    zarr_json_bytes: int
    seconds: float


def commit_cost(units: int, version: int = FORMAT_VERSION, images_per_unit: int = 4, item_bytes: int = 600,
                workdir: Path | None = None) -> CommitCost:
    work = Path(tempfile.mkdtemp(prefix="latentzip-bench-commit-", dir=workdir))
    try:
        path = work / "a.zarr"
        started = time.perf_counter()
        writer = ArchiveWriter.open_or_create(path, CARD, "synthetic", version=version)
        names = [f"shards/shard-{u:05d}.parquet" for u in range(units)]
        writer.start_job("bench", {"shards": names})
        times = []
        for u, name in enumerate(names):
            items = [Item(f"{u:05d}/{i}.jpg", bytes([u % 251, i % 251]) * (item_bytes // 2), 64, 64, name)
                     for i in range(images_per_unit)]
            t0 = time.perf_counter()
            writer.append(items, unit=name)
            times.append(time.perf_counter() - t0)
        writer.finish_job({"images": units * images_per_unit}, "bench")
        return CommitCost(units, version, 1000 * statistics.fmean(times), 1000 * statistics.median(times[:10]),
                          1000 * statistics.median(times[-10:]), (path / "zarr.json").stat().st_size,
                          time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def bench_archive_commit(units=(10, 100, 1000), versions=(FORMAT_VERSION,), images_per_unit: int = 4,
                         workdir: Path | None = None, progress=print) -> list[CommitCost]:
    out = []
    for n in units:
        for version in versions:
            out.append(commit_cost(n, version, images_per_unit, workdir=workdir))
            if progress:
                progress(f"bench archive-commit: {n} units, format {version}: {out[-1].mean_ms:.1f} ms per commit")
    return out


def table(results: list[CommitCost]) -> str:
    lines = ["| units | format | ms per commit (mean) | first 10 (median) | last 10 (median) | zarr.json bytes |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r.units} | {r.version} | {r.mean_ms:.1f} | {r.first10_ms:.1f} | {r.last10_ms:.1f} | "
              f"{r.zarr_json_bytes} |" for r in results]
    return "\n".join(lines)


def write_result(results: list[CommitCost], out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n" if out.suffix == ".json"
                   else "# Archive commit cost\n\n" + table(results) + "\n")
    return out
