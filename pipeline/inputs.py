"""Input files: which entries of an image folder are read, and how (ingest, encode and train all ask here).

Input folders come from anywhere and may hold more than images. The policy:

- **Regular files only.** An entry is looked at (``stat``, following links) before it is opened; a FIFO,
  a device (``/dev/zero`` behind a link), a socket or a directory is refused with what it is. The file is
  then opened non-blocking and checked again on the open descriptor, so an entry swapped for a FIFO in
  between cannot hang the reader.
- **Links stay inside the folder.** A symbolic link (or a path through one) whose target resolves outside
  the input folder is refused, unless ``follow_symlinks`` (``--follow-symlinks``) says such links are
  meant. Links to sub-folders are not descended (``os.walk``'s default), whatever the option.
- **Bounded size.** At most ``max_file_bytes`` (``--max-file-bytes``, default :data:`DEFAULT_MAX_FILE_BYTES`)
  are read of one file: the size is checked before reading and the read stops one byte past the limit.
- **Names are UTF-8.** An id is the file's path relative to the folder, and ids are UTF-8 everywhere
  (Parquet, Zarr, Ray); a name with other bytes is refused by :func:`split_names`, under a printable form
  of its name (undecodable bytes as ``\\xNN``), while the files beside it are read.

Every refusal is an :class:`InputFileError` (an ``OSError``) whose message is the reason, which the jobs
record per file (ingest's ``errors.parquet``, the archive's errors table) instead of failing the job.
Remote folders (``s3://...``) hold objects only, so only the size bound applies to them.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from latentzip.pipeline import storage

#: Larger files are refused unread: generous for any photo (a 178.9-megapixel 16-bit PNG is ~1 GB only
#: uncompressed, and compressed formats are far smaller), small enough that a worker never runs out of memory.
DEFAULT_MAX_FILE_BYTES = 256 * 2**20
_READ_CHUNK = 4 * 2**20


class InputFileError(OSError):
    """An entry of an input folder that is not read: the message says why."""


def printable(name: str) -> str:
    """``name`` as valid UTF-8 text: bytes that are not UTF-8 (``os`` gives them as surrogates) as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def split_names(ids: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(ids that are valid UTF-8, [(printable id, reason)] for the others), each in the given order."""
    good, bad = [], []
    for item_id in ids:
        try:
            item_id.encode("utf-8")
        except UnicodeEncodeError:
            bad.append((printable(item_id), "file name is not valid UTF-8: ids must be text"))
        else:
            good.append(item_id)
    return good, bad


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def resolve_input(folder: storage.Location, item_id: str, follow_symlinks: bool = False) -> Path:
    """The real path of a local folder's entry, after the link policy; raises :class:`InputFileError`."""
    root = storage.local(folder)
    path = root / item_id
    real = os.path.realpath(path)
    if os.path.islink(path) and not os.path.exists(path):
        raise InputFileError("broken symbolic link (its target does not exist)")
    if not follow_symlinks and not _inside(real, os.path.realpath(root)):
        raise InputFileError(f"symbolic link to {printable(real)}, outside the input folder (not read; "
                             "--follow-symlinks reads such links)")
    return Path(real)


def read_file(path: str | Path, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a local regular file of at most ``max_file_bytes``; raises :class:`InputFileError`
    (or another ``OSError``: missing, permission denied) otherwise. Never blocks on a FIFO or device."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise InputFileError("broken symbolic link (its target does not exist)") from None
        raise
    if not stat.S_ISREG(mode):
        raise InputFileError(f"{_kind(mode)}, not a regular file: not read")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):  # swapped since the stat above
            raise InputFileError(f"{_kind(info.st_mode)}, not a regular file: not read")
        if info.st_size > max_file_bytes:
            raise InputFileError(f"file of {info.st_size} bytes is above the limit of {max_file_bytes} "
                                 "bytes (--max-file-bytes)")
        chunks, size = [], 0
        while size <= max_file_bytes:
            chunk = os.read(fd, min(_READ_CHUNK, max_file_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > max_file_bytes:  # it grew while being read
            raise InputFileError(f"file grew above the limit of {max_file_bytes} bytes while read (--max-file-bytes)")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_input(folder: storage.Location, item_id: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
               follow_symlinks: bool = False) -> bytes:
    """The bytes of ``item_id`` (a path relative to ``folder``, a local path or a URL) under the policy
    of this module; raises :class:`InputFileError` or another ``OSError`` with the reason."""
    if not storage.is_url(folder):
        return read_file(resolve_input(folder, item_id, follow_symlinks), max_file_bytes)
    fs, root = storage.filesystem(folder)
    path = f"{root.rstrip('/')}/{item_id}"
    size = fs.size(path)
    if size is not None and size > max_file_bytes:
        raise InputFileError(f"object of {size} bytes is above the limit of {max_file_bytes} bytes (--max-file-bytes)")
    data = fs.cat_file(path)
    if len(data) > max_file_bytes:
        raise InputFileError(f"object of {len(data)} bytes is above the limit of {max_file_bytes} bytes (--max-file-bytes)")
    return data


def check_max_file_bytes(value: int) -> int:
    if type(value) is not int or value < 1:
        raise ValueError(f"max_file_bytes must be a positive number of bytes, got {value!r}")
    return value
