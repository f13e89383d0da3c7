"""The Zarr v3 archive (pipeline/archive/): layout, appends, commit point, index, errors, integrity."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import zarr

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import (
    ArchiveError,
    ArchiveWriter,
    Failure,
    Item,
    ItemCorruptError,
    ItemNotFoundError,
    Layout,
    open_archive,
)
from latentzip.pipeline.archive.arrays import ShardReader
from latentzip.pipeline.archive.format import DEFAULT_LAYOUT
from latentzip.pipeline.decoding import ModelUnavailableError
from latentzip.pipeline.decoding import open_archive as open_decodable

ARRAYS = {"bitstreams": "uint8", "ids": "uint8", "reasons": "uint8", "items": "int64", "segments": "int64"}


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
    writer = new_writer(path, codec, tiny_codec_dir)
    writer.append(items, [Failure("bad.jpg", "not a readable image", "shard-00000.parquet")])
    writer.update_index()

    root = json.loads((path / "zarr.json").read_text())
    assert root["zarr_format"] == 3 and root["node_type"] == "group"
    meta = root["attributes"]["latentzip"]
    assert meta["format_version"] == 4 and meta["count"] == 3 and meta["failures"] == 1
    for name in (*ARRAYS, meta["index"]["array"]):
        array_meta = json.loads((path / name / "zarr.json").read_text())
        assert array_meta["zarr_format"] == 3 and array_meta["node_type"] == "array", name
        assert array_meta["data_type"] == ARRAYS.get(name, "int64"), name
        # Sharded, with a crc32c in the inner chunks' codecs (not only on the shard index).
        [sharding] = array_meta["codecs"]
        assert sharding["name"] == "sharding_indexed", name
        assert [c["name"] for c in sharding["configuration"]["codecs"]][-1] == "crc32c", name

    # Everything needed to get item bytes back is reachable with plain zarr + docs/archive-format.md.
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == sorted([*ARRAYS, meta["index"]["array"]])
    columns = group["items"].attrs["columns"]
    col = {name: i for i, name in enumerate(columns)}
    segments = group["segments"][: meta["segments"]]
    seg = dict(zip(group["segments"].attrs["columns"], segments[0]))
    rows = group["items"][seg["row_start"] : seg["row_start"] + seg["rows"]]
    ids_raw, blobs = group["ids"][:].tobytes(), group["bitstreams"][:].tobytes()
    ok = rows[rows[:, col["status"]] == 0]
    assert len(ok) == 3
    for row, item in zip(ok, items):
        assert ids_raw[row[col["id_offset"]] : row[col["id_offset"]] + row[col["id_length"]]].decode() == item.id
        assert blobs[row[col["offset"]] : row[col["offset"]] + row[col["length"]]] == item.data
        assert (row[col["height"]], row[col["width"]]) == (item.height, item.width)
    [failed] = rows[rows[:, col["status"]] == 1]
    reason = group["reasons"][failed[col["offset"]] : failed[col["offset"]] + failed[col["length"]]].tobytes()
    assert reason == b"not a readable image"


def test_append_and_reopen_returns_same_bytes(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    first, second = make_items(3), make_items(2, start=3, source="shard-00001.parquet")
    assert writer.append(first) == 3
    assert writer.append(second) == 2

    archive = open_archive(path)
    assert len(archive) == 5 and archive.ids == [item.id for item in first + second]
    assert archive.model_id == codec.card["model_id"]
    assert archive.sources() == ["shard-00000.parquet", "shard-00001.parquet"]
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
    group.attrs["latentzip"] = {**meta, "format_version": 1}
    with pytest.raises(ArchiveError, match="version 1 .*re-run"):
        open_archive(path)
    with pytest.raises(ArchiveError):
        new_writer(path, codec, tiny_codec_dir)

    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    plain.attrs["something"] = 1
    with pytest.raises(ArchiveError):
        open_archive(tmp_path / "plain.zarr")
    with pytest.raises(ArchiveError):
        open_archive(tmp_path / "nothing-here.zarr")


def test_segment_count_is_the_commit_point(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    committed = make_items(2)
    new_writer(path, codec, tiny_codec_dir).append(committed)
    before = (path / "zarr.json").read_bytes()

    # A crash after a segment's data and marker row are written but before the count is raised: put the
    # old group attributes back. Readers see only the committed segment.
    new_writer(path, codec, tiny_codec_dir).append(make_items(4, start=100), [Failure("x", "r", "s")], unit="u")
    (path / "zarr.json").write_bytes(before)
    archive = open_archive(path)
    assert len(archive) == 2 and archive.ids == [item.id for item in committed]
    assert "dir/img-100.jpg" not in archive and archive.errors() == []
    assert [archive.item(item.id) for item in committed] == committed

    # The next segment reuses the uncommitted region; none of the killed attempt's rows survive.
    writer = new_writer(path, codec, tiny_codec_dir)
    assert writer.completed_units() == set()
    fresh = make_items(3, start=2)
    assert writer.append(fresh) == 3
    writer.update_index()
    archive = open_archive(path)
    assert archive.ids == [item.id for item in committed + fresh]
    assert [archive.item(item.id) for item in committed + fresh] == committed + fresh
    assert "dir/img-103.jpg" not in archive
    assert sorted(archive.index_entries()[:, 1].tolist()) == sorted(archive.position(i.id) for i in committed + fresh)


def test_lookup_uses_the_index_not_every_id(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    items = make_items(3000)
    for start in range(0, 3000, 1000):  # the table grows (rebuilds) past half full
        writer.append(items[start : start + 1000], unit=f"unit-{start}")
    writer.update_index()
    archive = open_archive(path)
    assert archive.meta["index"]["entries"] == 3000 and archive.meta["index"]["capacity"] >= 6000
    assert archive.item(items[2345].id) == items[2345]
    assert "dir/img-9999.jpg" not in archive
    assert archive._ids is None, "a lookup must not read every id"
    assert len(archive) == 3000
    assert writer.completed_units() == {"unit-0", "unit-1000", "unit-2000"}
    # Few files: sharding keeps one file per zarr shard, not one per (small) inner chunk.
    group = zarr.open_group(str(path), mode="r")
    for name in ("bitstreams", "ids", "items"):
        array, files = group[name], [p for p in (path / name / "c").rglob("*") if p.is_file()]
        assert array.chunks[0] < array.shards[0] and len(files) <= -(-array.shape[0] // array.shards[0])
    assert sum(1 for p in path.rglob("*") if p.is_file()) < 70  # 31 MB of bitstreams: ~32 shards of 1 MiB


class SegmentReadsCounted(ArchiveWriter):
    """A writer that records which segment rows it reads (the start of each read)."""

    reads: list = []

    def segments(self, start: int = 0):
        self.reads.append((start, self.meta["segments"]))
        return super().segments(start)


def test_a_commit_reads_only_the_segments_the_index_lacks(tmp_path, codec, tiny_codec_dir):
    """What keeps commit cost flat in the number of units: no commit reads the whole segments table."""
    path = tmp_path / "a.zarr"
    new_writer(path, codec, tiny_codec_dir).append(make_items(1), unit="unit-0")
    writer = SegmentReadsCounted.open_or_create(path, codec.card, str(tiny_codec_dir))
    for u in range(1, 6):
        writer.append(make_items(1, start=u), unit=f"unit-{u}")
    writer.update_index()
    writer.reads = []
    writer.append(make_items(1, start=6), unit="unit-6")
    assert writer.reads and all(start == 6 for start, _ in writer.reads), writer.reads
    assert [row[0] for row in writer.segments(5)] == [row[0] for row in writer.segments()[5:]]
    assert len(writer.segments(7)) == 0


def test_errors_table(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    failures = [Failure("bad/1.jpg", "not a readable image: truncated", "s0"),
                Failure("bad/2.png", "image too large", "s1")]
    assert writer.append(make_items(2), failures) == 2
    archive = open_archive(path)
    assert archive.errors() == failures
    assert "bad/1.jpg" not in archive and len(archive) == 2 and archive.meta["failures"] == 2


def test_second_writer_process_is_refused(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    new_writer(path, codec, tiny_codec_dir).append(make_items(1))
    script = ("import sys, json; from latentzip.pipeline.archive import ArchiveWriter, ArchiveError\n"
              "try:\n ArchiveWriter.open_or_create(sys.argv[1], json.loads(sys.argv[2]), 'x')\n"
              "except ArchiveError as e:\n print(e); sys.exit(3)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path), json.dumps(codec.card)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 3 and "another process" in result.stdout


def test_damaged_chunk_file_is_reported_as_corrupt(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    items = make_items(3)
    new_writer(path, codec, tiny_codec_dir).append(items)
    [shard] = (path / "bitstreams").rglob("c/*")
    raw = bytearray(shard.read_bytes())
    raw[8] ^= 0x40
    shard.write_bytes(bytes(raw))
    with pytest.raises(ItemCorruptError, match="chunk"):
        open_archive(path).item(items[0].id)


def test_flipped_byte_is_detected_and_names_the_id(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    items = make_items(3)
    new_writer(path, codec, tiny_codec_dir).append(items)
    group = zarr.open_group(str(path), mode="r+")
    position = open_archive(path).byte_range(items[1].id)[0] + 4  # inside item 1
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
    archive = open_decodable(path)
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
    with pytest.raises(ModelUnavailableError, match=codec.card["model_id"]) as raised:  # names the id, 'x.png'
        open_decodable(path).decode("x.png")
    assert isinstance(raised.value.__cause__, ArchiveError) and "'x.png'" in str(raised.value)


def test_verify_clean_then_problems_per_id(tmp_path, codec, tiny_codec_dir, sample_images, capsys):
    from latentzip.jobs import verify

    path = tmp_path / "a.zarr"
    items = [Item(f"img-{i}.png", codec.encode(image), image.height, image.width, "folder")
             for i, image in enumerate(sample_images[:3])]
    writer = new_writer(path, codec, tiny_codec_dir)
    writer.append(items, [Failure("bad.jpg", "empty file", "folder")])
    writer.update_index()
    assert verify.main([str(path), "--decode-sample", "2"]) == 0
    printed = capsys.readouterr().out
    assert "OK - 3 items checked (1 recorded failures, 2 decoded)" in printed

    # A byte flipped through zarr (so the chunk's crc32c is rewritten): only the item's CRC-32C knows.
    group = zarr.open_group(str(path), mode="r+")
    position = open_archive(path).byte_range("img-1.png")[0] + 20
    group["bitstreams"][position] = int(group["bitstreams"][position]) ^ 0x10
    # An index entry removed behind the writer's back.
    index = group[group.attrs["latentzip"]["index"]["array"]]
    table = index[:]
    table[table[:, 1] == open_archive(path).position("img-2.png")] = 0
    index[:] = table
    assert verify.main([str(path)]) == 1
    printed = capsys.readouterr().out
    assert "img-1.png: id and bytes fail their CRC-32C" in printed
    assert "img-2.png: not in the index" in printed
    assert "img-0.png" not in printed
    assert verify.main([str(tmp_path / "nothing.zarr")]) == 2


#: The layout archives were created with before the one-id lookup tuning (64 KiB zstd chunks of bitstreams
#: in 16 MiB shards, 1024-slot index chunks...): such archives must still read and append.
OLD_LAYOUT = Layout(byte_arrays={"bitstreams": (1 << 16, 1 << 24), "ids": (1 << 14, 1 << 20), "reasons": (1 << 14, 1 << 20)},
                    tables={"items": (12, 256, 1024), "segments": (12, 256, 4096)},
                    uncompressed=frozenset(), index_chunk=1024, index_shard=1 << 16)


def small_items(n: int, start: int = 0) -> list[Item]:
    return [Item(f"old/{i:05d}.png", f"stream-{i}-".encode() * (1 + i % 5), 32 + i % 7, 48, "s") for i in range(start, start + n)]


def test_archive_with_the_old_layout_still_reads_and_appends(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "old.zarr"
    first = small_items(300)
    writer = ArchiveWriter.open_or_create(path, codec.card, str(tiny_codec_dir), layout=OLD_LAYOUT)
    writer.append(first[:200], unit="u0")
    writer.append(first[200:], unit="u1")
    writer.update_index()
    group = zarr.open_group(str(path), mode="r")
    old_index = group.attrs["latentzip"]["index"]["array"]
    assert group["bitstreams"].chunks == (1 << 16,) and group["bitstreams"].shards == (1 << 24,)
    assert group[old_index].chunks == (1024, 2) and group["items"].chunks == (256, 12)
    archive = open_archive(path)
    assert [archive.item(item.id) for item in first] == first and "old/99999.png" not in archive

    # Appended to with this release's constants: sizes come from the arrays' metadata, so a new segment
    # still starts on a fresh (16 MiB) shard and the old table's 1024-slot chunks still bound the probing.
    writer = new_writer(path, codec, tiny_codec_dir)
    more = small_items(2000, start=300)
    writer.append(more[:100], unit="u2")
    writer.update_index()  # in place, into the old table
    meta = open_archive(path).meta
    assert meta["index"]["array"] == old_index and meta["index"]["entries"] == 400
    assert meta["ends"]["bitstreams"] == 3 << 24 and meta["ends"]["items"] == 3 * 1024
    assert open_archive(path).item(more[50].id) == more[50]
    writer.append(more[100:], unit="u3")
    writer.update_index()  # 2300 entries: rebuilt into a larger table with this release's index chunks
    group = zarr.open_group(str(path), mode="r")
    new_index = group.attrs["latentzip"]["index"]["array"]
    assert new_index != old_index and old_index not in group
    assert group[new_index].chunks == (DEFAULT_LAYOUT.index_chunk, 2)
    assert group["bitstreams"].chunks == (1 << 16,)  # arrays keep their layout
    everything = first + more
    archive = open_archive(path)
    assert archive.ids == [item.id for item in everything]
    sample = everything[::37] + [everything[-1]]
    assert [archive.item(item.id) for item in sample] == sample
    archive = open_archive(path, direct=False)  # through zarr, as on object storage
    assert [archive.item(item.id) for item in sample] == sample and "old/99999.png" not in archive


def test_new_layout_is_small_chunks_and_raw_bitstreams(tmp_path, codec, tiny_codec_dir):
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    writer.append(small_items(50))
    writer.update_index()
    group = zarr.open_group(str(path), mode="r")
    for name, (chunk, shard) in DEFAULT_LAYOUT.byte_arrays.items():
        assert (group[name].chunks, group[name].shards) == ((chunk,), (shard,)), name
    assert group["bitstreams"].chunks == (4096,) and group["bitstreams"].shards[0] // 4096 <= 256
    codecs = json.loads((path / "bitstreams" / "zarr.json").read_text())["codecs"][0]["configuration"]["codecs"]
    assert [c["name"] for c in codecs] == ["bytes", "crc32c"]  # entropy-coded bytes: no zstd
    index = group[group.attrs["latentzip"]["index"]["array"]]
    assert index.chunks == (DEFAULT_LAYOUT.index_chunk, 2) and group["items"].chunks == (32, 12)


def test_direct_shard_reads_match_zarr(tmp_path, codec, tiny_codec_dir):
    """The direct reader of a local archive returns what zarr returns, for any range of any array."""
    path = tmp_path / "a.zarr"
    writer = new_writer(path, codec, tiny_codec_dir)
    items = make_items(400)  # ~0.6 MB of bitstreams: several shards, items straddling chunk boundaries
    for start in range(0, 400, 150):
        writer.append(items[start : start + 150], [Failure(f"bad-{start}.jpg", "empty file", "s")], unit=f"u{start}")
    writer.update_index()
    group = zarr.open_group(str(path), mode="r")
    rng = np.random.default_rng(0)
    for name in (*ARRAYS, group.attrs["latentzip"]["index"]["array"]):
        array, reader = group[name], ShardReader.open(path / name)
        assert reader is not None, name
        n = array.shape[0]
        for _ in range(40):
            start = int(rng.integers(0, n))
            stop = min(n, start + int(rng.choice([1, 3, 700, 5000, 70000])))
            assert np.array_equal(reader.read(start, stop), array[start:stop]), (name, start, stop)
    # A layout this reader does not know (e.g. unsharded) is left to zarr.
    zarr.create_array(str(tmp_path / "plain"), shape=(10,), dtype="uint8", chunks=(5,))
    assert ShardReader.open(tmp_path / "plain") is None


@pytest.mark.parametrize("route", ["direct", "zarr"])
def test_lookup_checks_on_both_read_paths(tmp_path, codec, tiny_codec_dir, route):
    path = tmp_path / "a.zarr"
    items = make_items(40)
    new_writer(path, codec, tiny_codec_dir).append(items)
    direct = route == "direct"
    archive = open_archive(path, direct=direct)
    assert [archive.item(item.id) for item in items] == items
    assert archive.position(items[7].id) == 7 and items[7].id in archive
    with pytest.raises(ItemNotFoundError, match="no/such.png"):
        archive.item("no/such.png")
    # A byte flipped through zarr (chunk crc32c rewritten): the item's own CRC-32C catches it.
    group = zarr.open_group(str(path), mode="r+")
    position = archive.byte_range(items[3].id)[0] + 2
    group["bitstreams"][position] = int(group["bitstreams"][position]) ^ 0x01
    with pytest.raises(ItemCorruptError, match=items[3].id):
        open_archive(path, direct=direct).item(items[3].id)
    # A damaged chunk in the shard file: the chunk's crc32c catches it.
    [shard] = (path / "bitstreams").rglob("c/*")
    raw = bytearray(shard.read_bytes())
    chunk = group["bitstreams"].chunks[0]
    at = archive.byte_range(items[35].id)[0] + 1
    assert at >= chunk  # not in the first chunk, which items[0] is in
    raw[at // chunk * (chunk + 4) + at % chunk] ^= 0x40  # raw chunks (+ their 4-byte crc32c), in order
    shard.write_bytes(bytes(raw))
    with pytest.raises(ItemCorruptError, match="chunk"):
        open_archive(path, direct=direct).item(items[35].id)
    assert open_archive(path, direct=direct).item(items[0].id) == items[0]
