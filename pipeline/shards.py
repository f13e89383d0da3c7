"""Ingest: a folder of images -> Parquet shards, the unit of work of every later job.

Each shard ``shard-00000.parquet`` holds rows of (``id``, ``image``, ``width``, ``height``, ``source``):
the id is the file's path relative to the folder (POSIX separators), ``image`` the file's original bytes
(nothing is re-encoded), width and height those of the image after the conversion policy (EXIF orientation
applied). Every file is fully decoded once, so a truncated or mislabelled file is caught here and listed in
``errors.parquet`` (``source``, ``reason``) instead of failing a job later, as is every entry that the
input policy of pipeline/inputs.py does not read (not a regular file, a link out of the folder, above
``max_file_bytes``, a name that is not UTF-8). ``ingest.json`` records counts.

Shards are written whole (locally to a temporary name, then renamed; on object storage one PUT), so a shard
that exists is complete; rerunning ingest on the same folder rewrites the same shards. The folder and the
output may be paths or URLs (``s3://...``, see pipeline/storage.py).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.pipeline import storage
from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES, check_max_file_bytes, read_input, split_names

SHARD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.binary()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("source", pa.string()),
])
ERRORS_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string())])
ERRORS_FILE, SUMMARY_FILE = "errors.parquet", "ingest.json"


@dataclass(frozen=True)
class IngestResult:
    out_dir: str | Path
    shards: list
    images: int
    errors: int


def _probe(folder: str | Path, item_id: str, max_file_bytes: int, follow_symlinks: bool) -> dict:
    data = read_input(folder, item_id, max_file_bytes, follow_symlinks)
    if not data:
        raise UnsupportedImageError("empty file")
    image = load_image(data)
    return {"image": data, "width": image.width, "height": image.height}


def ingest(folder: str | Path, out_dir: str | Path, images_per_shard: int = 256, workers: int = 4,
           progress=print, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, follow_symlinks: bool = False) -> IngestResult:
    """``folder`` and ``out_dir``: paths or URLs (pipeline/storage.py). ``max_file_bytes`` and
    ``follow_symlinks``: the input policy (pipeline/inputs.py)."""
    folder, out_dir = storage.normalise(folder), storage.normalise(out_dir)
    if not storage.is_dir(folder):
        raise FileNotFoundError(f"input folder {folder} does not exist")
    if images_per_shard < 1:
        raise ValueError("images_per_shard must be at least 1")
    check_max_file_bytes(max_file_bytes)
    if isinstance(out_dir, Path):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"cannot create the output folder {out_dir}: {exc.strerror or exc}") from exc
    files, bad_names = split_names(storage.list_files(folder))
    rows, errors, shards, images = [], [], [], 0
    errors += [{"source": str(storage.join(folder, name)), "reason": reason} for name, reason in bad_names]

    def probe(item_id: str):
        source = storage.join(folder, item_id)
        try:
            return item_id, source, _probe(folder, item_id, max_file_bytes, follow_symlinks), None
        except (UnsupportedImageError, OSError) as exc:
            return item_id, source, None, str(exc)

    def flush():
        path = storage.join(out_dir, f"shard-{len(shards):05d}.parquet")
        storage.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
        shards.append(path)
        rows.clear()

    # Shards are written as they fill, so memory holds one shard of image bytes, not the whole folder.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (item_id, source, row, error) in enumerate(pool.map(probe, files), 1):
            if error is None:
                rows.append({"id": item_id, **row, "source": str(source)})
                images += 1
                if len(rows) == images_per_shard:
                    flush()
            else:
                errors.append({"source": str(source), "reason": error})
            if progress and (done % 100 == 0 or done == len(files)):
                progress(f"ingest: {done}/{len(files)} files read, {len(errors)} unreadable")
    if bad_names and not files and progress:
        progress(f"ingest: {len(bad_names)} files unreadable")
    if rows:
        flush()

    for stale in storage.glob(out_dir, "shard-*.parquet"):
        if str(stale) not in map(str, shards):
            storage.remove(stale)
    storage.write_table(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA), storage.join(out_dir, ERRORS_FILE))
    manifest = {"folder": str(folder), "images": images, "errors": len(errors),
                "shards": [str(p).rsplit("/", 1)[-1] for p in shards], "images_per_shard": images_per_shard}
    storage.write_bytes(storage.join(out_dir, SUMMARY_FILE), (json.dumps(manifest, indent=2) + "\n").encode())
    return IngestResult(out_dir, shards, images, len(errors))


def is_shards(location: str | Path) -> bool:
    """Whether ``location`` (a path or URL) is ingest output rather than images: a Parquet file, or a folder
    holding ``ingest.json`` or Parquet files other than ``errors.parquet`` (a folder whose every file failed
    ingest still says so by its ``ingest.json``). Every job that takes either asks this."""
    location = storage.normalise(location)
    if storage.is_file(location):
        return str(location).endswith(".parquet")
    return storage.exists(storage.join(location, SUMMARY_FILE)) or any(
        str(p).rsplit("/", 1)[-1] != ERRORS_FILE for p in storage.glob(location, "*.parquet"))


def shard_paths(location: str | Path) -> list:
    """The shards of an ingest output folder (or prefix), or a single shard file: Paths, or URLs."""
    location = storage.normalise(location)
    if storage.is_file(location):
        return [location]
    shards = storage.glob(location, "shard-*.parquet") or storage.glob(location, "*.parquet")
    shards = [p for p in shards if str(p).rsplit("/", 1)[-1] != ERRORS_FILE]
    if not shards:
        raise FileNotFoundError(f"no Parquet shards in {location} (run `latentzip ingest` first)")
    return shards


def read_originals(location: str | Path, ids: set[str] | None = None) -> dict[str, bytes]:
    """id -> original image bytes from shards (all, or only ``ids``)."""
    out = {}
    for path in shard_paths(location):
        table = storage.read_table(path, columns=["id", "image"])
        for item_id, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
            if ids is None or item_id in ids:
                out[item_id] = data
    return out
