"""The Zarr v3 archive (pipeline/archive.py): layout, appends, the commit point, integrity, decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import (
    ArchiveError,
    ArchiveWriter,
    Item,
    ItemCorruptError,
    ItemNotFoundError,
    open_archive,
)

ARRAYS = {"bitstreams": "uint8", "offsets": "int64", "ids": "uint8", "id_offsets": "int64",
          "height": "uint32", "width": "uint32", "crc32": "uint32", "source": "int32"}


@pytest.fixture(scope="module")
def codec(tiny_codec_dir):
    return load_codec(tiny_codec_dir)


def make_items(n: int, start: int = 0, source: str = "shard-00000.parquet") -> list[Item]:
    """Items with distinct, recognisable bytes of different lengths (the archive does not parse them)."""
    return [Item(f"dir/img-{i:03d}.jpg", bytes([i % 251]) * (10 + 7 * i) + f"#{i}".encode(), 50 + i, 60 + i, source)
            for i in range(start, start + n)]


def new_writer(path, codec, model_ref) -> ArchiveWriter:
    return ArchiveWriter.open_or_create(path, codec.card, str(model_ref))


def test_plain_zarr_v3_reader_sees_the_layout(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    items = make_items(3)
    new_writer(path, codec, tiny_codec_dir).append(items)

    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    for name, dtype in ARRAYS.items():
        meta = json.loads((path / name / "zarr.json").read_text())
        assert meta["zarr_format"] == 3 and meta["node_type"] == "array", name
        assert meta["data_type"] == dtype, name

    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == sorted(ARRAYS)
    for name, array in group.arrays():
        assert str(array.dtype) in {"uint8", "int32", "uint32", "int64"}, name
        assert array.ndim == 1
    # Everything needed to get item bytes back is reachable with plain zarr + the documented layout.
    count = group.attrs["latentzip"]["count"]
    assert count == 3
    offsets, id_offsets = group["offsets"][: count + 1], group["id_offsets"][: count + 1]
    ids_raw, blobs = bytes(group["ids"][:]), bytes(group["bitstreams"][:])
    for i, item in enumerate(items):
        assert ids_raw[id_offsets[i] : id_offsets[i + 1]].decode() == item.id
        assert blobs[offsets[i] : offsets[i + 1]] == item.data
        assert (int(group["height"][i]), int(group["width"][i])) == (item.height, item.width)


def test_append_and_reopen_returns_same_bytes(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    first, second = make_items(3), make_items(2, start=3, source="shard-00001.parquet")
    assert writer.append(first) == 3
    assert writer.append(second) == 2

    archive = open_archive(path)
    assert len(archive) == 5 and archive.ids == [item.id for item in first + second]
    assert archive.model_id == codec.card["model_id"]
    assert archive.meta["sources"] == ["shard-00000.parquet", "shard-00001.parquet"]
    for expected in first + second:
        assert expected.id in archive
        assert archive.item(expected.id) == expected
    # A writer reopened later appends after the existing items.
    assert new_writer(path, codec, tiny_codec_dir).append(make_items(1, start=5)) == 1
    assert open_archive(path).item("dir/img-005.jpg") == make_items(1, start=5)[0]
    assert len(open_archive(path)) == 6


def test_existing_ids_are_skipped(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    items = make_items(3)
    writer.append(items)
    changed = Item(items[0].id, b"different bytes", 1, 1, "elsewhere")
    assert writer.append([changed]) == 0
    fresh = make_items(1, start=3)[0]
    assert writer.append([changed, fresh, fresh]) == 1  # duplicates within one batch are written once too
    archive = open_archive(path)
    assert len(archive) == 4
    assert archive.item(items[0].id) == items[0]
    assert archive.item(fresh.id) == fresh


def test_other_models_writer_is_refused(tmp_path, codec, tiny_codec_dir, tiny_codec_factory):
    path = tmp_path / "a.zarr"
    new_writer(path, codec, tiny_codec_dir).append(make_items(2))
    other_dir = tiny_codec_factory(seed=1)
    other = load_codec(other_dir)
    assert other.card["model_id"] != codec.card["model_id"]
    with pytest.raises(ArchiveError, match=other.card["model_id"]):
        new_writer(path, other, other_dir)
    assert len(open_archive(path)) == 2


def test_unknown_format_version_or_not_an_archive_is_refused(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    new_writer(path, codec, tiny_codec_dir).append(make_items(1))
    group = zarr.open_group(str(path), mode="r+")
    meta = dict(group.attrs["latentzip"])
    group.attrs["latentzip"] = {**meta, "format_version": 99}
    with pytest.raises(ArchiveError, match="version 99"):
        open_archive(path)
    with pytest.raises(ArchiveError):
        new_writer(path, codec, tiny_codec_dir)

    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    plain.attrs["something"] = 1
    with pytest.raises(ArchiveError):
        open_archive(tmp_path / "plain.zarr")
    with pytest.raises(ArchiveError):
        open_archive(tmp_path / "nothing-here.zarr")


def test_count_is_the_commit_point(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    committed = make_items(2)
    new_writer(path, codec, tiny_codec_dir).append(committed)

    # A crash mid-append: arrays grown and filled past count, count never raised.
    group = zarr.open_group(str(path), mode="r+")
    rng = np.random.default_rng(0)
    for name in ("bitstreams", "ids"):
        array = group[name]
        size = array.shape[0]
        array.resize((size + 1000,))
        array[size:] = rng.integers(0, 256, 1000, dtype=np.uint8)
    for name in ("offsets", "id_offsets"):
        array = group[name]
        size = array.shape[0]
        array.resize((size + 5,))
        array[size:] = np.arange(size, size + 5, dtype=np.int64) * 123_456
    for name in ("height", "width", "crc32", "source"):
        array = group[name]
        size = array.shape[0]
        array.resize((size + 5,))
        array[size:] = 7
    assert group.attrs["latentzip"]["count"] == 2

    archive = open_archive(path)
    assert len(archive) == 2 and archive.ids == [item.id for item in committed]
    assert [archive.item(item.id) for item in committed] == committed

    fresh = make_items(3, start=2)
    assert new_writer(path, codec, tiny_codec_dir).append(fresh) == 3
    archive = open_archive(path)
    assert archive.ids == [item.id for item in committed + fresh]
    assert [archive.item(item.id) for item in committed + fresh] == committed + fresh
    group = zarr.open_group(str(path), mode="r")
    assert group["bitstreams"].shape[0] == sum(len(item.data) for item in committed + fresh)
    assert group["height"].shape[0] == 5 and group["offsets"].shape[0] == 6


def test_flipped_byte_is_detected_and_names_the_id(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    items = make_items(3)
    new_writer(path, codec, tiny_codec_dir).append(items)
    group = zarr.open_group(str(path), mode="r+")
    position = int(group["offsets"][1]) + 4  # inside item 1
    group["bitstreams"][position] = int(group["bitstreams"][position]) ^ 0x01

    archive = open_archive(path)
    with pytest.raises(ItemCorruptError, match=items[1].id):
        archive.item(items[1].id)
    assert archive.item(items[0].id) == items[0]
    assert archive.item(items[2].id) == items[2]


def test_missing_id_names_the_id(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    new_writer(path, codec, tiny_codec_dir).append(make_items(1))
    archive = open_archive(path)
    assert "no/such.png" not in archive
    with pytest.raises(ItemNotFoundError, match="no/such.png"):
        archive.item("no/such.png")
    with pytest.raises(KeyError):  # ItemNotFoundError is a KeyError
        archive.position("no/such.png")


def test_decode_returns_image_of_stored_size(tmp_path, codec, tiny_codec_dir, sample_images):
    path = tmp_path / "a.zarr"
    items = [Item(f"img-{i}.png", codec.encode(image), image.height, image.width, "folder")
             for i, image in enumerate(sample_images[:3])]
    new_writer(path, codec, tiny_codec_dir).append(items)
    archive = open_archive(path)
    for item, image in zip(items, sample_images):
        decoded = archive.decode(item.id)
        assert decoded.mode == "RGB"
        assert decoded.size == image.size == (item.width, item.height)
        assert np.array_equal(np.asarray(decoded), np.asarray(codec.decode(item.data)))


def test_decode_refuses_a_model_ref_with_another_model(tmp_path, codec, tiny_codec_factory, sample_images):
    path = tmp_path / "a.zarr"
    other_dir = tiny_codec_factory(seed=1)
    # Provenance points at a different model than the one whose id the archive records.
    writer = ArchiveWriter.open_or_create(path, codec.card, str(other_dir))
    image = sample_images[0]
    writer.append([Item("x.png", codec.encode(image), image.height, image.width, "folder")])
    with pytest.raises(ArchiveError, match=codec.card["model_id"]):
        open_archive(path).decode("x.png")
