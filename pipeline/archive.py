"""The Zarr v3 archive of encoded images: the only module that imports zarr.

Layout, format version 1 (a Zarr v3 group; every array 1-D and of a data type with a v3 specification)::

    archive.zarr/
      zarr.json            group attributes under "latentzip" (see below)
      bitstreams  uint8    every item's bitstream container, back to back
      offsets     int64    item i is bitstreams[offsets[i] : offsets[i + 1]]   (count + 1 entries)
      ids         uint8    every item's UTF-8 id, back to back
      id_offsets  int64    item i's id is ids[id_offsets[i] : id_offsets[i + 1]] (count + 1 entries)
      height      uint32   original image height in pixels
      width       uint32   original image width in pixels
      crc32       uint32   CRC-32 of the item's bitstream bytes
      source      int32    index into attribute "sources" (the shard or folder the item came from)

Group attribute ``latentzip`` holds: ``format`` ("latentzip-archive"), ``format_version``, ``count`` (the
number of committed items), ``model_id`` and ``codec`` (the codec card's config), ``model_ref`` (where the
weights are: a zoo name or a path), ``package_version``, ``created``, ``sources``, ``jobs`` (one record
per encode job) and ``failures`` (id and reason of every input that could not be encoded).

Appends write the arrays first and raise ``count`` last, so ``count`` is the commit point: a job that dies
mid-append leaves bytes past ``count`` that readers ignore and the next append overwrites. Bitstreams are
variable-length bytes stored as uint8 + int64 offsets rather than zarr's ``VariableLengthBytes``, which has
no Zarr v3 specification, so any Zarr v3 reader can open the archive.
"""

from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

import latentzip
from latentzip.codecs.hyperprior import CodecConfig
from latentzip.codecs.registry import load_codec

FORMAT = "latentzip-archive"
FORMAT_VERSION = 1
ATTRS_KEY = "latentzip"
_BYTES_CHUNK = 1 << 20
_ITEMS_CHUNK = 1 << 14
_ITEM_ARRAYS = {"height": "uint32", "width": "uint32", "crc32": "uint32", "source": "int32"}


class ArchiveError(ValueError):
    """An archive cannot be opened or written: unknown format or version, or another model's archive."""


class ItemNotFoundError(KeyError):
    """No item with this id in the archive."""


class ItemCorruptError(ArchiveError):
    """The stored bytes of an item do not match their checksum."""


