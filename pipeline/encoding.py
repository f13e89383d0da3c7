"""Encode: Parquet shards or image folders -> entropy-coded bitstreams in a Zarr archive, as a Ray Data job.

The unit of work is one input shard, or, for an image folder, one group of ``files_per_unit`` consecutive
image entries (pipeline/sources.py: sorted, hidden files and notes left out; the name carries a hash of its ids,
see :func:`list_units`), so a unit is the same on every run over the same folder. Ray Data hands units to
an actor pool of :class:`EncodeStage` (model loaded once per actor), which reads the unit's images (the
conversion policy of codecs/images.py), encodes them in dense batches of one padded size, and returns one
row per image: its bitstream, or why it has none. The driver is the one writer of the archive: when every
row of a unit is back it writes them as one segment (results, then the completion marker;
pipeline/archive/). A rerun skips units whose marker is committed; a unit whose worker died is redone by
Ray (actors restart, tasks retry) and written once, since the driver keeps the first complete result of
each unit and writes each unit once.

A bad image never fails the job: it is recorded in the archive's errors table with the reason, and Ray
Data's ``max_errored_blocks`` stays 0 (a non-zero value silently drops whole blocks).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from latentzip.codecs.registry import check_codec_name, coding_card
from latentzip.pipeline import storage
from latentzip.pipeline.archive import ArchiveWriter, Failure, Item, check_archive_location
from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES, check_max_file_bytes
from latentzip.pipeline.progress import Progress
from latentzip.pipeline.sources import resolve

from latentzip.pipeline.encoding_stage import PRECISIONS, EncodeStage


FILES_PER_UNIT = 256


@dataclass(frozen=True)
class Unit:
    """One unit of work: a shard (``name`` is its path), or a group of files of an image ``folder``
    (``files``: their ids, i.e. paths relative to the folder). ``rows``: its inputs. ``refused``: per file,
    why it is not read at all ("" for the others; a name that is not UTF-8 is listed under a printable id)."""
    name: str
    rows: int
    folder: str = ""
    files: tuple[str, ...] = ()
    refused: tuple[str, ...] = ()


def list_units(location: str | Path, files_per_unit: int = FILES_PER_UNIT) -> tuple[list[Unit], str]:
    """The units of work of ``location`` (a path or a URL, see pipeline/storage.py) and what they are
    (``"shards"`` or ``"file groups"``).

    A shard file, or a folder holding Parquet shards or ``ingest.json``, is ingest output: one unit per
    shard. Any other folder is an image folder: its image entries (pipeline/sources.py) in order, cut into groups of
    ``files_per_unit``; group k is named ``FOLDER#files-<k*files_per_unit, 9 digits>-<BLAKE2b-48 of its ids
    joined by NUL>``, so the same folder gives the same units on every run, and a group whose files
    changed gets a new name (its files not in the archive yet are encoded, the others skipped).
    """
    source = resolve(location)
    if source.kind == "shards":
        return [Unit(str(p), storage.parquet_file(p).metadata.num_rows) for p in source.shards], "shards"
    location = source.location
    if storage.is_file(location):
        raise ValueError(f"input {location} is a file: give a folder of images, ingest output or a Parquet shard")
    if files_per_unit < 1:
        raise ValueError("files_per_unit must be at least 1")
    # A name that is not UTF-8 keeps its place in its group, under a printable id, and is recorded as a
    # failure with the reason instead of being read (pipeline/sources.py).
    entries = source.entries
    units = []
    for start in range(0, len(entries), files_per_unit):
        group = tuple(item_id for item_id, _ in entries[start : start + files_per_unit])
        refused = tuple(reason for _, reason in entries[start : start + files_per_unit])
        digest = hashlib.blake2b("\0".join(group).encode(), digest_size=6).hexdigest()
        units.append(Unit(f"{location}#files-{start:09d}-{digest}", len(group), str(location), group,
                          refused if any(refused) else ()))
    return units, "file groups"


def bpp_text(mean_bpp: float, total_bpp: float) -> str:
    """The two bpp of a set of images, each labelled: the mean over images (report's and model cards'
    figure) and the pixel-weighted total (all bytes / all pixels)."""
    return f"{mean_bpp:.4f} bpp mean over images ({total_bpp:.4f} bpp all bytes / all pixels)"


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
    units: int = 0
    skipped_units: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    unit_kind: str = "shards"
    bpp_sum: float = 0.0  # the sum over images of each image's bpp (mean_bpp divides it by images)

    @property
    def bpp(self) -> float:
        """Pixel-weighted: all bytes x 8 / all pixels (large images weigh more)."""
        return self.num_bytes * 8 / self.pixels if self.pixels else float("nan")

    @property
    def mean_bpp(self) -> float:
        """The mean over images of each image's bpp: what report, bench rd and model cards print."""
        return self.bpp_sum / self.images if self.images else float("nan")

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds else float("nan")

    def describe(self) -> str:
        if not self.units:
            return (f"nothing new: all {self.skipped_units} {self.unit_kind} ({self.skipped} images) are already "
                    f"in {self.archive}; nothing written")
        text = (f"encoded {self.images} images from {self.units} {self.unit_kind} ({self.skipped_units} "
                f"{self.unit_kind}, "
                f"{self.skipped} images, already in the archive; {self.failures} failed) into {self.archive}: "
                f"{self.num_bytes} bytes, {bpp_text(self.mean_bpp, self.bpp)}, {self.images_per_s:.2f} images/s")
        if self.reasons:
            text += "\nfailures by reason (the archive's errors table has each id):\n" + "\n".join(
                f"  {count:6d}  {reason}" for reason, count in sorted(self.reasons.items(), key=lambda kv: -kv[1]))
        return text


