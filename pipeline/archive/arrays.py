"""Reading an archive's arrays: one interface, two implementations.

:class:`ZarrReader` reads through zarr-python (any store: local, ``memory://``, ``s3://``...).
:class:`ShardReader` reads a local array of this format's layout straight from its shard files, as zarr
would but without zarr's per-read machinery: about ten times faster per read, and a lookup makes four
dependent reads. Both have ``rows`` (the array's length along its first axis, from its metadata),
``chunk`` (its inner chunk length) and ``read(start, stop)`` (rows ``[start, stop)``, clipped to the
length; a damaged shard index or chunk raises ValueError, as zarr's crc32c codec does).
:func:`open_reader` picks one. This package is the only one that imports zarr (lazily: a one-id lookup in a
local archive needs none of it, and ``import latentzip.api`` should not pay for it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import google_crc32c
import numpy as np

from latentzip.pipeline import storage


def zarr():
    """zarr, imported when first needed."""
    import zarr as module

    return module


class ZarrReader:
    """Rows of one array through zarr-python."""

    def __init__(self, array):
        self.array = array
        self.rows = int(array.shape[0])
        self.chunk = int(array.chunks[0])
        self.shard = shard_length(array)

    def read(self, start: int, stop: int) -> np.ndarray:
        if start < 0:
            raise ValueError(f"negative start {start} in `{self.array.basename}`")
        return self.array[start:stop]


def open_reader(where, name: str, group, direct: bool = True):
    """A reader of array ``name`` of the archive at ``where``: the direct one for a local array of this
    format's layout (unless ``direct`` is False), else zarr's (``group()`` gives the zarr group)."""
    if direct and isinstance(where, Path):
        reader = ShardReader.open(where / name)
        if reader is not None:
            return reader
    return ZarrReader(group()[name])


class count_reads:
    """Counts the bytes the direct reader reads, per file, while in use (``with count_reads() as counts:``;
    ``counts`` maps each file's path to its bytes). Reads through zarr are not counted here."""

    def __enter__(self) -> dict:
        self.counts: dict[str, int] = {}
        _COUNTERS.append(self.counts)
        return self.counts

    def __exit__(self, *exc) -> None:
        _COUNTERS.remove(self.counts)


_COUNTERS: list[dict] = []


def compressors(compress: bool = True):
    # crc32c inside each chunk's codecs: zarr's sharding codec checksums only its shard index by default.
    from zarr.codecs import Crc32cCodec, ZstdCodec

    return [ZstdCodec(level=3), Crc32cCodec()] if compress else [Crc32cCodec()]


def shard_length(array) -> int:
    """An array's zarr shard length along its first axis (from its metadata)."""
    return int(array.shards[0] if array.shards else array.chunks[0])


def has_file(where, name: str) -> bool:
    return storage.is_file(storage.join(where, name))


def local_group_attributes(path: Path) -> dict | None:
    """The attributes in a local group's zarr.json, or None (not a Zarr v3 group: zarr says why)."""
    try:
        meta = json.loads(read_file(path / "zarr.json", 0, 1 << 26))
    except (OSError, ValueError):
        return None
    ok = isinstance(meta, dict) and meta.get("zarr_format") == 3 and meta.get("node_type") == "group"
    return meta.get("attributes", {}) if ok and isinstance(meta.get("attributes", {}), dict) else None


_EMPTY_CHUNK = (1 << 64) - 1  # offset and length of a chunk a shard does not store


def read_file(path: Path, start: int, length: int | None = None) -> bytes:
    """``length`` bytes of a file from ``start``, or with a negative ``start`` its last ``-start`` bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if start < 0:
            size = os.fstat(fd).st_size
            start, length = max(0, size + start), min(size, -start)
        parts = []
        while length > 0:
            part = os.pread(fd, length, start)
            if not part:
                break
            parts.append(part)
            start, length = start + len(part), length - len(part)
        if _COUNTERS:
            for counts in _COUNTERS:
                counts[str(path)] = counts.get(str(path), 0) + sum(map(len, parts))
        return b"".join(parts)
    finally:
        os.close(fd)


class ShardReader:
    """Reads rows of one local array of this format straight from its shard files, as zarr would but
    without zarr's per-read machinery (about 0.3 ms a read, and a lookup makes four dependent reads).

    Only for an array whose ``zarr.json`` is exactly this format's layout (docs/archive-format.md):
    ``uint8``/``int64``, regular grid, default ``/`` keys, one ``sharding_indexed`` codec with the index
    at the end (``bytes`` little-endian + ``crc32c``), inner codecs ``bytes`` [+ ``zstd``] + ``crc32c``,
    a 2-D array's chunks spanning every column. Every size comes from that metadata; :meth:`open` returns
    None for anything else, and zarr reads it. Shard indexes and chunks are CRC-32C-checked (ValueError,
    as zarr's crc32c codec raises); a chunk or shard that is not stored reads as the fill value."""

    def __init__(self, folder: Path, dtype: str, shape: list, shard: int, chunk: int, zstd: bool, fill):
        self.folder, self.dtype, self.row_shape = folder, np.dtype(dtype).newbyteorder("<"), tuple(shape[1:])
        self.rows = int(shape[0])  # the array's length (first axis), from its metadata
        self.shard, self.chunk, self.zstd, self.fill = shard, chunk, zstd, fill
        self.per_shard = shard // chunk
        self.suffix = "/0" * len(self.row_shape)

    @classmethod
    def open(cls, folder: Path) -> ShardReader | None:
        try:
            meta = json.loads(read_file(folder / "zarr.json", 0, 1 << 20))
            keys = meta["chunk_key_encoding"]
            [sharding] = meta["codecs"]
            config = sharding["configuration"]
            shape, shard, chunk = meta["shape"], meta["chunk_grid"]["configuration"]["chunk_shape"], config["chunk_shape"]
            inner = [codec["name"] for codec in config["codecs"]]
            index = config["index_codecs"]
            ok = (meta["zarr_format"] == 3 and meta["node_type"] == "array" and meta["data_type"] in ("uint8", "int64")
                  and not meta.get("storage_transformers") and meta["chunk_grid"]["name"] == "regular"
                  and keys["name"] == "default" and keys.get("configuration", {}).get("separator", "/") == "/"
                  and sharding["name"] == "sharding_indexed" and config.get("index_location", "end") == "end"
                  and [codec["name"] for codec in index] == ["bytes", "crc32c"]
                  and index[0].get("configuration", {}).get("endian", "little") == "little"
                  and inner in (["bytes", "crc32c"], ["bytes", "zstd", "crc32c"])
                  and config["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
                  and len(shape) in (1, 2) and len(shard) == len(chunk) == len(shape)
                  and all(isinstance(v, int) and v >= 0 for v in (*shape, *shard, *chunk))
                  and chunk[0] > 0 and shard[0] % chunk[0] == 0 and shard[0] > 0
                  and shard[1:] == chunk[1:] == shape[1:])
            fill = meta["fill_value"]
            if not ok or not isinstance(fill, int):
                return None
            return cls(folder, meta["data_type"], shape, int(shard[0]), int(chunk[0]), "zstd" in inner, fill)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _index(self, path: Path) -> np.ndarray | None:
        """(offset, length) of each chunk of one shard file, or None if the file is not stored."""
        size = 16 * self.per_shard
        try:
            raw = read_file(path, -(size + 4))
        except FileNotFoundError:
            return None
        if len(raw) != size + 4 or google_crc32c.value(raw[:size]) != int.from_bytes(raw[size:], "little"):
            raise ValueError(f"{path}: shard index fails its crc32c checksum")
        return np.frombuffer(raw, "<u8", 2 * self.per_shard).reshape(self.per_shard, 2)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) along the first axis, clipped to the array's length (as zarr does)."""
        if start < 0:
            raise ValueError(f"negative start {start} in {self.folder.name}")
        stop = min(stop, self.rows)
        out = np.full((max(0, stop - start),) + self.row_shape, self.fill, self.dtype)
        c = self.chunk
        nbytes = c * int(np.prod(self.row_shape, dtype=np.int64)) * self.dtype.itemsize
        indexes: dict[int, np.ndarray | None] = {}
        for k in range(start // c, -(-stop // c)) if stop > start else ():
            number, local = divmod(k, self.per_shard)
            path = self.folder / "c" / f"{number}{self.suffix}"
            if number not in indexes:
                indexes[number] = self._index(path)
            if indexes[number] is None:
                continue
            offset, length = (int(v) for v in indexes[number][local])
            if offset == _EMPTY_CHUNK and length == _EMPTY_CHUNK:
                continue
            raw = read_file(path, offset, length)
            if len(raw) != length or length < 4 or google_crc32c.value(raw[:-4]) != int.from_bytes(raw[-4:], "little"):
                raise ValueError(f"{path}: chunk {local} fails its crc32c checksum")
            raw = raw[:-4]
            if self.zstd:
                raw = _zstd().decode(raw)
            if len(raw) != nbytes:
                raise ValueError(f"{path}: chunk {local} holds {len(raw)} bytes, not {nbytes}")
            block = np.frombuffer(raw, self.dtype).reshape((c,) + self.row_shape)
            lo, hi = max(start, k * c), min(stop, (k + 1) * c)
            out[lo - start : hi - start] = block[lo - k * c : hi - k * c]
        return out


_ZSTD = []


def _zstd():
    if not _ZSTD:
        import numcodecs

        _ZSTD.append(numcodecs.Zstd())
    return _ZSTD[0]
