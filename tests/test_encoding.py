"""Encode (pipeline/encoding.py): EncodeStage without Ray, and the encode() Ray Data job into an archive."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.encoding import EncodeStage, encode
from latentzip.pipeline.shards import SHARD_SCHEMA, ingest

BAD_ID = "smuggled/broken.jpg"


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def codec(tiny_codec_dir):
    return load_codec(tiny_codec_dir)


@pytest.fixture(scope="module")
def stage(tiny_codec_dir):
    return EncodeStage(str(tiny_codec_dir), threads=1)


def test_encode_stage_without_ray(stage, codec, sample_images):
    images = sample_images[:3]
    batch = {
        "id": np.array(["a.png", "bad.jpg", "b.png", "c.png"], dtype=object),
        "image": np.array([png_bytes(images[0]), b"\xff\xd8\xff garbage", png_bytes(images[1]),
                           png_bytes(images[2])], dtype=object),
        "source": np.array(["s0", "s0", "s1", "s1"], dtype=object),
    }
    out = stage(batch)

    assert list(out["id"]) == ["a.png", "bad.jpg", "b.png", "c.png"]
    assert list(out["source"]) == ["s0", "s0", "s1", "s1"]
    assert out["error"][1] and out["data"][1] == b""
    assert (out["height"][1], out["width"][1]) == (0, 0)
    for row, image in zip((0, 2, 3), images):
        assert out["error"][row] == ""
        assert (out["width"][row], out["height"][row]) == image.size
        assert len(out["data"][row]) > 0
        decoded = codec.decode(bytes(out["data"][row]))
        assert decoded.size == image.size
        # The stage's batched encode gives the same stream as encoding the image alone.
        assert bytes(out["data"][row]) == codec.encode(image)


def test_encode_stage_falls_back_to_one_by_one(stage, codec, sample_images, monkeypatch):
    images = sample_images[:2]
    batch = {"id": np.array(["a.png", "b.png"], dtype=object),
             "image": np.array([png_bytes(im) for im in images], dtype=object),
             "source": np.array(["s", "s"], dtype=object)}

    real_batch = type(stage.codec).encode_batch

    def encode_batch(images_in):
        # A batch of several fails as a whole; alone, only the second image fails.
        if len(images_in) > 1:
            raise RuntimeError("batch exploded")
        if images_in[0].size == images[1].size:
            raise RuntimeError("this one is bad")
        return real_batch(stage.codec, images_in)

    monkeypatch.setattr(stage.codec, "encode_batch", encode_batch)
    out = stage(batch)
    assert out["error"][0] == "" and codec.decode(bytes(out["data"][0])).size == images[0].size
    assert "this one is bad" in out["error"][1] and out["data"][1] == b""


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, image_folder_factory):
    """An ingest folder plus one extra shard holding a row that passed no probe: a bad image in a shard."""
    root = tmp_path_factory.mktemp("encode")
    folder = image_folder_factory(root / "in")
    ingest(folder.path, root / "shards", images_per_shard=2, progress=None)
    rows = [{"id": BAD_ID, "image": b"GIF89a but not really", "width": 1, "height": 1, "source": "smuggled"}]
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), root / "shards" / "shard-00099.parquet")
    return root, folder


def test_encode_job_puts_every_good_image_in_the_archive_once(ray_local, ingested, tiny_codec_dir, codec):
    root, folder = ingested
    archive_path = root / "archive.zarr"
    summary = encode(root / "shards", archive_path, str(tiny_codec_dir), batch_size=2, progress=None)

    assert summary.images == len(folder.good)
    assert summary.skipped == 0 and summary.failures == 1
    archive = open_archive(archive_path)
    assert sorted(archive.ids) == sorted(folder.good)
    assert len(archive.ids) == len(set(archive.ids)) == len(archive)
    assert summary.num_bytes == sum(len(item.data) for item in archive.items())
    for item in archive.items():
        assert (item.width, item.height) == folder.good[item.id], item.id
        assert codec.decode(item.data).size == (item.width, item.height)
    # Provenance: each item names the shard it came from, and the archive lists shards, not files.
    shards = sorted(str(p) for p in (root / "shards").glob("shard-*.parquet"))
    assert sorted(archive.meta["sources"]) == [s for s in shards if not s.endswith("shard-00099.parquet")]
    for path in shards:
        for item_id in pq.read_table(path, columns=["id"]).column("id").to_pylist():
            if item_id in archive:
                assert archive.item(item_id).source == path
    failures = archive.meta["failures"]
    assert [f["id"] for f in failures] == [BAD_ID] and failures[0]["reason"]
    assert archive.meta["model_ref"] == str(tiny_codec_dir)
    job = archive.meta["jobs"][-1]
    assert job["job_id"] == summary.job_id and job["images"] == len(folder.good) and "finished" in job

    # The same command again: nothing new is encoded, the count stays, the failure is not duplicated.
    again = encode(root / "shards", archive_path, str(tiny_codec_dir), batch_size=2, progress=None)
    assert again.skipped == len(folder.good)
    assert again.images == 0
    reopened = open_archive(archive_path)
    assert reopened.meta["count"] == len(archive) and reopened.ids == archive.ids
    assert [f["id"] for f in reopened.meta["failures"]] == [BAD_ID]
    assert len(reopened.meta["jobs"]) == 2


def test_encode_job_with_everything_done_skips_without_ray(ray_local, tmp_path, image_folder_factory,
                                                            tiny_codec_dir, monkeypatch):
    folder = image_folder_factory(tmp_path / "in")
    ingest(folder.path, tmp_path / "shards", progress=None)
    archive_path = tmp_path / "archive.zarr"
    first = encode(tmp_path / "shards", archive_path, str(tiny_codec_dir), batch_size=4, progress=None)
    assert first.images == len(folder.good) and first.failures == 0

    import ray.data

    def no_ray(*args, **kwargs):
        raise AssertionError("a rerun with every id archived must not start a Ray Data job")

    monkeypatch.setattr(ray.data, "read_parquet", no_ray)
    again = encode(tmp_path / "shards", archive_path, str(tiny_codec_dir), progress=None)
    assert (again.images, again.skipped, again.failures) == (0, len(folder.good), 0)
    assert len(open_archive(archive_path)) == len(folder.good)


def test_encode_refuses_a_classical_codec(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    ingest(folder.path, tmp_path / "shards", progress=None)
    with pytest.raises(ValueError, match="learned"):
        encode(tmp_path / "shards", tmp_path / "archive.zarr", "jpeg", progress=None)
    assert not (tmp_path / "archive.zarr").exists()