def _reason_kind(reason: str) -> str:
    return reason.split(":", 1)[0]


class _UnitWriter:
    """Driver side: collects each unit's rows and writes a unit once, when all its rows are back."""

    def __init__(self, writer: ArchiveWriter, rows_of: dict[str, int]):
        self.writer, self.rows_of = writer, rows_of
        self.partial: dict[str, dict[int, dict]] = {}
        self.written: set[str] = set()
        self.new_ids: dict[str, str] = {}  # id -> unit, for ids written by this job
        self.images = self.failures = self.num_bytes = self.pixels = 0
        self.bpp_sum = 0.0
        self.reasons: Counter = Counter()

    def add(self, batch: dict[str, np.ndarray]) -> list[str]:
        """Take a batch of result rows; returns the units it completed (and wrote)."""
        done = []
        for i, unit in enumerate(batch["unit"]):
            rows = self.partial.setdefault(str(unit), {})
            # A retried task can deliver a unit twice: the first complete copy of each row wins.
            rows.setdefault(int(batch["row"][i]), {name: batch[name][i] for name in batch})
        for unit, rows in list(self.partial.items()):
            if len(rows) == self.rows_of[unit] and unit not in self.written:
                self.write(unit, [rows[r] for r in range(len(rows))])
                del self.partial[unit]
                done.append(unit)
        return done

    def write(self, unit: str, rows: list[dict]) -> None:
        ids = [str(r["id"]) for r in rows]
        known = self.writer.known(ids)
        items, failures, seen = [], [], set()
        for r, item_id in zip(rows, ids):
            if r["error"]:
                failures.append(Failure(item_id, str(r["error"]), unit))
            elif item_id in known or item_id in seen or item_id in self.new_ids:
                where = self.new_ids.get(item_id) or (unit if item_id in seen else self.writer.item(item_id).source)
                failures.append(Failure(item_id, f"duplicate id: already encoded from {where}", unit))
            else:
                seen.add(item_id)
                items.append(Item(item_id, bytes(r["data"]), int(r["height"]), int(r["width"]), unit, str(r["mode"])))
        self.writer.append(items, failures, unit=unit)
        self.written.add(unit)
        self.new_ids.update(dict.fromkeys((item.id for item in items), unit))
        self.images += len(items)
        self.failures += len(failures)
        self.num_bytes += sum(len(item.data) for item in items)
        self.pixels += sum(item.height * item.width for item in items)
        self.bpp_sum += sum(len(item.data) * 8 / (item.height * item.width) for item in items)
        self.reasons.update(_reason_kind(f.reason) for f in failures)


