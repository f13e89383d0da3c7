"""Decode (pipeline/decoding.py): archive -> PNG files as a Ray Data job, after ingest and encode."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr
from PIL import Image

from latentzip.pipeline.archive import ItemCorruptError, ItemNotFoundError
from latentzip.pipeline.decoding import (DecodeError, ModelUnavailableError, decode_array, decode_image, open_archive,
                                         output_path)
from latentzip.pipeline.decoding_job import decode_archive, parse_range, read_parquet_images, select_ids
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
    summary = decode_archive(archive_path, out, batch_size=2, progress=None, use_ray=True)

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


def corrupt_copy(archive_path, victim: str, tmp_path):
    """A copy of the archive with one byte of ``victim``'s bitstream flipped."""
    copy = tmp_path / "archive.zarr"
    shutil.copytree(archive_path, copy)
    start, _ = open_archive(copy).byte_range(victim)
    group = zarr.open_group(str(copy), mode="r+")
    group["bitstreams"][start + 10] = int(group["bitstreams"][start + 10]) ^ 0xFF
    return copy


def test_corrupt_item_is_reported_not_written(ray_local, archived, tmp_path):
    archive_path, good = archived
    victim = "b.jpg"
    copy = corrupt_copy(archive_path, victim, tmp_path)

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


def test_on_demand_and_batch_decode_are_bit_identical(ray_local, archived, tmp_path):
    """decode_array (one id, in this process) == batch PNG files == batch Parquet shard, pixel for pixel."""
    archive_path, good = archived
    archive = open_archive(archive_path)
    on_demand = {item_id: decode_array(archive, item_id) for item_id in good}
    assert all(a.dtype == np.uint8 and a.shape == (good[i][1], good[i][0], 3) for i, a in on_demand.items())
    assert decode_image(archive_path, "a.png").size == good["a.png"]  # a path works as well as an Archive

    # PNG files on Ray, the Parquet file in this process (a handful of ids): the same images either way.
    png = decode_archive(archive_path, tmp_path / "png", batch_size=2, progress=None, use_ray=True)
    parquet = decode_archive(archive_path, tmp_path / "all.parquet", batch_size=2, progress=None, format="parquet")
    assert png.failures == parquet.failures == {} and png.images == parquet.images == len(good)
    from_parquet = read_parquet_images(tmp_path / "all.parquet")
    assert sorted(from_parquet) == sorted(good)
    for item_id, pixels in on_demand.items():
        with Image.open(output_path(tmp_path / "png", item_id)) as image:
            assert np.array_equal(np.asarray(image), pixels), f"{item_id}: batch PNG differs from on-demand"
        assert np.array_equal(from_parquet[item_id], pixels), f"{item_id}: Parquet PNG differs from on-demand"


def test_select_ids_by_list_range_or_all(archived):
    archive_path, good = archived
    archive = open_archive(archive_path)
    assert select_ids(archive) == archive.ids and sorted(archive.ids) == sorted(good)
    assert select_ids(archive, positions=parse_range("1:3")) == archive.ids[1:3]
    assert select_ids(archive, positions=parse_range("-2:")) == archive.ids[-2:]
    assert select_ids(archive, ["a.png", "b.jpg", "a.png"]) == ["a.png", "b.jpg"]
    with pytest.raises(ItemNotFoundError, match="nope"):
        select_ids(archive, ["a.png", "nope"])
    for bad in ("3", "a:b", "1:2:3"):
        with pytest.raises(ValueError, match="START:STOP"):
            parse_range(bad)


def test_range_decode_writes_only_those_positions(ray_local, archived, tmp_path):
    archive_path, _ = archived
    ids = open_archive(archive_path).ids
    summary = decode_archive(archive_path, tmp_path / "png", positions=slice(1, 3), progress=None)
    assert (summary.images, summary.failures) == (2, {})
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")) == \
        sorted(png_name(i) for i in ids[1:3])


def test_on_demand_errors_name_the_id(archived, tmp_path):
    archive_path, _ = archived
    with pytest.raises(ItemNotFoundError, match="'sub/nope.jpg'"):
        decode_array(archive_path, "sub/nope.jpg")
    copy = corrupt_copy(archive_path, "b.jpg", tmp_path)
    with pytest.raises(ItemCorruptError, match="'b.jpg'"):
        decode_array(copy, "b.jpg")
    assert decode_array(copy, "a.png").shape == (64, 64, 3)  # the other ids still decode


def test_unavailable_model_is_an_error_naming_the_id(ray_local, archived, tiny_codec_dir, tmp_path):
    """The archive names a model directory that is gone: no silent fallback, an error naming the id."""
    archive_path, _ = archived
    codec_copy = tmp_path / "model" / "codec"
    shutil.copytree(tiny_codec_dir, codec_copy)
    encode(archive_path.parent / "shards", tmp_path / "gone.zarr", str(codec_copy), batch_size=2, progress=None)
    shutil.rmtree(codec_copy)
    with pytest.raises(ModelUnavailableError, match="cannot decode 'a.png'.*not available") as error:
        decode_array(tmp_path / "gone.zarr", "a.png")
    assert error.value.item_id == "a.png" and isinstance(error.value, DecodeError)
    with pytest.raises(ModelUnavailableError, match="first 'a.png'"):
        decode_archive(tmp_path / "gone.zarr", tmp_path / "png", ids=["a.png", "b.jpg"], progress=None)
    assert not (tmp_path / "png").exists()