@dataclass(frozen=True)
class Item:
    id: str
    data: bytes
    height: int
    width: int
    source: str

    @property
    def bpp(self) -> float:
        return len(self.data) * 8 / (self.height * self.width)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Archive:
    """Read access to an archive: ids, stored bytes, per-item metadata, and decoding."""

    def __init__(self, path: str | Path, mode: str = "r"):
        self.path = Path(path)
        if not (self.path / "zarr.json").is_file():
            raise ArchiveError(f"{self.path} is not a Zarr v3 archive (no zarr.json)")
        self.group = zarr.open_group(str(self.path), mode=mode)
        meta = dict(self.group.attrs).get(ATTRS_KEY)
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise ArchiveError(f"{self.path} is a Zarr group but not a latentzip archive")
        if meta.get("format_version") != FORMAT_VERSION:
            raise ArchiveError(
                f"{self.path} has archive format version {meta.get('format_version')}; "
                f"this latentzip ({latentzip.__version__}) reads version {FORMAT_VERSION}"
            )
        self.meta = meta
        self._codec = None
        self._load_index()

    def _load_index(self) -> None:
        count = self.meta["count"]
        id_offsets = self.group["id_offsets"][: count + 1] if count else np.zeros(1, np.int64)
        raw = bytes(self.group["ids"][: int(id_offsets[-1])]) if count else b""
        self.ids = [raw[id_offsets[i] : id_offsets[i + 1]].decode() for i in range(count)]
        self._index = {item_id: i for i, item_id in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._index

    @property
    def model_id(self) -> str:
        return self.meta["model_id"]

    def position(self, item_id: str) -> int:
        try:
            return self._index[item_id]
        except KeyError:
            raise ItemNotFoundError(f"no item {item_id!r} in archive {self.path}") from None

    def item(self, item_id: str) -> Item:
        """The stored bitstream and metadata of one id, checksum verified."""
        i = self.position(item_id)
        start, end = (int(v) for v in self.group["offsets"][i : i + 2])
        data = bytes(self.group["bitstreams"][start:end])
        if zlib.crc32(data) != int(self.group["crc32"][i]):
            raise ItemCorruptError(f"item {item_id!r} in {self.path}: stored bytes fail their CRC-32")
        source = self.meta["sources"][int(self.group["source"][i])]
        return Item(item_id, data, int(self.group["height"][i]), int(self.group["width"][i]), source)

    def items(self, ids: list[str] | None = None):
        for item_id in self.ids if ids is None else ids:
            yield self.item(item_id)

    def codec(self, **options):
        """The codec that wrote this archive, found from its provenance; never a different model."""
        if self._codec is None:
            # Archives written before integer entropy parameters record a config without the field: float.
            options.setdefault("entropy_params", CodecConfig.from_dict(self.meta["codec"]).entropy_params)
            codec = load_codec(self.meta["model_ref"], **options)
            if getattr(codec, "model_id", b"").hex() != self.model_id:
                raise ArchiveError(
                    f"model {self.meta['model_ref']!r} has id {codec.model_id.hex()}, but archive "
                    f"{self.path} was written by model {self.model_id}"
                )
            self._codec = codec
        return self._codec

    def decode(self, item_id: str):
        """Decode one id to an 8-bit RGB PIL image."""
        return self.codec().decode(self.item(item_id).data)


def open_archive(path: str | Path) -> Archive:
    return Archive(path)


class ArchiveWriter(Archive):
    """Appends items to an archive, creating it on first use. One writer per archive at a time."""

    @classmethod
    def open_or_create(cls, path: str | Path, codec_card: dict, model_ref: str) -> "ArchiveWriter":
        path = Path(path)
        if not (path / "zarr.json").exists():
            _create(path, codec_card, model_ref)
        writer = cls(path, mode="r+")
        if writer.model_id != codec_card["model_id"]:
            raise ArchiveError(
                f"{path} holds images encoded by model {writer.model_id}; refusing to add images "
                f"encoded by model {codec_card['model_id']} (use a new archive)"
            )
        return writer

    def start_job(self, job_id: str, args: dict) -> None:
        self.meta.setdefault("jobs", []).append({"job_id": job_id, "started": _now(), "args": args})
        self._commit()

    def finish_job(self, summary: dict) -> None:
        self.meta["jobs"][-1].update(finished=_now(), **summary)
        self._commit()

    def record_failures(self, failures: list[dict]) -> None:
        known = {f["id"] for f in self.meta["failures"]}
        self.meta["failures"].extend(f for f in failures if f["id"] not in known)
        self._commit()

    def append(self, items: list[Item]) -> int:
        """Append items whose ids are not in the archive yet; returns how many were written."""
        fresh, seen = [], set()
        for item in items:
            if item.id not in self._index and item.id not in seen:
                fresh.append(item)
                seen.add(item.id)
        if not fresh:
            return 0
        count = self.meta["count"]
        sources = self.meta["sources"]
        for item in fresh:
            if item.source not in sources:
                sources.append(item.source)
        offsets = self.group["offsets"]
        id_offsets = self.group["id_offsets"]
        self._append_bytes("bitstreams", offsets, count, [item.data for item in fresh])
        self._append_bytes("ids", id_offsets, count, [item.id.encode() for item in fresh])
        columns = {
            "height": [item.height for item in fresh],
            "width": [item.width for item in fresh],
            "crc32": [zlib.crc32(item.data) for item in fresh],
            "source": [sources.index(item.source) for item in fresh],
        }
        for name, values in columns.items():
            array = self.group[name]
            array.resize((count + len(fresh),))
            array[count : count + len(fresh)] = np.asarray(values, dtype=_ITEM_ARRAYS[name])
        self.meta["count"] = count + len(fresh)
        # An id that failed in an earlier job and is now encoded is no longer a failure.
        self.meta["failures"] = [f for f in self.meta["failures"] if f["id"] not in seen]
        self._commit()
        for i, item in enumerate(fresh):
            self.ids.append(item.id)
            self._index[item.id] = count + i
        return len(fresh)

    def _append_bytes(self, name: str, offsets, count: int, blobs: list[bytes]) -> None:
        start = int(offsets[count])
        ends = start + np.cumsum([len(b) for b in blobs], dtype=np.int64)
        array = self.group[name]
        array.resize((int(ends[-1]),))
        array[start : int(ends[-1])] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        offsets.resize((count + 1 + len(blobs),))
        offsets[count + 1 :] = ends

    def _commit(self) -> None:
        self.group.attrs[ATTRS_KEY] = self.meta


def _create(path: Path, codec_card: dict, model_ref: str) -> None:
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    for name in ("bitstreams", "ids"):
        group.create_array(name, shape=(0,), dtype="uint8", chunks=(_BYTES_CHUNK,), fill_value=0)
    for name in ("offsets", "id_offsets"):
        array = group.create_array(name, shape=(1,), dtype="int64", chunks=(_ITEMS_CHUNK,), fill_value=0)
        array[0] = 0
    for name, dtype in _ITEM_ARRAYS.items():
        group.create_array(name, shape=(0,), dtype=dtype, chunks=(_ITEMS_CHUNK,), fill_value=0)
    group.attrs[ATTRS_KEY] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": 0,
        "model_id": codec_card["model_id"],
        "codec": codec_card["config"],
        "model_ref": str(model_ref),
        "package_version": latentzip.__version__,
        "created": _now(),
        "sources": [],
        "jobs": [],
        "failures": [],
    }
