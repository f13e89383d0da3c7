"""Decode: archived bitstreams -> images, one id on demand (many at once: pipeline/decoding_job.py).

:func:`decode_image` (PIL) and :func:`decode_array` (numpy, ``uint8`` H x W x 3) read only the bytes of
the id they are given. A PNG file is written to ``<out>/<id>.png`` (:func:`output_path`: the id's folders
recreated, ".png" appended to its name) through a temporary name and a rename, so a PNG that exists is
complete and a rerun skips it. The name is a function of the id alone and never leaves ``<out>``: an id
that is not a plain relative path (empty, absolute, with ``..``, ``.`` or empty parts such as ``x//y.jpg``
and ``x/./y.jpg``, which would share ``x/y.jpg``'s file), not UTF-8, or too long for a file name is
refused with a ValueError naming it.

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
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from latentzip.pipeline.archive import (Archive, ArchiveCorruptError, ArchiveError, RemoteModelRefusedError,
                                        VerifyReport, describe_exception, is_utf8, verify_archive)

#: Longest file name (bytes) and path the PNG output writes; the temporary name adds ".", ".tmp".
NAME_MAX_BYTES, PATH_MAX_BYTES = 255, 4000


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
