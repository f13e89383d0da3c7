"""Where data lives: a local path or an fsspec URL, read and written through one set of helpers.

Every job input and output that is not an archive goes through here (archives have their own store in
pipeline/archive/, on the same URLs): image folders, ingest shards, training data, training output
(Ray Train checkpoints, metrics, the exported codec) and codec directories. A location is

- a local path, or a ``file://`` URL (the same thing);
- any other URL fsspec knows (``s3://bucket/prefix``, ``gs://``, ``az://``, ``memory://``, ...), whose
  filesystem package must be installed (``pip install 'latentzip[s3]'`` for S3). Credentials and endpoints
  are configured the usual way for that package: for S3, ``AWS_*`` variables or ``~/.aws``, and
  ``AWS_ENDPOINT_URL`` for an S3-compatible store. On a Ray cluster every node needs them (the cluster's
  setup, an instance role, or the job's environment), since workers read the data themselves.

Object stores have no directories: a "folder" URL is a prefix, and listing it lists every object below.
"""

from __future__ import annotations

import io
import os
from pathlib import Path, PurePosixPath

Location = str | Path


def is_url(where: Location) -> bool:
    """True for a remote URL (``s3://...``); False for a path or a ``file://`` URL."""
    text = str(where)
    return "://" in text and not text.startswith("file://")


def local(where: Location) -> Path:
    """A local location as a Path (``file://`` stripped); raises ValueError for a remote URL."""
    text = str(where)
    if is_url(text):
        raise ValueError(f"{text} is not a local path")
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def normalise(where: Location) -> str | Path:
    """A remote URL as its string without a trailing slash; anything else as a Path."""
    return str(where).rstrip("/") if is_url(where) else local(where)


def absolute(where: Location) -> str | Path:
    """:func:`normalise`, with a local path made absolute (what workers elsewhere in the process tree need)."""
    where = normalise(where)
    return where.resolve() if isinstance(where, Path) else where


def join(where: Location, *parts: str) -> str | Path:
    """``where / parts``, for paths and URLs alike."""
    where = normalise(where)
    if isinstance(where, Path):
        return where.joinpath(*parts)
    return "/".join([where, *(p.strip("/") for p in parts)])


def filesystem(where: Location):
    """(fsspec filesystem, path on it) of a location; local paths get the local filesystem, absolute."""
    import fsspec

    where = normalise(where)
    if isinstance(where, Path):
        return fsspec.filesystem("file"), str(where.resolve())
    fs, path = fsspec.core.url_to_fs(where)
    return fs, path


def _check(where: Location, local_test: str, remote_test: str) -> bool:
    if not is_url(where):
        return getattr(local(where), local_test)()
    fs, path = filesystem(where)
    fs.invalidate_cache()  # a listing cached before another writer's PUT would hide it
    return getattr(fs, remote_test)(path)


def exists(where: Location) -> bool:
    return _check(where, "exists", "exists")


def is_dir(where: Location) -> bool:
    """A folder, or on object storage a prefix with objects below it."""
    return _check(where, "is_dir", "isdir")


def is_file(where: Location) -> bool:
    return _check(where, "is_file", "isfile")


def read_bytes(where: Location) -> bytes:
    if not is_url(where):
        return local(where).read_bytes()
    fs, path = filesystem(where)
    return fs.cat_file(path)


def write_bytes(where: Location, data: bytes) -> None:
    """Write a whole file: locally to a temporary name then renamed; remotely one PUT (atomic in S3/GCS)."""
    if not is_url(where):
        path = local(where)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return
    fs, path = filesystem(where)
    fs.pipe_file(path, data)


def remove(where: Location) -> None:
    if not is_url(where):
        local(where).unlink(missing_ok=True)
        return
    fs, path = filesystem(where)
    if fs.exists(path):
        fs.rm_file(path)


def list_files(where: Location) -> list[str]:
    """Every regular, non-hidden file below a folder or prefix, as POSIX paths relative to it, in the
    order of ``os.walk`` with sorted names (a folder's files, then its sub-folders in order): the order
    the local walk and the object-store listing give, so ids and units agree. Entries that are not folders
    count as files locally (FIFOs, devices and links included), so that what is not read is listed with
    its reason (pipeline/inputs.py). The only walker of folders in the tree."""
    if not is_url(where):
        root, names = local(where), []
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            names.extend((Path(folder) / n).relative_to(root).as_posix() for n in sorted(files) if not n.startswith("."))
        return names
    fs, root = filesystem(where)
    fs.invalidate_cache()
    names = []
    for path in fs.find(root):
        relative = PurePosixPath(path).relative_to(root.rstrip("/"))
        if not any(part.startswith(".") for part in relative.parts):
            names.append(relative)
    return [str(p) for p in sorted(names, key=lambda p: [(1, d) for d in p.parts[:-1]] + [(0, p.name)])]


def glob(where: Location, pattern: str) -> list[str | Path]:
    """The files directly in a folder or prefix whose names match ``pattern``, sorted, as locations."""
    if not is_url(where):
        return sorted(local(where).glob(pattern))
    fs, root = filesystem(where)
    fs.invalidate_cache()
    return [fs.unstrip_protocol(p) for p in sorted(fs.glob(f"{root.rstrip('/')}/{pattern}"))]


def parquet_file(where: Location):
    """A ``pyarrow.parquet.ParquetFile`` of a local or remote file (remote ones read by range requests)."""
    import pyarrow.parquet as pq

    if not is_url(where):
        return pq.ParquetFile(local(where))
    fs, path = filesystem(where)
    return pq.ParquetFile(fs.open(path, "rb"))


def read_table(where: Location, columns: list[str] | None = None):
    import pyarrow.parquet as pq

    if not is_url(where):
        return pq.read_table(local(where), columns=columns)
    return parquet_file(where).read(columns=columns)


def write_table(table, where: Location) -> None:
    """Write a Parquet file whole (see :func:`write_bytes`), so a file that exists is complete."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    write_bytes(where, buffer.getvalue())


def upload_dir(directory: Path, where: Location) -> None:
    """Copy a local folder's files (not sub-folders) to ``where``."""
    for path in sorted(Path(directory).iterdir()):
        if path.is_file():
            write_bytes(join(where, path.name), path.read_bytes())


def arrow_filesystem(where: Location):
    """(pyarrow filesystem, path) for pyarrow and Ray Train (``RunConfig.storage_filesystem``): remote
    locations through the same fsspec filesystem as everything else here, so credentials and endpoints
    are configured once."""
    import pyarrow.fs

    if not is_url(where):
        return pyarrow.fs.LocalFileSystem(), str(local(where).resolve())
    fs, path = filesystem(where)
    return pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)), path
