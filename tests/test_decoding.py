"""Decode (pipeline/decoding.py): archive -> PNG files as a Ray Data job, after ingest and encode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

from latentzip.pipeline.archive import ItemNotFoundError, open_archive
from latentzip.pipeline.decoding import decode_archive, output_path
from latentzip.pipeline.encoding import encode
from latentzip.pipeline.shards import ingest


def png_name(item_id: str) -> str:
    return item_id + ".png"


@pytest.fixture(scope="module")
def archived(ray_local, tmp_path_factory, image_folder_factory, tiny_codec_dir):
    """ingest -> encode on the local Ray cluster; returns (archive path, id -> (width, height))."""
    root = tmp_path_factory.mktemp("decode")
    folder = image_folder_factory(root / "in")
    ingest(folder.path, root / "shards", images_per_shard=3, progress=None)
    summary = encode(root / "shards", root / "archive.zarr", str(tiny_codec_dir), batch_size=2, progress=None)
    assert summary.images == len(folder.good)
    return root / "archive.zarr", folder.good


def test_decode_archive_writes_every_image_as_png(ray_local, archived, tmp_path):
    archive_path, good = archived
    out = tmp_path / "png"
    summary = decode_archive(archive_path, out, batch_size=2, progress=None)

    assert summary.failures == {}
    assert (summary.images, summary.skipped) == (len(good), 0)
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(png_name(i) for i in good), "exactly one PNG per id, no temporary files"
    archive = open_archive(archive_path)
    codec = archive.codec()
    for item_id, size in good.items():
        path = out / png_name(item_id)
        assert output_path(out, item_id) == path
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == size, item_id
            pixels = np.asarray(image)
        expected = np.asarray(codec.decode(archive.item(item_id).data))
        assert np.array_equal(pixels, expected), f"{item_id}: PNG pixels differ from codec.decode"

    # A rerun finds every PNG and decodes nothing (files untouched).
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    again = decode_archive(archive_path, out, batch_size=2, progress=None)
    assert (again.images, again.skipped, again.failures) == (0, len(good), {})
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps


def test_missing_id_fails_before_any_work(ray_local, archived, tmp_path, monkeypatch):
    archive_path, good = archived
    import ray.data

    def no_ray(*args, **kwargs):
        raise AssertionError("no Ray Data job may start when an id is missing")

    monkeypatch.setattr(ray.data, "from_items", no_ray)
    out = tmp_path / "png"
    with pytest.raises(ItemNotFoundError, match="sub/nope.jpg"):
        decode_archive(archive_path, out, ids=[sorted(good)[0], "sub/nope.jpg"], progress=None)
    assert not out.exists() or not any(out.rglob("*"))


def test_decode_only_the_requested_ids(ray_local, archived, tmp_path):
    archive_path, good = archived
    wanted = ["sub/deeper/d.jpg", "a.png"]
    out = tmp_path / "png"
    summary = decode_archive(archive_path, out, ids=wanted, progress=None)
    assert (summary.images, summary.skipped, summary.failures) == (2, 0, {})
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == sorted(png_name(i) for i in wanted)
    for item_id in wanted:
        with Image.open(out / png_name(item_id)) as image:
            assert image.size == good[item_id]


def test_corrupt_item_is_reported_not_written(ray_local, archived, tmp_path):
    archive_path, good = archived
    copy = tmp_path / "archive.zarr"
    shutil.copytree(archive_path, copy)
    archive = open_archive(copy)
    victim = "b.jpg"
    start = int(archive.group["offsets"][archive.position(victim)])
    group = zarr.open_group(str(copy), mode="r+")
    group["bitstreams"][start + 10] = int(group["bitstreams"][start + 10]) ^ 0xFF

    out = tmp_path / "png"
    summary = decode_archive(copy, out, ids=["a.png", victim], progress=None)
    assert summary.images == 1
    assert list(summary.failures) == [victim] and "ItemCorruptError" in summary.failures[victim]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["a.png.png"]


def test_output_names_keep_the_id_extension_so_ids_cannot_collide(tmp_path):
    from latentzip.pipeline.decoding import output_path

    assert output_path(tmp_path, "x.jpg") != output_path(tmp_path, "x.png")
    assert output_path(tmp_path, "sub/x.jpg") == tmp_path / "sub" / "x.jpg.png"
    with pytest.raises(ValueError):
        output_path(tmp_path, "../escape.jpg")
