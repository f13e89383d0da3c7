"""Encode (pipeline/encoding.py): EncodeStage without Ray, and the encode() Ray Data job into an archive."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.encoding import encode, list_units
from latentzip.pipeline.encoding_stage import EncodeStage
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
    out = stage.encode_rows(["a.png", "bad.jpg", "b.png", "c.png"],
                            [png_bytes(images[0]), b"\xff\xd8\xff garbage", png_bytes(images[1]), png_bytes(images[2])])

    assert list(out["id"]) == ["a.png", "bad.jpg", "b.png", "c.png"]
    assert out["mode"] == ["RGB", "", "RGB", "RGB"]
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

    real_batch = type(stage.codec).encode_batch

    def encode_batch(images_in, refine_steps=0):
        # A batch of several fails as a whole; alone, only the second image fails.
        if len(images_in) > 1:
            raise RuntimeError("batch exploded")
        if images_in[0].size == images[1].size:
            raise RuntimeError("this one is bad")
        return real_batch(stage.codec, images_in, refine_steps=refine_steps)

    monkeypatch.setattr(stage.codec, "encode_batch", encode_batch)
    out = stage.encode_rows(["a.png", "b.png"], [png_bytes(im) for im in images])
    assert out["error"][0] == "" and codec.decode(bytes(out["data"][0])).size == images[0].size
    assert "this one is bad" in out["error"][1] and out["data"][1] == b""


def test_encode_stage_takes_whole_shards(stage, tiny_codec_dir, tmp_path, sample_images):
    rows = [{"id": f"img{i}.png", "image": png_bytes(im), "width": im.width, "height": im.height, "source": "x"}
            for i, im in enumerate(sample_images[:3])]
    shard = tmp_path / "shard-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), shard)
    out = list(stage({"unit": np.array([str(shard)], dtype=object)}))
    assert len(out) == 1 and list(out[0]["unit"]) == [str(shard)] * 3 and list(out[0]["row"]) == [0, 1, 2]
    assert list(out[0]["id"]) == ["img0.png", "img1.png", "img2.png"] and not any(out[0]["error"])
    # With max_batch 2 the rows come back two at a time (the driver counts images as they are encoded),
    # numbered within their unit.
    chunks = list(EncodeStage(str(tiny_codec_dir), threads=1, max_batch=2)({"unit": np.array([str(shard)], dtype=object)}))
    assert [list(c["row"]) for c in chunks] == [[0, 1], [2]]
    assert [i for c in chunks for i in c["id"]] == ["img0.png", "img1.png", "img2.png"]
    assert [bytes(d) for c in chunks for d in c["data"]] == [bytes(d) for d in out[0]["data"]]


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
    # Provenance: each item names the shard it came from, and the archive lists shards (the units of work,
    # each with its completion marker), not files.
    shards = sorted(str(p) for p in (root / "shards").glob("shard-*.parquet"))
    assert sorted(archive.sources()) == shards
    assert archive.meta["segments"] == len(shards)
    for path in shards:
        for item_id in pq.read_table(path, columns=["id"]).column("id").to_pylist():
            if item_id in archive:
                assert archive.item(item_id).source == path
    failures = archive.errors()
    assert [f.id for f in failures] == [BAD_ID] and failures[0].reason
    assert failures[0].source.endswith("shard-00099.parquet")
    assert archive.meta["model_ref"] == str(tiny_codec_dir)
    job = archive.jobs()[-1]
    assert job["job_id"] == summary.job_id and job["images"] == len(folder.good) and "finished" in job

    # The same command again: nothing new is encoded, the count stays, the failure is not duplicated.
    again = encode(root / "shards", archive_path, str(tiny_codec_dir), batch_size=2, progress=None)
    assert again.skipped == len(folder.good) + 1  # every row of every shard, the bad one's included
    assert (again.images, again.units, again.failures) == (0, 0, 0)
    assert again.describe().startswith("nothing new")
    reopened = open_archive(archive_path)
    assert reopened.meta["count"] == len(archive) and reopened.ids == archive.ids
    assert reopened.meta["segments"] == archive.meta["segments"]
    assert [f.id for f in reopened.errors()] == [BAD_ID]
    assert len(reopened.jobs()) == 2


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

    monkeypatch.setattr(ray.data, "from_items", no_ray)
    again = encode(tmp_path / "shards", archive_path, str(tiny_codec_dir), progress=None)
    assert (again.images, again.skipped, again.failures) == (0, len(folder.good), 0)
    assert len(open_archive(archive_path)) == len(folder.good)


def test_encode_refuses_a_classical_codec(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    ingest(folder.path, tmp_path / "shards", progress=None)
    with pytest.raises(ValueError, match="learned"):
        encode(tmp_path / "shards", tmp_path / "archive.zarr", "jpeg", progress=None)
    assert not (tmp_path / "archive.zarr").exists()


def test_encode_job_reads_an_image_folder(ray_local, tmp_path, image_folder_factory, tiny_codec_dir, codec,
                                          capsys):
    """A folder of images, no ingest: groups of files in sorted order are the units; bad files land in the
    errors table as they would from a shard; the same command again writes nothing."""
    from latentzip.codecs.images import load_image
    from latentzip.jobs import encode as encode_job, verify

    folder = image_folder_factory(tmp_path / "in")
    units, kind = list_units(folder.path, files_per_unit=3)
    assert kind == "file groups" and [u.rows for u in units] == [3, 3, 2]  # 8 files, .DS_Store ignored
    assert [u.name for u in units] == [u.name for u in list_units(folder.path, files_per_unit=3)[0]]
    archive_path = tmp_path / "archive.zarr"
    command = [str(folder.path), "--model", str(tiny_codec_dir), "--archive", str(archive_path),
               "--files-per-unit", "3", "--batch-size", "2"]

    assert encode_job.main(command) == 3  # some files failed
    printed = capsys.readouterr().out
    assert f"encoded {len(folder.good)} images from 3 file groups" in printed
    archive = open_archive(archive_path)
    assert sorted(archive.ids) == sorted(folder.good)
    for item_id, size in folder.good.items():
        item = archive.item(item_id)
        assert (item.width, item.height) == size and item.source in {u.name for u in units}
        assert item.data == codec.encode(load_image(str(folder.path / item_id))), item_id
    errors = {f.id: f.reason for f in archive.errors()}
    assert sorted(errors) == sorted(folder.bad)
    assert errors["empty.jpg"] == "empty file"
    assert errors["notes.jpg"].startswith("not a readable image")
    assert errors["truncated.jpg"].startswith("not a readable image")
    assert archive.meta["segments"] == 3

    assert encode_job.main(command) == 0
    assert capsys.readouterr().out.startswith("nothing new: all 3 file groups (8 images)")
    again = open_archive(archive_path)
    assert again.meta["segments"] == 3 and len(again) == len(folder.good) and len(again.errors()) == len(folder.bad)

    # A file added to the folder: the groups from it on change name; of their files, those already encoded
    # are skipped, the new one is encoded, and the bad ones are tried (and explained) again.
    load_image(str(folder.path / "a.png")).save(folder.path / "aa.png")
    summary = encode(folder.path, archive_path, str(tiny_codec_dir), files_per_unit=3, progress=None)
    assert (summary.images, summary.skipped, summary.failures) == (1, len(folder.good), len(folder.bad))
    assert sorted(open_archive(archive_path).ids) == sorted([*folder.good, "aa.png"])
    assert verify.main([str(archive_path)]) == 0


@pytest.fixture
def own_cluster():
    """A head (no CPU, so every encoder actor lands on a worker) and two 1-CPU worker nodes of this test's
    own, replacing the session's Ray for the test; the session's 2-CPU local Ray is started again afterwards
    if one was running."""
    import os

    import ray
    from ray.cluster_utils import Cluster

    from latentzip.pipeline.cluster import PINNED, start_pinned

    was_running = ray.is_initialized()
    if was_running:
        ray.shutdown()
    saved = {name: os.environ.pop(name, None) for name in ("RAY_ADDRESS", PINNED)}  # the session's pin
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()
        if was_running:
            start_pinned(num_cpus=2, include_dashboard=False)
        else:
            os.environ.update({name: value for name, value in saved.items() if value is not None})


def test_killed_node_leaves_every_image_exactly_once(own_cluster, tmp_path, sample_images, tiny_codec_dir):
    from latentzip.jobs import verify

    cluster, workers = own_cluster
    shards = tmp_path / "shards"
    shards.mkdir()
    expected = []
    for s in range(12):
        rows = [{"id": f"s{s}/img{i}.png", "image": png_bytes(sample_images[(s + i) % 5]), "width": 0, "height": 0,
                 "source": "generated"} for i in range(3)]
        expected += [r["id"] for r in rows]
        pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), shards / f"shard-{s:05d}.parquet")
    removed = []

    def progress(line):
        # The first shard is written: the job is running, one encoder actor on each worker node. Kill one
        # node outright; its actor (and the shard it holds) are lost, Ray Data retries on the other.
        if not removed:
            cluster.remove_node(workers[1], allow_graceful=False)
            removed.append(line)

    archive_path = tmp_path / "archive.zarr"
    summary = encode(shards, archive_path, str(tiny_codec_dir), batch_size=4, concurrency=2, progress=progress)
    assert removed, "the node was removed while the job ran"
    assert (summary.images, summary.failures) == (len(expected), 0)
    archive = open_archive(archive_path)
    assert sorted(archive.ids) == sorted(expected), "every image exactly once"
    assert archive.meta["segments"] == 12 and archive.errors() == []
    assert verify.main([str(archive_path), "--decode-sample", "4"]) == 0


def bad_inputs_corpus(images) -> tuple[list[dict], dict[str, tuple[int, int, str]], dict[str, str]]:
    """Shard rows of awkward inputs: (rows, id -> (width, height, mode) of those the conversion policy
    encodes, id -> expected reason of those it refuses). Every file is built here, nothing is downloaded."""
    def save(image, fmt, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        return buffer.getvalue()

    photo = images[1]  # 128x96
    jpeg = save(photo, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    palette = photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    grey16 = save(Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257), "PNG")
    # A real decompression bomb: a 20000x20000 1-bit PNG of zeros, 400 Mpixel in a few tens of KB.
    row = b"\x00" * (1 + 20000 // 8)
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 1, 0, 0, 0, 0)
    bomb = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(row * 20000, 9)) + _png_chunk(b"IEND", b""))
    good = {
        "16bit.png": (grey16, (128, 96, Image.open(io.BytesIO(grey16)).mode)),  # I;16 (or I)
        "cmyk.jpg": (save(photo.convert("CMYK"), "JPEG", quality=90), (128, 96, "CMYK")),
        "palette-alpha.png": (save(palette, "PNG", transparency=0), (128, 96, "P")),
        "grey.png": (save(photo.convert("L"), "PNG"), (128, 96, "L")),
        "one-pixel.png": (save(Image.new("RGB", (1, 1), (200, 30, 90)), "PNG"), (1, 1, "RGB")),
        "long-10000x10.png": (save(photo.resize((10000, 10)), "PNG"), (10000, 10, "RGB")),
        "exif-rotated.jpg": (save(photo, "JPEG", quality=90, exif=exif), (96, 128, "RGB")),
        "dup.jpg": (jpeg, (128, 96, "RGB")),
    }
    bad = {
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "not a readable image"),
        "zero-byte.jpg": (b"", "empty file"),
        "notes.jpg": (b"this is a text file, not a JPEG\n", "not a readable image"),
        "bomb.png": (bomb, "image too large"),
    }
    rows = [{"id": i, "image": data, "width": 0, "height": 0, "source": "corpus"}
            for i, (data, _) in {**good, **bad}.items()]
    return rows, {i: v for i, (_, v) in good.items()}, {i: reason for i, (_, reason) in bad.items()}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_bad_inputs_are_encoded_by_policy_or_explained(ray_local, tmp_path, sample_images, tiny_codec_dir, codec,
                                                      capsys):
    from latentzip.codecs.images import load_image
    from latentzip.jobs import encode as encode_job, verify

    rows, good, bad = bad_inputs_corpus(sample_images)
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_SCHEMA), shards / "shard-00000.parquet")
    # The same id again in another shard, with other bytes: one copy is encoded, the other explained.
    dup = {"id": "dup.jpg", "image": png_bytes(sample_images[0]), "width": 0, "height": 0, "source": "again"}
    pq.write_table(pa.Table.from_pylist([dup], schema=SHARD_SCHEMA), shards / "shard-00001.parquet")
    archive_path = tmp_path / "archive.zarr"

    assert encode_job.main([str(shards), "--model", str(tiny_codec_dir), "--archive", str(archive_path)]) == 3
    printed = capsys.readouterr().out
    assert f"{len(good)} images" in printed and f"{len(bad) + 1} failed" in printed
    for reason in ("not a readable image", "empty file", "image too large", "duplicate id"):
        assert reason in printed, reason

    archive = open_archive(archive_path)
    assert sorted(archive.ids) == sorted(good)
    originals = {r["id"]: r["image"] for r in rows}
    for item_id, (width, height, mode) in good.items():
        item = archive.item(item_id)
        assert (item.width, item.height, item.mode) == (width, height, mode) or item_id == "dup.jpg", item_id
        if item_id != "dup.jpg":  # encoded exactly as the conversion policy's 8-bit RGB image encodes
            assert item.data == codec.encode(load_image(originals[item_id])), item_id
        assert codec.decode(item.data).size == (item.width, item.height)
    errors = {f.id: f.reason for f in archive.errors()}
    assert sorted(errors) == sorted([*bad, "dup.jpg"])
    for item_id, reason in bad.items():
        assert reason in errors[item_id], (item_id, errors[item_id])
    assert errors["dup.jpg"].startswith("duplicate id: already encoded from")
    assert verify.main([str(archive_path), "--decode-sample", "3"]) == 0


def test_encode_summary_labels_both_bpp():
    from latentzip.pipeline.encoding import EncodeSummary

    # Two images: 100 bytes over 100x100 (0.08 bpp) and 100 bytes over 10x10 (8 bpp).
    summary = EncodeSummary("a.zarr", "job", images=2, skipped=0, failures=0, num_bytes=200, pixels=10100,
                            seconds=1.0, units=1, bpp_sum=0.08 + 8.0)
    assert summary.mean_bpp == pytest.approx(4.04) and summary.bpp == pytest.approx(1600 / 10100)
    assert "4.0400 bpp mean over images (0.1584 bpp all bytes / all pixels)" in summary.describe()


def test_stage_refuses_weights_that_are_not_the_archives_model(tiny_codec_dir):
    """The driver takes the archive's model id from codec.json; a worker whose weights load as another
    model refuses to encode rather than write streams the archive would not decode."""
    card_id = EncodeStage(str(tiny_codec_dir), threads=1).codec.card["model_id"]
    assert EncodeStage(str(tiny_codec_dir), threads=1, model_id=card_id).codec.card["model_id"] == card_id
    with pytest.raises(ValueError, match="the card does not match the weights"):
        EncodeStage(str(tiny_codec_dir), threads=1, model_id="0" * 32)
