"""Decode: archived bitstreams -> images, one id on demand or many as a Ray Data job.

On demand, :func:`decode_image` (PIL) and :func:`decode_array` (numpy, ``uint8`` H x W x 3) read only the
bytes of the id they are given. In batch, :func:`decode_archive` regenerates a selection of ids (all,
a list, or a range of archive positions, :func:`select_ids`) in parallel on Ray, as PNG files or as one
Parquet shard of PNG bytes.

PNG files are written to ``<out>/<id>.png`` (the id's folders recreated, ".png" appended to its name)
through a temporary name and a rename, so a PNG that exists is complete and a rerun skips it. The name is
a function of the id alone and never leaves ``<out>``: an id that is not a plain relative path (empty,
absolute, with ``..``, ``.`` or empty parts such as ``x//y.jpg`` and ``x/./y.jpg``, which would share
``x/y.jpg``'s file), not UTF-8, or too long for a file name is a recorded failure of that id, and the
other ids are decoded (decode it alone with ``--id ID -o FILE.png``, or into Parquet). The Parquet
shard (columns ``id``, ``png``, ``width``, ``height``; rows in completion order) is written whole through a
temporary name, so a rerun rewrites it.

The one decode path: :func:`open_archive` gives an archive bound to the model that wrote it
(:class:`DecodableArchive`: ``codec()``, ``decode(id)``), the storage layer (:mod:`latentzip.pipeline.archive`)
loads no model. :func:`verify_with_model` is ``latentzip verify``: the storage checks, then the model.

Errors name the id: :class:`~latentzip.pipeline.archive.ItemNotFoundError` (no such id),
:class:`~latentzip.pipeline.archive.ItemCorruptError` (stored bytes fail their checksum),
:class:`ModelUnavailableError` (the model named in the archive's provenance cannot be loaded, or is
another model), :class:`DecodeError` (the stored stream does not decode).
"""

from __future__ import annotations

import io
import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from latentzip.pipeline.archive import (Archive, ArchiveCorruptError, ArchiveError, RemoteModelRefusedError,
                                        VerifyReport, describe_exception, is_utf8, verify_archive)

FORMATS = ("png", "parquet")
#: Up to this many ids decode in this process; more go to Ray. On the 2-core development machine, starting
#: an embedded Ray and its decoder actor cost about 90 s, and one ~0.3-megapixel image about 4.5 s
#: (`decode --id A --id B` 127 s against 31 s for one id, issue 18): Ray pays from about 20 images, and
#: only where it has more cores than this process (docs/benchmarks.md, cold start).
RAY_MIN_IDS = 24
#: Longest file name (bytes) and path the PNG output writes; the temporary name adds ".", ".tmp".
NAME_MAX_BYTES, PATH_MAX_BYTES = 255, 4000


def parquet_schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("png", pa.binary()), ("width", pa.int32()), ("height", pa.int32())])


class DecodeError(Exception):
    """An id could not be decoded; the message names the id and the archive."""

    def __init__(self, item_id: str, message: str):
        super().__init__(message)
        self.item_id = item_id


class ModelUnavailableError(DecodeError):
    """The model the archive's provenance names cannot be loaded (or is not the model that wrote it)."""


class DecodableArchive(Archive):
    """An archive opened for decoding: its storage, plus the codec that wrote it (loaded once, on first use).

    ``model``: decode with this codec (a zoo name, a directory or a URL, still checked against the archive's
    model id) instead of the one its provenance names; ``allow_model_urls``: URL prefixes from which a
    remote ``model_ref`` of the archive may be fetched (by default none is)."""

    def __init__(self, path, model: str | None = None, allow_model_urls=(), direct: bool = True):
        super().__init__(path, direct=direct)
        self.model_override = None if model is None else str(model)
        self.allow_model_urls = tuple(allow_model_urls)
        self._codec = None

    def codec(self, **options):
        """The codec that wrote this archive, found from its provenance (or the ``model`` this object was
        opened with); never a different model. A remote ``model_ref`` (``http://``, ``s3://``, ...) is
        never fetched because an archive names it: only a ``model`` the caller gives, or a ref under one
        of the caller's ``allow_model_urls``, is (:class:`RemoteModelRefusedError` otherwise)."""
        if self._codec is None:
            from latentzip.codecs.hyperprior import CodecConfig
            from latentzip.codecs.registry import is_remote, load_codec

            ref = self.model_override or self.meta["model_ref"]
            if self.model_override is None and is_remote(ref) and not _allowed(ref, self.allow_model_urls):
                raise RemoteModelRefusedError(
                    f"archive {self.path} names a remote model, {ref!r}; latentzip does not fetch code from a "
                    f"location an archive names: pass --model {ref} (or --allow-model-url with its prefix) to "
                    "fetch it, or --model with a local copy")
            try:
                options.setdefault("entropy_params", CodecConfig.from_dict(self.meta["codec"]).entropy_params)
            except (TypeError, ValueError) as exc:
                raise ArchiveCorruptError(f"archive {self.path}: attribute codec is not a codec config ({exc})") from exc
            codec = load_codec(ref, **options)
            if getattr(codec, "model_id", b"").hex() != self.model_id:
                raise ArchiveError(f"model {ref!r} has id {getattr(codec, 'model_id', b'').hex()}, but archive "
                                   f"{self.path} was written by model {self.model_id}")
            self._codec = codec
        return self._codec

    def decode(self, item_id: str) -> Image.Image:
        """One id as an 8-bit RGB PIL image (:func:`decode_image`: its size checked, errors naming the id)."""
        return decode_image(self, item_id)


