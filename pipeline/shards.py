"""Ingest: a folder of images -> Parquet shards, the unit of work of every later job.

Each shard ``shard-00000.parquet`` holds rows of (``id``, ``image``, ``width``, ``height``, ``source``):
the id is the file's path relative to the folder (POSIX separators), ``image`` the file's original bytes
(nothing is re-encoded), width and height those of the image after the conversion policy (EXIF orientation
applied). Every file is fully decoded once, so a truncated or mislabelled file is caught here and listed in
``errors.parquet`` (``source``, ``reason``) instead of failing a job later. ``ingest.json`` records counts.

Shards are written to a temporary name and renamed, so a shard that exists is complete; rerunning ingest
on the same folder rewrites the same shards.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from latentzip.codecs.images import UnsupportedImageError, load_image

SHARD_SCHEMA = pa.schema([
    ("id", pa.string()),
    ("image", pa.binary()),
    ("width", pa.int32()),
    ("height", pa.int32()),
    ("source", pa.string()),
])
ERRORS_SCHEMA = pa.schema([("source", pa.string()), ("reason", pa.string())])


@dataclass(frozen=True)
class IngestResult:
    out_dir: Path
    shards: list[Path]
    images: int
    errors: int


def list_files(folder: Path) -> list[Path]:
    """Every regular, non-hidden file below ``folder``, in a stable order."""
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(Path(root) / n for n in sorted(names) if not n.startswith("."))
    return files


def _probe(path: Path) -> dict:
    data = path.read_bytes()
    if not data:
        raise UnsupportedImageError("empty file")
    image = load_image(data)
    return {"image": data, "width": image.width, "height": image.height}


def ingest(folder: str | Path, out_dir: str | Path, images_per_shard: int = 256, workers: int = 4,
           progress=print) -> IngestResult:
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"input folder {folder} does not exist")
    if images_per_shard < 1:
        raise ValueError("images_per_shard must be at least 1")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = list_files(folder)
    rows, errors, shards, images = [], [], [], 0

    def probe(path: Path):
        try:
            return path, _probe(path), None
        except (UnsupportedImageError, OSError) as exc:
            return path, None, str(exc)

    def flush():
        path = out_dir / f"shard-{len(shards):05d}.parquet"
        _write_atomic(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), path)
        shards.append(path)
        rows.clear()

    # Shards are written as they fill, so memory holds one shard of image bytes, not the whole folder.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for done, (path, row, error) in enumerate(pool.map(probe, files), 1):
            if error is None:
                rows.append({"id": path.relative_to(folder).as_posix(), **row, "source": str(path)})
                images += 1
                if len(rows) == images_per_shard:
                    flush()
            else:
                errors.append({"source": str(path), "reason": error})
            if progress and (done % 100 == 0 or done == len(files)):
                progress(f"ingest: {done}/{len(files)} files read, {len(errors)} unreadable")
    if rows:
        flush()

    for stale in sorted(out_dir.glob("shard-*.parquet")):
        if stale not in shards:
            stale.unlink()
    _write_atomic(pa.Table.from_pylist(errors, schema=ERRORS_SCHEMA), out_dir / "errors.parquet")
    manifest = {"folder": str(folder), "images": images, "errors": len(errors),
                "shards": [p.name for p in shards], "images_per_shard": images_per_shard}
    (out_dir / "ingest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return IngestResult(out_dir, shards, images, len(errors))


def _write_atomic(table: pa.Table, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def shard_paths(location: str | Path) -> list[Path]:
    """The shards of an ingest output folder, or a single shard file."""
    location = Path(location)
    if location.is_file():
        return [location]
    shards = sorted(location.glob("shard-*.parquet")) or sorted(location.glob("*.parquet"))
    shards = [p for p in shards if p.name != "errors.parquet"]
    if not shards:
        raise FileNotFoundError(f"no Parquet shards in {location} (run `latentzip ingest` first)")
    return shards


def read_originals(location: str | Path, ids: set[str] | None = None) -> dict[str, bytes]:
    """id -> original image bytes from shards (all, or only ``ids``)."""
    out = {}
    for path in shard_paths(location):
        table = pq.read_table(path, columns=["id", "image"])
        for item_id, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
            if ids is None or item_id in ids:
                out[item_id] = data
    return out