def encode(inputs: str | Path, archive: str | Path, model_ref: str, batch_size: int = 16,
           concurrency: int | None = None, precision: str = "fp32", files_per_unit: int = FILES_PER_UNIT,
           progress=print, refine_steps: int = 0, address: str | None = None,
           max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, follow_symlinks: bool = False) -> EncodeSummary:
    """Encode every image of ``inputs`` (an ingest folder, a shard file, or a folder of images) into
    ``archive`` with the codec.

    ``batch_size`` bounds the images per ``compress`` call (images of one padded size are batched
    together); ``concurrency`` is the number of encoder actors; ``precision="bf16"`` runs ``g_a`` under
    bf16 autocast (see :func:`fast_analysis`); ``files_per_unit``: files per unit of work of an image
    folder (see :func:`list_units`); ``refine_steps`` > 0 refines each image's latents before coding
    (codecs/refine.py: smaller streams for the same decoder, many times the encode time);
    ``max_file_bytes`` and ``follow_symlinks``: the input policy for image folders (pipeline/inputs.py).

    Everything is checked here, in the driver, before Ray is used: the options, the inputs, the model's
    name, the archive's location and that it was written by this model. Ray (joined at ``address``, or an
    embedded one, unless already initialised) starts only when there are images to encode.
    """
    started = time.perf_counter()
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if refine_steps < 0:
        raise ValueError(f"refine_steps must not be negative, got {refine_steps}")
    if batch_size < 1 or (concurrency is not None and concurrency < 1):
        raise ValueError(f"batch size and concurrency must be at least 1, got {batch_size} and {concurrency}")
    check_max_file_bytes(max_file_bytes)
    check_codec_name(model_ref)
    check_archive_location(archive)
    all_units, kind = list_units(inputs, files_per_unit)
    card = coding_card(model_ref, "encode")  # codec.json alone: the workers load (and check) the weights
    writer = ArchiveWriter.open_or_create(archive, card, model_ref)
    job_id = uuid.uuid4().hex[:12]
    source = ({"shards": [u.name for u in all_units]} if kind == "shards" else
              {"folder": str(inputs), "files": sum(u.rows for u in all_units), "files_per_unit": files_per_unit})
    writer.start_job(job_id, {**source, "model_ref": str(model_ref), "precision": precision,
                              **({"refine_steps": refine_steps} if refine_steps else {})})
    completed = writer.completed_units()
    skipped = sum(u.rows for u in all_units if u.name in completed)
    todo = []
    for unit in (u for u in all_units if u.name not in completed):
        if unit.files:  # a group of a folder that changed since an earlier job: skip the files already in
            known = writer.known(list(unit.files))
            if known:
                keep = [i for i, f in enumerate(unit.files) if f not in known]
                unit = Unit(unit.name, len(keep), unit.folder, tuple(unit.files[i] for i in keep),
                            tuple(unit.refused[i] for i in keep) if unit.refused else ())
                skipped += len(known)
        todo.append(unit)
    units = _UnitWriter(writer, {u.name: u.rows for u in todo})
    for unit in [u for u in todo if u.rows == 0]:
        units.write(unit.name, [])  # an empty unit is complete at once
    todo = [u for u in todo if u.rows]
    total = sum(u.rows for u in todo)
    if todo:
        import ray

        from latentzip.pipeline.cluster import actor_plan, ensure_ray

        ensure_ray(address=address)
        plan = actor_plan(len(todo), concurrency)
        context = ray.data.DataContext.get_current()
        context.max_errored_blocks = 0
        # Every chunk the encode stage yields becomes a block of its own (Ray Data would otherwise gather a
        # unit's chunks into one block): the driver counts images as they are encoded. Restored below.
        saved_block_size, context.target_max_block_size = context.target_max_block_size, 1
        rows = [{"unit": u.name} if not u.files else
                {"unit": u.name, "folder": u.folder, "files": "\0".join(u.files),
                 "refused": json.dumps(dict((f, r) for f, r in zip(u.files, u.refused) if r))} for u in todo]
        ds = ray.data.from_items(rows, override_num_blocks=len(todo))
        ds = ds.map_batches(
            EncodeStage,
            fn_constructor_kwargs={"model_ref": str(model_ref), "model_id": card["model_id"], "device": plan.device,
                                   "max_batch": batch_size, "threads": plan.threads, "precision": precision,
                                   "refine_steps": refine_steps, "max_file_bytes": max_file_bytes,
                                   "follow_symlinks": follow_symlinks},
            batch_size=1,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_gpus=plan.gpus,
            num_cpus=1,
        )
        bar = Progress(total, "encode", progress)
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                finished = units.add(batch)
                elapsed = time.perf_counter() - started
                done = units.images + units.failures
                mean_bpp, total_bpp = units.bpp_sum / max(units.images, 1), units.num_bytes * 8 / max(units.pixels, 1)
                bar.advance(len(batch["id"]), postfix=f"{units.failures} failed, {mean_bpp:.4f} bpp",
                            line=finished and f"encode: {len(units.written)}/{len(todo)} {kind}, {done}/{total} "
                                              f"images, {units.failures} failed, {units.images / elapsed:.2f} "
                                              f"images/s, {bpp_text(mean_bpp, total_bpp)}")
        finally:
            bar.close()
            context.target_max_block_size = saved_block_size
        missing = [u.name for u in todo if u.name not in units.written]
        if missing:  # Ray Data finished without every unit: never report success for that
            raise RuntimeError(f"encode job {job_id} ended without results for {kind} {missing}")
    new_units = len(all_units) - sum(u.name in completed for u in all_units)
    summary = EncodeSummary(str(archive), job_id, units.images, skipped, units.failures, units.num_bytes,
                            units.pixels, time.perf_counter() - started, new_units,
                            len(all_units) - new_units, dict(units.reasons), kind, units.bpp_sum)
    record = {k: v for k, v in asdict(summary).items() if k not in ("archive", "job_id")}
    writer.finish_job(record, job_id)
    return summary