def open_archive(path, model: str | None = None, allow_model_urls=(), direct: bool = True) -> DecodableArchive:
    """An archive for reading and decoding (see :class:`DecodableArchive`)."""
    return DecodableArchive(path, model=model, allow_model_urls=allow_model_urls, direct=direct)


def _allowed(ref: str, prefixes) -> bool:
    return any(ref == p.rstrip("/") or ref.startswith(p.rstrip("/") + "/") for p in prefixes if p)


_BOUND: "weakref.WeakKeyDictionary[Archive, DecodableArchive]" = weakref.WeakKeyDictionary()


def decodable(archive, model: str | None = None, allow_model_urls=()) -> DecodableArchive:
    """``archive`` (a path, a storage-only :class:`Archive` or a :class:`DecodableArchive`) bound to its model."""
    if isinstance(archive, DecodableArchive):
        return archive
    if isinstance(archive, Archive):  # opened for storage only: bound to its model once, here
        if archive not in _BOUND:
            _BOUND[archive] = open_archive(archive.path, model, allow_model_urls, archive.direct)
        return _BOUND[archive]
    return open_archive(archive, model=model, allow_model_urls=allow_model_urls)


def verify_with_model(path, decode_sample: int = 0, seed: int = 0, model: str | None = None,
                      allow_model_urls=()) -> VerifyReport:
    """``latentzip verify``: the storage checks (:func:`~latentzip.pipeline.archive.verify_archive`), then
    that the model the archive names loads and is the one that wrote it, and that ``decode_sample`` ids
    picked with ``seed`` decode to the size their rows record. A remote model is fetched only when asked
    (``model``, ``allow_model_urls``), as decode does; otherwise that is a problem."""
    import random

    try:
        archive = decodable(path, model, allow_model_urls)
    except ArchiveCorruptError:
        return verify_archive(path)  # reports why it cannot be opened
    report = verify_archive(archive)
    try:
        archive.codec()
    except Exception as exc:  # noqa: BLE001 - an archive whose model cannot be loaded cannot be decoded here
        report.problems.append(("<model>", describe_exception(exc)))
        return report
    for item_id in random.Random(seed).sample(report.ids, min(decode_sample, len(report.ids))):
        try:
            decode_image(archive, item_id)
            report.decoded += 1
        except Exception as exc:  # noqa: BLE001 - reported per id
            cause = exc.__cause__ if isinstance(exc, DecodeError) and exc.__cause__ is not None else exc
            report.problems.append((item_id, f"decode failed: {type(cause).__name__}: {cause}"))
    return report


def archive_codec(archive, item_id: str, what: str | None = None):
    """The archive's own codec, or ModelUnavailableError naming ``item_id`` (or ``what``: several ids)."""
    try:
        return decodable(archive).codec()  # a storage-only Archive is bound to its model here
    except Exception as exc:  # noqa: BLE001 - any failure to load is "model not available", with the cause
        what = what or repr(item_id)
        raise ModelUnavailableError(item_id, f"cannot decode {what} from {archive.path}: the model named in its "
                                          f"provenance ({archive.meta.get('model_ref')!r}) is not available: "
                                          f"{type(exc).__name__}: {exc}") from exc


def decode_image(archive, item_id: str) -> Image.Image:
    """One id as an 8-bit RGB PIL image, reading only that id's bytes."""
    archive = decodable(archive)
    item = archive.item(item_id)  # ItemNotFoundError / ItemCorruptError, both naming the id
    codec = archive_codec(archive, item_id)
    try:
        image = codec.decode(item.data)
    except Exception as exc:  # noqa: BLE001
        raise DecodeError(item_id, f"cannot decode {item_id!r} from {archive.path}: {type(exc).__name__}: {exc}") from exc
    if image.size != (item.width, item.height):
        raise DecodeError(item_id, f"{item_id!r} in {archive.path} decodes to {image.size[0]}x{image.size[1]}, "
                                   f"the archive records {item.width}x{item.height}")
    return image


def decode_array(archive, item_id: str) -> np.ndarray:
    """One id as a ``uint8`` array of shape (height, width, 3), RGB."""
    return np.asarray(decode_image(archive, item_id))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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


def output_path(out_dir: Path, item_id: str) -> Path:
    """``out_dir/<id>.png``; ValueError (naming the id) for an id that cannot name its own file inside
    ``out_dir``: see the module docstring. Distinct ids that pass get distinct paths."""
    def refuse(why: str) -> ValueError:
        return ValueError(f"id {item_id!r} cannot name a PNG file inside the output folder: {why}")

    if not item_id:
        raise refuse("it is empty")
    if not is_utf8(item_id):
        raise refuse("it is not valid UTF-8")
    if "\x00" in item_id:
        raise refuse("it holds a NUL character")
    if item_id.startswith("/"):
        raise refuse("it is an absolute path")
    parts = item_id.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise refuse("it has an empty, '.' or '..' part, so it is not the one name of its file "
                     "(x//y.jpg and x/./y.jpg would be x/y.jpg)")
    # The id's own extension is kept ("a.jpg" -> "a.jpg.png") so "a.jpg" and "a.png" cannot collide.
    name = parts[-1] + ".png"
    if max(len(part.encode()) for part in [*parts[:-1], f".{name}.tmp"]) > NAME_MAX_BYTES:
        raise refuse(f"a part is longer than {NAME_MAX_BYTES - 9} bytes, too long for a file name")
    path = out_dir.joinpath(*parts[:-1], name)
    if len(str(path).encode()) > PATH_MAX_BYTES:
        raise refuse(f"the path would be longer than {PATH_MAX_BYTES} bytes")
    return path


def decode_to_file(archive, item_id: str, out_path: Path) -> Path:
    image = decode_image(archive, item_id)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, out_path)
    return out_path


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
