"""Encode: Parquet shards -> entropy-coded bitstreams in a Zarr archive, as a Ray Data job.

Ray Data streams the shards, an actor pool of :class:`EncodeStage` (model loaded once per actor)
decodes and compresses batches, and the driver appends results to the archive: one writer, so no two
processes ever write the same Zarr chunk. A rerun of the same command skips ids already in the archive.

A bad image never fails the job: the stage returns it with an error, the driver records it in the
archive's ``failures``, and Ray Data's ``max_errored_blocks`` stays 0 (it would drop whole blocks silently).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
import torch

from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import ArchiveWriter, Item
from latentzip.pipeline.raycluster import cluster_cpus, cluster_gpus
from latentzip.pipeline.shards import shard_paths


class EncodeStage:
    """Ray Data callable class: a batch of shard rows -> a batch of bitstreams (or per-row errors).

    Runs without Ray too: ``EncodeStage(model)({"id": ..., "image": ..., "source": ...})``.
    """

    def __init__(self, model_ref: str, device: str = "cpu", max_batch: int = 16, threads: int | None = None):
        if threads:
            torch.set_num_threads(threads)
        self.codec = load_codec(model_ref, device=device, max_batch=max_batch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ids = [str(v) for v in batch["id"]]
        images, errors = [], [""] * len(ids)
        for i, data in enumerate(batch["image"]):
            try:
                images.append(load_image(bytes(data)))
            except UnsupportedImageError as exc:
                images.append(None)
                errors[i] = str(exc)
        good = [i for i, image in enumerate(images) if image is not None]
        streams = [b""] * len(ids)
        for i, data in zip(good, self._encode([images[i] for i in good], good, errors)):
            streams[i] = data or b""
        return {
            "id": np.array(ids, dtype=object),
            "data": np.array(streams, dtype=object),
            "height": np.array([im.height if im else 0 for im in images], dtype=np.int64),
            "width": np.array([im.width if im else 0 for im in images], dtype=np.int64),
            "source": np.array([str(v) for v in batch["source"]], dtype=object),
            "error": np.array(errors, dtype=object),
        }

    def _encode(self, images, positions, errors):
        try:
            return self.codec.encode_batch(images)
        except Exception:  # noqa: BLE001 - retry one by one so one bad image cannot sink its batch
            out = []
            for image, position in zip(images, positions):
                try:
                    out.append(self.codec.encode(image))
                except Exception as exc:  # noqa: BLE001
                    errors[position] = f"encode failed: {type(exc).__name__}: {exc}"
                    out.append(None)
            return out


@dataclass
class EncodeSummary:
    archive: str
    job_id: str
    images: int
    skipped: int
    failures: int
    num_bytes: int
    pixels: int
    seconds: float

    @property
    def bpp(self) -> float:
        return self.num_bytes * 8 / self.pixels if self.pixels else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def describe(self) -> str:
        return (f"encoded {self.images} images ({self.skipped} already in the archive, {self.failures} failed) "
                f"into {self.archive}: {self.num_bytes} bytes, {self.bpp:.4f} bpp, {self.images_per_s:.2f} images/s")


def encode(shards: str | Path, archive: str | Path, model_ref: str, batch_size: int = 16,
           concurrency: int | None = None, progress=print) -> EncodeSummary:
    """Encode every image of ``shards`` (an ingest folder or shard file) into ``archive`` with the codec."""
    started = time.perf_counter()
    paths = shard_paths(shards)
    codec = load_codec(model_ref)
    if codec.kind != "learned":
        raise ValueError(f"encode needs a learned codec, got classical codec {model_ref!r}")
    writer = ArchiveWriter.open_or_create(archive, codec.card, model_ref)
    job_id = uuid.uuid4().hex[:12]
    writer.start_job(job_id, {"shards": [str(p) for p in paths], "model_ref": str(model_ref)})

    shard_ids, shard_of = [], {}
    for path in paths:
        ids = pq.read_table(path, columns=["id"]).column("id").to_pylist()
        shard_ids.extend(ids)
        shard_of.update(dict.fromkeys(ids, str(path)))
    done_ids = set(writer.ids) & set(shard_ids)
    total = len(shard_ids)
    gpus, cpus = cluster_gpus(), cluster_cpus()
    # One CPU stays free for Ray Data's list/read tasks: an actor pool holding every CPU starves them.
    actors = concurrency or max(1, gpus or cpus - 1)
    threads = 1 if gpus else max(1, cpus // actors)
    if len(done_ids) == total:
        summary = EncodeSummary(str(archive), job_id, 0, total, 0, 0, 0, time.perf_counter() - started)
        writer.finish_job({"images": 0, "skipped": total, "failures": 0})
        return summary
    ds = ray.data.read_parquet([str(p) for p in paths]).select_columns(["id", "image", "source"])
    if done_ids:
        ds = ds.filter(lambda row: row["id"] not in done_ids)
    ds = ds.map_batches(
        EncodeStage,
        fn_constructor_kwargs={"model_ref": str(model_ref), "device": "cuda" if gpus else "cpu",
                               "threads": threads},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_gpus=1 if gpus else 0,
        num_cpus=1,
    )
    images = failures = num_bytes = pixels = 0
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        ok = [i for i, error in enumerate(batch["error"]) if not error]
        # An item's source is its shard (the archive's "sources" lists shards, not one entry per file: a
        # per-file list would grow the group attributes, rewritten at every commit, with every image).
        items = [Item(str(batch["id"][i]), bytes(batch["data"][i]), int(batch["height"][i]),
                      int(batch["width"][i]), shard_of[str(batch["id"][i])]) for i in ok]
        written = writer.append(items)
        failed = [{"id": str(batch["id"][i]), "reason": str(batch["error"][i])}
                  for i in range(len(batch["id"])) if batch["error"][i]]
        if failed:
            writer.record_failures(failed)
        images += written
        failures += len(failed)
        num_bytes += sum(len(item.data) for item in items)
        pixels += sum(item.height * item.width for item in items)
        if progress:
            elapsed = time.perf_counter() - started
            progress(f"encode: {len(done_ids) + images + failures}/{total} images, "
                     f"{failures} failed, {images / elapsed:.2f} images/s")
    summary = EncodeSummary(str(archive), job_id, images, len(done_ids), failures, num_bytes, pixels,
                            time.perf_counter() - started)
    writer.finish_job({k: v for k, v in asdict(summary).items() if k not in ("archive", "job_id")})
    return summary
