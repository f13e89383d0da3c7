"""``latentzip decode`` of many ids: a selection of an archive (all ids, a list, or a range of archive
positions, :func:`select_ids`) regenerated as PNG files or as one Parquet shard of PNG bytes, in this
process or in parallel on Ray (:class:`DecodeStage`, a Ray Data callable class that opens the archive and
its model once per actor). Each id goes through the one decode path of pipeline/decoding.py.

PNG files: ``<out>/<id>.png`` (:func:`~latentzip.pipeline.decoding.output_path`); a PNG that exists is
skipped by a rerun, and an id that cannot name its file is a recorded failure of that id while the other
ids are decoded (decode it alone with ``--id ID -o FILE.png``, or into Parquet). The Parquet shard
(columns ``id``, ``png``, ``width``, ``height``; rows in completion order) is written whole through a
temporary name, so a rerun rewrites it.
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from latentzip.pipeline.archive import is_utf8
from latentzip.pipeline.decoding import (archive_codec, decodable, decode_image, decode_to_file, output_path,
                                         png_bytes)

FORMATS = ("png", "parquet")
#: Up to this many ids decode in this process; more go to Ray. On the 2-core development machine, starting
#: an embedded Ray and its decoder actor cost about 90 s, and one ~0.3-megapixel image about 4.5 s
#: (`decode --id A --id B` 127 s against 31 s for one id, issue 18): Ray pays from about 20 images, and
#: only where it has more cores than this process (docs/benchmarks.md, cold start).
RAY_MIN_IDS = 24


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("png", pa.binary()), ("width", pa.int32()), ("height", pa.int32())])


def parse_range(text: str) -> slice:
    """``START:STOP`` over archive positions (Python slice rules: either side may be empty or negative)."""
    start, sep, stop = text.partition(":")
    try:
        if not sep or ":" in stop:
            raise ValueError
        return slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None)
    except ValueError:
        raise ValueError(f"range must be START:STOP with integers (either may be empty), got {text!r}") from None


def select_ids(archive, ids: list[str] | None = None, positions: slice | None = None) -> list[str]:
    """The ids to decode: ``ids`` (duplicates dropped, each checked), else ``positions`` of the archive's
    ids in commit order, else all of them (raises for a damaged listing: :func:`listed_ids` records it)."""
    archive = decodable(archive)
    if ids is not None:
        wanted = list(dict.fromkeys(ids))
        for item_id in wanted:
            archive.position(item_id)  # a missing id fails here, before any work, naming the id
        return wanted
    return archive.ids if positions is None else archive.ids[positions]


def listed_ids(archive, positions: slice | None = None) -> tuple[list[str], dict[str, str]]:
    """(``positions`` of the archive's ids in commit order, or all, each once; what could not be listed:
    damaged segments and rows, by id or ``<segment N ...>``). Never raises for a damaged archive."""
    listed, problems = decodable(archive).listing()
    listed = list(dict.fromkeys(listed))
    return (listed if positions is None else listed[positions]), problems


class DecodeStage:
    """Ray Data callable class: a batch of ids -> PNG files, or PNG bytes when ``out_dir`` is None (one
    archive and codec opened per actor)."""

    def __init__(self, archive, out_dir: str | None, model: str | None = None, allow_model_urls=()):
        self.archive = decodable(archive, model, allow_model_urls)
        self.out_dir = None if out_dir is None else Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, pngs, sizes, errors = [], [], [], []
        for item_id in map(str, batch["id"]):
            path, png, size, error = "", b"", (0, 0), ""
            try:
                if self.out_dir is None:
                    image = decode_image(self.archive, item_id)
                    png, size = png_bytes(image), image.size
                else:
                    path = str(decode_to_file(self.archive, item_id, output_path(self.out_dir, item_id)))
            except Exception as exc:  # noqa: BLE001 - recorded per id, reported by the driver
                error = f"{type(exc).__name__}: {exc}"
            paths.append(path), pngs.append(png), sizes.append(size), errors.append(error)
        return {"id": batch["id"], "path": np.array(paths, dtype=object), "png": np.array(pngs, dtype=object),
                "width": np.array([s[0] for s in sizes], np.int32), "height": np.array([s[1] for s in sizes], np.int32),
                "error": np.array(errors, dtype=object)}


@dataclass
class DecodeSummary:
    out_dir: str
    images: int
    skipped: int
    failures: dict[str, str]
    seconds: float

    def describe(self) -> str:
        rate = self.images / self.seconds if self.seconds else float("nan")
        return (f"decoded {self.images} images into {self.out_dir} ({self.skipped} already there, "
                f"{len(self.failures)} failed), {rate:.2f} images/s")


def decode_archive(archive: str | Path, out: str | Path, ids: list[str] | None = None,
                   batch_size: int = 8, concurrency: int | None = None, progress=print, *,
                   positions: slice | None = None, format: str = "png", use_ray: bool | None = None,
                   address: str | None = None, model: str | None = None, allow_model_urls=()) -> DecodeSummary:
    """Regenerate ``ids`` (or ``positions``; default: all) of an archive: PNG files in the folder ``out``,
    or (``format="parquet"``) one Parquet shard of PNG bytes at the file ``out``.

    Everything is checked before any decoding (the ids, the output location, the archive's model), and the
    work goes to Ray (started with ``address`` unless initialised) only when ``use_ray`` says so, by default
    when more than :data:`RAY_MIN_IDS` ids are left to decode; fewer decode in this process. What cannot be
    decoded is recorded in the summary's failures and the rest is decoded: damaged segments or rows of the
    listing (by id, or ``<segment N ...>``), ids that cannot name their PNG file, corrupt items. ``model``
    and ``allow_model_urls``: as for :func:`~latentzip.pipeline.archive.open_archive`."""
    if format not in FORMATS:
        raise ValueError(f"unknown output format {format!r}; choose one of {', '.join(FORMATS)}")
    started = time.perf_counter()
    out = Path(out)
    check_output(out, format)
    reader = decodable(archive, model, allow_model_urls)
    if ids is not None:
        wanted, failures = select_ids(reader, ids), {}
    else:
        wanted, failures = listed_ids(reader, positions)
    todo, skipped = _plan(wanted, out, format, failures)
    decoded = 0
    writer = None
    if todo:
        archive_codec(reader, todo[0], f"{len(todo)} ids (first {todo[0]!r})")  # fail before any work, not per id
        on_ray = len(todo) > RAY_MIN_IDS if use_ray is None else use_ray
        options = {"model": reader.model_override, "allow_model_urls": reader.allow_model_urls}
        batches = (_ray_batches(str(reader.path), todo, out, format, batch_size, concurrency, address, options)
                   if on_ray else _local_batches(reader, todo, out, format, batch_size))
        tmp = out.with_name(f".{out.name}.tmp")
        if format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            out.parent.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(tmp, parquet_schema())
        try:
            for batch in batches:
                ok = [i for i, error in enumerate(batch["error"]) if not error]
                failures.update({str(batch["id"][i]): str(e) for i, e in enumerate(batch["error"]) if e})
                decoded += len(ok)
                if writer is not None and ok:
                    writer.write_table(pa.table({"id": [str(batch["id"][i]) for i in ok],
                                                 "png": [bytes(batch["png"][i]) for i in ok],
                                                 "width": batch["width"][ok], "height": batch["height"][ok]},
                                                schema=parquet_schema()))
                if progress:
                    progress(f"decode: {decoded + len(failures)}/{len(todo)} images, {len(failures)} failed")
        finally:
            if writer is not None:
                writer.close()
        if writer is not None:
            os.replace(tmp, out)
    return DecodeSummary(str(out), decoded, skipped, failures, time.perf_counter() - started)


def _plan(wanted: list[str], out: Path, format: str, failures: dict[str, str]) -> tuple[list[str], int]:
    """(ids to decode, how many PNGs are already there); ids that cannot be written go to ``failures``."""
    todo, skipped = [], 0
    for item_id in wanted:
        try:
            if not is_utf8(item_id):
                raise ValueError(f"id {item_id!r} is not valid UTF-8: it cannot be written as an id or a file name")
            if format == "png" and output_path(out, item_id).exists():
                skipped += 1
                continue
        except (ValueError, OSError) as exc:
            failures[item_id] = f"{type(exc).__name__}: {exc}"
            continue
        todo.append(item_id)
    return todo, skipped


def check_output(out: Path, format: str) -> None:
    """Refuse an output location that cannot be written, before any work: a folder (PNG) that is a file, a
    Parquet file that is a folder, or a parent that is a file."""
    if format == "png" and out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a folder (PNG output is a folder of <id>.png files)")
    if format == "parquet" and out.is_dir():
        raise ValueError(f"output {out} is a folder; --format parquet writes one file")
    parent = next((p for p in (out if format == "png" else out.parent, *out.parents) if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ValueError(f"output {out} cannot be created: {parent} is a file")
    if parent is not None and not os.access(parent, os.W_OK):
        raise ValueError(f"output {out} cannot be created: {parent} is not writable")


def _local_batches(reader, todo: list[str], out: Path, format: str, batch_size: int):
    """The stage's result batches, computed in this process (what Ray's actors would return)."""
    stage = DecodeStage(reader, None if format == "parquet" else str(out))
    for start in range(0, len(todo), batch_size):
        yield stage({"id": np.array(todo[start : start + batch_size], dtype=object)})


def _ray_batches(archive: str, todo: list[str], out: Path, format: str, batch_size: int,
                 concurrency: int | None, address: str | None, options: dict):
    import ray

    from latentzip.pipeline.cluster import actor_plan, ensure_ray

    ensure_ray(address=address)
    ds = ray.data.from_items([{"id": i} for i in todo], override_num_blocks=max(1, len(todo) // batch_size))
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={"archive": archive, "out_dir": None if format == "parquet" else str(out), **options},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actor_plan(len(todo), concurrency, use_gpus=False).actors),
        num_cpus=1,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="numpy")


def read_parquet_images(path: str | Path) -> dict[str, np.ndarray]:
    """id -> decoded pixels of a Parquet shard written by :func:`decode_archive` (``format="parquet"``)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {item_id: np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            for item_id, png in zip(table.column("id").to_pylist(), table.column("png").to_pylist())}
