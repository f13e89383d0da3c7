"""One conformance suite for the archive's storage, run on every store and both read paths.

Stores: a local folder, ``memory://`` (fsspec's in-process filesystem) and S3 (moto's server on 127.0.0.1,
through s3fs, as tests/test_object_storage.py does). Read paths: the direct shard reader (local archives of
this format's layout) and zarr-python (``direct=False``, and every remote store). Each case writes, looks
up, reads, appends, verifies, misses an id and meets a corrupt item; archives of formats 2 and 3 written
by an earlier release (tests/expected/archives, written by 7dc4ddd's code) open, append and verify too.
No model is loaded: items carry real bitstreams of a tiny codec, encoded once, stored as bytes.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import (ArchiveWriter, Failure, Item, ItemCorruptError, ItemNotFoundError,
                                        open_archive, verify_archive)
from latentzip.pipeline.archive.arrays import ShardReader, ZarrReader

EXPECTED = Path(__file__).resolve().parents[1] / "expected" / "archives"
BUCKET = "latentzip-conformance"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
CASES = [("local", True), ("local", False), ("memory", False), ("s3", False)]


@pytest.fixture(scope="module")
def codec(tiny_codec_dir):
    return load_codec(tiny_codec_dir)


@pytest.fixture(scope="module")
def items(codec) -> list[Item]:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32 + 8 * (i % 2), 40, 3), dtype=np.uint8)) for i in range(6)]
    streams = codec.encode_batch(images)
    return [Item(f"dir/{i}.png", s, im.height, im.width, f"shard-{i // 3}") for i, (s, im) in enumerate(zip(streams, images))]


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto import server as moto_server

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def where(request, tmp_path, monkeypatch):
    """A place for a new archive on the store the test is parametrised with."""
    store = request.param
    if store == "local":
        return tmp_path / "a.zarr"
    if store == "memory":
        return f"memory://conformance-{uuid.uuid4().hex}/a.zarr"
    import fsspec
    import s3fs

    endpoint = request.getfixturevalue("s3_endpoint")
    for name, value in {**AWS, "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fsspec.AbstractFileSystem.clear_instance_cache()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if not fs.exists(BUCKET):
        fs.mkdir(BUCKET)
    return f"s3://{BUCKET}/{uuid.uuid4().hex}/a.zarr"


def cases():
    return pytest.mark.parametrize("where, direct", CASES, indirect=["where"], ids=[f"{s}-{'direct' if d else 'zarr'}" for s, d in CASES])


def write(where, codec, items, version: int = 4) -> ArchiveWriter:
    writer = ArchiveWriter.open_or_create(where, codec.card, "tiny", version=version)
    writer.start_job("job-1", {"shards": ["shard-0", "shard-1"]})
    writer.append(items[:3], [Failure("dir/bad.png", "not an image", "shard-0")], unit="shard-0")
    writer.append(items[3:5], unit="shard-1")
    writer.finish_job({"images": 5}, "job-1")
    return writer


def upload(folder: Path, where) -> None:
    """A local archive folder copied, file by file, to ``where`` (any store)."""
    import shutil

    import fsspec

    if isinstance(where, Path):
        shutil.copytree(folder, where)
        return
    fs, root = fsspec.core.url_to_fs(str(where))
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        fs.pipe_file(f"{root}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def check_reader_kind(archive, direct: bool) -> None:
    kind = ShardReader if direct and isinstance(archive.path, Path) else ZarrReader
    assert all(isinstance(archive.reader(name), kind) for name in ("items", "ids", "bitstreams"))


@cases()
def test_write_lookup_read(where, direct, codec, items):
    write(where, codec, items)
    archive = open_archive(where, direct=direct)
    check_reader_kind(archive, direct)
    assert archive.version == 4 and len(archive) == 5
    assert archive.ids == [item.id for item in items[:5]]
    assert [archive.item(item.id) for item in items[:5]] == items[:5]
    assert archive.position(items[3].id) == archive.reader("items").shard  # the second segment: a fresh shard
    assert items[4].id in archive and items[5].id not in archive
    assert [(f.id, f.reason, f.source) for f in archive.errors()] == [("dir/bad.png", "not an image", "shard-0")]
    assert archive.sources() == ["shard-0", "shard-1"]
    [job] = archive.jobs()
    assert job["job_id"] == "job-1" and job["images"] == 5 and job["args"] == {"shards": ["shard-0", "shard-1"]}


@cases()
def test_append_and_resume(where, direct, codec, items):
    write(where, codec, items)
    writer = ArchiveWriter.open_or_create(where, codec.card, "tiny")
    assert writer.completed_units() == {"shard-0", "shard-1"}
    writer.start_job("job-2", {})
    assert writer.append(items[4:], unit="shard-2") == 1  # items[4] is already in: first wins
    writer.finish_job({"images": 1})
    archive = open_archive(where, direct=direct)
    assert archive.ids == [item.id for item in items] and archive.item(items[5].id) == items[5]
    assert archive.sources() == ["shard-0", "shard-1", "shard-2"]
    assert [job["job_id"] for job in archive.jobs()] == ["job-1", "job-2"] and archive.jobs()[1]["images"] == 1
    report = verify_archive(archive)
    assert report.ok and report.items == 6 and report.failures == 1, report.describe()


@cases()
def test_verify_missing_id_and_corrupt_item(where, direct, codec, items):
    write(where, codec, items)
    assert verify_archive(open_archive(where, direct=direct)).ok
    archive = open_archive(where, direct=direct)
    with pytest.raises(ItemNotFoundError, match="no/such.png"):
        archive.item("no/such.png")
    with pytest.raises(ItemNotFoundError):
        archive.position("no/such.png")
    # One stored byte flipped through zarr (the chunk's own crc32c rewritten): the item's CRC-32C catches it.
    start, _ = archive.byte_range(items[1].id)
    group = zarr.open_group(str(where), mode="r+")
    group["bitstreams"][start + 3] = int(group["bitstreams"][start + 3]) ^ 0x01
    archive = open_archive(where, direct=direct)
    with pytest.raises(ItemCorruptError, match="'dir/1.png'"):
        archive.item(items[1].id)
    assert archive.item(items[2].id) == items[2]
    report = verify_archive(archive)
    assert [item_id for item_id, _ in report.problems] == [items[1].id], report.describe()


@cases()
@pytest.mark.parametrize("version", [2, 3])
def test_archives_of_earlier_releases_open_append_and_verify(where, direct, version, codec):
    upload(EXPECTED / f"format{version}.zarr", where)
    archive = open_archive(where, direct=direct)
    check_reader_kind(archive, direct)
    assert archive.version == version and len(archive) == 9
    assert archive.sources() == ["s/0.parquet", "s/1.parquet"] and archive.jobs()[0]["images"] == 9
    assert archive.item("b/6.png").source == "s/1.parquet" and archive.item("b/6.png").mode == "L"
    assert [f.id for f in archive.errors()] == ["a/bad.png"]
    before = {item_id: archive.item(item_id) for item_id in archive.ids}
    assert verify_archive(archive).ok
    model = load_codec("mean-scale-q2")  # the golden archives' model, from the zoo
    writer = ArchiveWriter.open_or_create(where, model.card, "mean-scale-q2")
    writer.start_job("later", {})
    data = before["a/0.png"].data
    assert writer.append([Item("c/new.png", data, before["a/0.png"].height, before["a/0.png"].width, "s/2")],
                         unit="s/2") == 1
    writer.finish_job({"images": 1})
    archive = open_archive(where, direct=direct)
    assert archive.version == version, "an archive keeps its format when appended to"
    assert archive.sources() == ["s/0.parquet", "s/1.parquet", "s/2"] and len(archive.jobs()) == 2
    assert all(archive.item(item_id) == item for item_id, item in before.items())
    assert archive.item("c/new.png").data == data
    report = verify_archive(archive)
    assert report.ok and report.items == 10, report.describe()


def test_a_new_archive_is_one_plain_zarr_hierarchy(tmp_path, codec, items):
    """Provenance records are Zarr groups: a plain zarr reader walks the whole archive without a warning."""
    import warnings

    write(tmp_path / "a.zarr", codec, items)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")
        names = {name for name, _ in group.members(max_depth=None)}
    assert {"provenance/sources/1", "provenance/jobs/0", "bitstreams", "items"} <= names
    assert dict(group["provenance/sources/1"].attrs) == {"name": "shard-1"}
