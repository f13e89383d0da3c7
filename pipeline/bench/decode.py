"""``latentzip bench decode``: one-id decode from an archive against the bare model decode of the same
bitstream, bytes read per lookup, and batch decode images/s on Ray.

The archive is either given (``archive=``) or built here: ``count`` images encoded into ``work/bench.zarr``
in segments of 256, by default random 64x64 crops of one generated 512x512 crop of the bundled samples,
encoded with a tiny fixed-seed codec (N=16, M=24, untrained; :func:`bench_encode.fixed_seed_codec`), as the
encode benchmark's 10,000-image lookup archive is; with ``model`` and ``images``, the first ``count``
images of the folder encoded with that model.

Timed in this process on the same ``trials`` random ids, ``rounds`` times, the paths interleaved id by id
(median, after one warm-up decode):

- ``bare_ms``: ``codec.decode(data)``, the codec loaded once, the bitstream already in memory;
- ``fresh_ms``: ``open_archive(path)`` + ``item(id)`` (lookup, read, CRC-32C) + ``codec.decode``: a new
  archive object every time, the model loaded (what a long-lived service pays per request);
- ``warm_ms``: ``decode_image(archive, id)`` on one archive object whose codec is loaded (the code path of
  ``latentzip decode ARCHIVE --id ID`` after its start-up);
- ``cold_ms``: ``open_archive(path).decode(id)``: a new archive object that loads its model each time.

Bytes read per lookup, for a fresh ``open_archive(path).item(id)``: ``rchar`` of ``/proc/self/io``
(every byte this process read through read system calls: zarr.json files, shard indexes, chunks), and a
per-file breakdown (the archive's direct shard reads, counted by its own hook). Compared with the ``bitstreams`` array's inner chunk size
(the acceptance bound), the on-disk size of the zarr shard holding the id, and the whole archive.
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from latentzip.codecs.images import load_image
from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import ArchiveWriter, Item
from latentzip.pipeline.archive.arrays import count_reads
from latentzip.pipeline.bench.encode import fixed_seed_codec, generate_images
from latentzip.pipeline.decoding import decode_image, open_archive
from latentzip.pipeline.decoding_job import decode_archive
from latentzip.pipeline.sources import local_images

SEGMENT = 256


@dataclass
class DecodeBenchmark:
    archive: str
    model_ref: str
    images: int
    archive_bytes: int
    archive_files: int
    threads: int
    trials: int
    build_s: float | None
    bare_ms: float
    fresh_ms: float
    warm_ms: float
    cold_ms: float
    lookup_ms: float
    bytes_read: dict = field(default_factory=dict)
    batch: dict = field(default_factory=dict)

    @property
    def fresh_ratio(self) -> float:
        return self.fresh_ms / self.bare_ms

    @property
    def warm_ratio(self) -> float:
        return self.warm_ms / self.bare_ms

    def to_dict(self) -> dict:
        return {**asdict(self), "fresh_ratio": self.fresh_ratio, "warm_ratio": self.warm_ratio}

    def table(self) -> str:
        b = self.bytes_read
        lines = [(f"archive {self.archive}: {self.images} images, {self.archive_bytes} bytes in "
                  f"{self.archive_files} files; model {self.model_ref}; {self.threads} torch threads"),
                 "", f"| one id, median of {self.trials} | ms | × bare |", "|---|---|---|",
                 f"| bare `codec.decode(data)` | {self.bare_ms:.2f} | 1.00 |",
                 f"| fresh `open_archive` + `item` + `codec.decode` | {self.fresh_ms:.2f} | {self.fresh_ratio:.2f} |",
                 f"| warm `decode_image(archive, id)` | {self.warm_ms:.2f} | {self.warm_ratio:.2f} |",
                 (f"| cold `open_archive(path).decode(id)` (loads the model) | {self.cold_ms:.2f} | "
                  f"{self.cold_ms / self.bare_ms:.2f} |"),
                 f"| of which open + lookup + read (`open_archive(path).item(id)`) | {self.lookup_ms:.2f} | - |"]
        if b:
            lines += ["", (f"bytes read per lookup (fresh `open_archive(path).item(id)`, median of {b['trials']}): "
                           f"{b['rchar']} (/proc/self/io rchar), {b['store_bytes']} counted per file, of "
                           f"which {b['bitstreams_bytes']} from `bitstreams`; bitstreams inner chunk "
                           f"{b['chunk_bytes']}, its shard file {b['shard_file_bytes']}, archive {self.archive_bytes}"),
                      "per file: " + ", ".join(f"{k} {v}" for k, v in b["per_file"].items())]
        if self.batch:
            lines.append(f"batch: `decode_archive` of {self.batch['images']} ids on Ray ({self.batch['format']}, "
                         f"{self.batch['actors']} actors): {self.batch['images_per_s']:.2f} images/s "
                         f"({self.batch['seconds']:.1f} s, {self.batch['failures']} failed)")
        return "\n".join(lines)


def build_archive(path: Path, model_ref: str, count: int, images: Path | None = None, seed: int = 0,
                  progress=print) -> float:
    """Encode ``count`` images into a new archive at ``path`` (segments of 256); returns seconds taken."""
    if path.exists():
        raise ValueError(f"{path} already exists: measure it with --archive, or use another --workdir")
    started = time.perf_counter()
    codec = load_codec(model_ref, max_batch=64)
    writer = ArchiveWriter.open_or_create(path, codec.card, model_ref)
    writer.start_job("bench-decode", {"count": count, "images": str(images) if images else None})
    if images is not None:
        images = Path(images)
        files = local_images(images)[:count]
        if not files:
            raise FileNotFoundError(f"no images in {images}")
        batches = ([(p.relative_to(images).as_posix(), load_image(str(p))) for p in files[s : s + SEGMENT]]
                   for s in range(0, len(files), SEGMENT))
    else:
        rng = np.random.default_rng(seed)
        [source] = generate_images(path.parent / "crop-source", 1, sizes=((512, 512),), seed=seed)
        base = np.asarray(Image.open(source).convert("RGB"))

        def crops(start):
            out = []
            for i in range(start, min(start + SEGMENT, count)):
                top, left = rng.integers(0, base.shape[0] - 64, 2)
                out.append((f"small/{i:05d}.png", Image.fromarray(base[top : top + 64, left : left + 64])))
            return out
        batches = (crops(s) for s in range(0, count, SEGMENT))
    done = 0
    for number, batch in enumerate(batches):
        streams = codec.encode_batch([image for _, image in batch])
        writer.append([Item(name, s, image.height, image.width, f"bench-{number}")
                       for (name, image), s in zip(batch, streams)], unit=f"bench-{number}")
        done += len(batch)
        if progress and number % 10 == 0:
            progress(f"bench decode: archive {done}/{count} images")
    writer.finish_job({"images": done})
    return time.perf_counter() - started


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _median_ms(runs: dict, ids: list[str], rounds: int) -> dict[str, float]:
    """Median ms of each ``runs[name](id)``; interleaved id by id, so load from other processes on the
    machine falls on every path alike."""
    times = {name: [] for name in runs}
    for _ in range(rounds):
        for item_id in ids:
            for name, run in runs.items():
                started = time.perf_counter()
                run(item_id)
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def bytes_read(path: Path, ids: list[str]) -> dict:
    """Bytes one fresh ``open_archive(path).item(id)`` reads: /proc/self/io rchar (median over ``ids``) and,
    for the first id, a per-file breakdown of what the archive's direct reader reads (the archive's own
    counting hook, :class:`~latentzip.pipeline.archive.arrays.count_reads`: zarr.json files, shard indexes,
    chunks; reads through zarr, for an archive of another layout, show in rchar only)."""
    deltas = []
    for item_id in ids:
        before = _rchar()
        open_archive(path).item(item_id)
        deltas.append(_rchar() - before)
    start, end = open_archive(path).byte_range(ids[0])
    with count_reads() as counts:
        archive = open_archive(path)
        archive.item(ids[0])
    per_file = {Path(key).relative_to(path).as_posix(): v for key, v in sorted(counts.items())}
    bitstreams = archive.reader("bitstreams")
    chunk, shard = bitstreams.chunk, bitstreams.shard
    shard_files = {start // shard, (end - 1) // shard}
    shard_file_bytes = sum((path / "bitstreams" / "c" / str(s)).stat().st_size for s in shard_files)
    return {"trials": len(ids), "rchar": int(statistics.median(deltas)), "rchar_max": max(deltas),
            "store_bytes": sum(per_file.values()),
            "bitstreams_bytes": sum(v for k, v in per_file.items() if k.startswith("bitstreams/")),
            "item_bytes": end - start, "chunk_bytes": chunk, "shard_bytes": shard,
            "shard_file_bytes": shard_file_bytes, "per_file": per_file}


def bench_decode(archive: Path | None = None, count: int = 10_000, trials: int = 20, rounds: int = 3,
                 batch_images: int = 500,
                 threads: int = 1, model: str | None = None, images: Path | None = None,
                 workdir: Path | None = None, batch_format: str = "parquet", concurrency: int | None = None,
                 progress=print) -> DecodeBenchmark:
    """Build (or reuse ``archive``) and measure; ``batch_images`` 0 skips the Ray batch decode (Ray must be
    initialised by the caller otherwise)."""
    torch.set_num_threads(threads)
    work = Path(workdir or tempfile.mkdtemp(prefix="latentzip-bench-decode-"))
    build_s = None
    if archive is None:
        archive = work / "bench.zarr"
        model_ref = str(model) if model else str(fixed_seed_codec(work / "tiny-codec", N=16, M=24, gain=20.0))
        build_s = build_archive(archive, model_ref, count, images, progress=progress)
    archive = Path(archive)
    reader = open_archive(archive)
    all_ids = reader.ids  # reads every id once, only to sample from
    ids = random.Random(1).sample(all_ids, min(trials, len(all_ids)))
    codec = reader.codec()
    streams = {item_id: reader.item(item_id).data for item_id in ids}
    codec.decode(streams[ids[0]])  # warm-up: kernels, prior tables
    decode_image(reader, ids[0])
    if progress:
        progress(f"bench decode: timing {len(ids)} ids of {len(all_ids)}")
    ms = _median_ms({"bare": lambda i: codec.decode(streams[i]),
                     "fresh": lambda i: codec.decode(open_archive(archive).item(i).data),
                     "warm": lambda i: decode_image(reader, i),
                     "lookup": lambda i: open_archive(archive).item(i),
                     "cold": lambda i: open_archive(archive).decode(i)}, ids, rounds)
    files = [p for p in archive.rglob("*") if p.is_file()]
    result = DecodeBenchmark(str(archive), reader.meta["model_ref"], len(all_ids), sum(p.stat().st_size for p in files),
                             len(files), threads, len(ids) * rounds, build_s, ms["bare"], ms["fresh"], ms["warm"],
                             ms["cold"], ms["lookup"],
                             bytes_read(archive, ids))
    if batch_images:
        selection = all_ids if batch_images >= len(all_ids) else random.Random(2).sample(all_ids, batch_images)
        out = work / ("batch.parquet" if batch_format == "parquet" else "batch")
        summary = decode_archive(archive, out, ids=selection, concurrency=concurrency, progress=None,
                                 format=batch_format)
        from latentzip.pipeline.cluster import cluster_cpus

        result.batch = {"images": summary.images, "failures": len(summary.failures), "seconds": summary.seconds,
                        "images_per_s": summary.images / summary.seconds, "format": batch_format,
                        "actors": concurrency or max(1, min(cluster_cpus() - 1, len(selection)))}
    return result


def write_result(result: DecodeBenchmark, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n" if out.suffix == ".json"
                   else "# Decode benchmark\n\n" + result.table() + "\n")
    return out
