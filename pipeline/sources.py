"""Sources: the one answer to "what images does this location hold?", for every job that reads originals.

A location (a path or an fsspec URL, pipeline/storage.py) is either **ingest output** (a Parquet shard, or a
folder holding ``ingest.json`` or Parquet shards: :func:`latentzip.pipeline.shards.is_shards`) or an
**image folder**. An image folder's entries are its non-hidden files in :func:`storage.list_files` order;
an id is the path relative to the folder. Two kinds of entries are not images:

- **notes**: files that sit beside photos (``SOURCES.md``, a manifest, a script; :data:`NOTE_SUFFIXES`) are
  set apart and counted, never read;
- **refused names**: a name that is not UTF-8 keeps its place under a printable id with the reason
  (:func:`latentzip.pipeline.inputs.split_names`), so jobs record it as a per-item failure.

Every other file is an image entry, whatever its extension: a file that does not decode is a per-item
failure (encode, score) or a skipped image (train), never silently left out. So encode, train, score,
report and the benchmarks see the same ids for one folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from latentzip.pipeline import storage
from latentzip.pipeline.inputs import split_names
from latentzip.pipeline.shards import is_shards, shard_paths

#: Files that sit beside photos in a folder and are not images.
NOTE_SUFFIXES = (".md", ".txt", ".tsv", ".csv", ".json", ".py", ".sh", ".html")


def is_note(name: str) -> bool:
    return name.lower().endswith(NOTE_SUFFIXES)


@dataclass(frozen=True)
class Source:
    """What a location holds. ``kind`` is ``"shards"`` (``shards``: their paths) or ``"images"``
    (``entries``: (id, reason) in folder order, reason ``""`` for a file to read; ``notes``: ids set apart).
    A single image file is an image source of one entry, its name the id."""

    kind: str
    location: str | Path
    shards: tuple = ()
    entries: tuple[tuple[str, str], ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ids(self) -> list[str]:
        """The image entries to read (refused names left out)."""
        return [item_id for item_id, reason in self.entries if not reason]

    @property
    def refused(self) -> list[tuple[str, str]]:
        return [(item_id, reason) for item_id, reason in self.entries if reason]

    def path(self, item_id: str) -> str | Path:
        """Where an image entry's bytes are (its folder joined with the id; the file itself for one file)."""
        return self.location if storage.is_file(self.location) else storage.join(self.location, item_id)


def resolve(location, what: str = "input") -> Source:
    """The :class:`Source` of ``location``; FileNotFoundError when it does not exist or holds nothing.
    ``what`` names the location in errors ("input", "originals", "training data")."""
    location = storage.normalise(location)
    if not storage.exists(location):
        raise FileNotFoundError(f"{what} {location} does not exist")
    if is_shards(location):
        return Source("shards", location, shards=tuple(shard_paths(location)))
    if storage.is_file(location):
        return Source("images", location, entries=((str(location).rsplit("/", 1)[-1], ""),))
    listed = storage.list_files(location)
    notes = tuple(name for name in listed if is_note(name))
    entries = tuple((name, "") if good else bad[0]
                    for name in listed if not is_note(name) for good, bad in [split_names([name])])
    if not entries:
        raise FileNotFoundError(f"no images in {location}" + (f" (only notes: {', '.join(notes[:3])})" if notes else ""))
    return Source("images", location, entries=entries, notes=notes)


def shard_ids(source: Source) -> list[str]:
    """The ``id`` column of every shard, in order."""
    return [i for p in source.shards for i in storage.read_table(p, columns=["id"]).column("id").to_pylist()]


def ids(source: Source) -> list[str]:
    """Every readable id of a source, shards or images."""
    return shard_ids(source) if source.kind == "shards" else source.ids


def input_rows(location) -> tuple[str, list]:
    """``("shards", [shard paths])`` for ingest output or a shard file, else ``("folder", [{id, source}])``
    for a folder of image files (its image entries: ids relative to it, as ingest names them; notes beside
    them left out) or one image file. Paths or URLs (pipeline/storage.py)."""
    source = resolve(location)
    if source.kind == "shards":
        return "shards", list(source.shards)
    return "folder", [{"id": item_id, "source": str(source.path(item_id))} for item_id in source.ids]


def dataset(location):
    """The images of ``location`` as a Ray Data dataset, and its row count: the input of every stage that
    reads originals (score, report). Rows hold ``id`` and ``source`` and, from shards, the ``image`` bytes
    (read in parallel by Ray Data's Parquet reader, through the same fsspec filesystem as everything else);
    a stage reads a folder's files from ``source`` itself, so the driver never holds the images."""
    import ray

    kind, inputs = input_rows(location)
    if kind == "folder":
        return ray.data.from_items(inputs), len(inputs)
    if storage.is_url(inputs[0]):
        filesystem = storage.arrow_filesystem(inputs[0])[0]
        ds = ray.data.read_parquet([storage.filesystem(p)[1] for p in inputs], filesystem=filesystem)
    else:
        ds = ray.data.read_parquet([str(p) for p in inputs])
    return ds.select_columns(["id", "image", "source"]), sum(storage.parquet_file(p).metadata.num_rows for p in inputs)


def iter_originals(source: Source, wanted: set[str] | None = None) -> Iterator[tuple[str, bytes]]:
    """(id, original bytes) for the ``wanted`` ids (all when None), one shard or file in memory at a time.
    Files are read as they are (the benchmarks and the report read folders they were given); the jobs that
    take folders from anywhere read through the input policy (pipeline/inputs.py)."""
    if source.kind == "shards":
        for path in source.shards:
            table = storage.read_table(path, columns=["id", "image"])
            for item_id, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
                if wanted is None or item_id in wanted:
                    yield item_id, data
        return
    for item_id in source.ids:
        if wanted is None or item_id in wanted:
            yield item_id, storage.read_bytes(source.path(item_id))


def local_images(folder: str | Path, what: str = "image folder") -> list[Path]:
    """The image entries of a local folder as paths (the benchmarks' inputs)."""
    source = resolve(Path(folder), what)
    if source.kind != "images":
        raise ValueError(f"{what} {folder} is ingest output; give a folder of images")
    return [Path(source.path(item_id)) for item_id in source.ids]
