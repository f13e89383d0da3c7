"""Ingest: a folder of images -> Parquet shards + errors.parquet (pipeline/shards.py)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from latentzip.pipeline.shards import SHARD_SCHEMA, ingest, is_shards, read_originals, shard_paths


def read_rows(shards) -> list[dict]:
    return [row for path in shards for row in pq.read_table(path).to_pylist()]


def test_ingest_good_images_land_in_shards_with_size_id_and_original_bytes(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    result = ingest(folder.path, tmp_path / "out", progress=None)

    assert result.images == len(folder.good)
    assert result.errors == len(folder.bad)
    assert [p.name for p in result.shards] == ["shard-00000.parquet"]
    assert pq.read_schema(result.shards[0]).remove_metadata() == SHARD_SCHEMA
    rows = read_rows(result.shards)
    assert sorted(row["id"] for row in rows) == sorted(folder.good)
    for row in rows:
        assert (row["width"], row["height"]) == folder.good[row["id"]], row["id"]
        source = folder.path / row["id"]
        assert row["source"] == str(source)
        assert row["image"] == source.read_bytes(), f"{row['id']}: bytes were re-encoded"
    assert read_originals(result.out_dir) == {row["id"]: row["image"] for row in rows}
    assert set(read_originals(result.out_dir, ids={"sub/c.png"})) == {"sub/c.png"}


def test_ingest_lists_bad_files_in_errors_parquet(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    result = ingest(folder.path, tmp_path / "out", progress=None)

    errors = {row["source"]: row["reason"] for row in pq.read_table(tmp_path / "out" / "errors.parquet").to_pylist()}
    assert set(errors) == {str(folder.path / name) for name in folder.bad}, "hidden files must be ignored"
    assert all(reason for reason in errors.values())
    assert "empty" in errors[str(folder.path / "empty.jpg")]
    assert "truncated" in errors[str(folder.path / "truncated.jpg")]
    manifest = json.loads((tmp_path / "out" / "ingest.json").read_text())
    assert manifest["images"] == len(folder.good) and manifest["errors"] == len(folder.bad)
    assert manifest["shards"] == [p.name for p in result.shards]
    # Bad files are never in a shard, and the shard listing skips errors.parquet.
    assert not {row["id"] for row in read_rows(shard_paths(tmp_path / "out"))} & set(folder.bad)


def test_ingest_output_is_told_from_image_folders(tmp_path, image_folder_factory):
    from latentzip.pipeline.encoding import list_units

    folder = image_folder_factory(tmp_path / "in")
    result = ingest(folder.path, tmp_path / "out", progress=None)
    assert is_shards(tmp_path / "out") and is_shards(result.shards[0])
    assert not is_shards(folder.path) and not is_shards(folder.path / next(iter(folder.good)))
    # errors.parquet alone is not a shard; ingest.json still marks ingest output.
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "errors.parquet").write_bytes((tmp_path / "out" / "errors.parquet").read_bytes())
    assert not is_shards(lone)
    (lone / "ingest.json").write_text("{}")
    assert is_shards(lone)
    with pytest.raises(ValueError, match="is a file"):
        list_units(folder.path / next(iter(folder.good)))


def test_images_per_shard_splits_shards(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    result = ingest(folder.path, tmp_path / "out", images_per_shard=2, progress=None)

    assert [p.name for p in result.shards] == ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert [pq.read_metadata(p).num_rows for p in result.shards] == [2, 2, 1]
    assert shard_paths(tmp_path / "out") == result.shards
    ids = [row["id"] for row in read_rows(result.shards)]
    assert sorted(ids) == sorted(folder.good) and len(set(ids)) == len(ids)


def test_rerun_gives_same_shards_and_removes_stale_ones(tmp_path, image_folder_factory):
    folder = image_folder_factory(tmp_path / "in")
    out = tmp_path / "out"
    first = ingest(folder.path, out, images_per_shard=2, progress=None)
    tables = [pq.read_table(p) for p in first.shards]

    again = ingest(folder.path, out, images_per_shard=2, progress=None)
    assert again.shards == first.shards
    assert all(pq.read_table(p).equals(t) for p, t in zip(again.shards, tables))

    # Fewer, larger shards on the next run: the old shard-00001/00002 (and any stray shard) must go.
    (out / "shard-00009.parquet").write_bytes((out / "shard-00000.parquet").read_bytes())
    merged = ingest(folder.path, out, images_per_shard=10, progress=None)
    assert sorted(p.name for p in out.glob("shard-*.parquet")) == ["shard-00000.parquet"]
    assert shard_paths(out) == merged.shards
    assert sorted(row["id"] for row in read_rows(merged.shards)) == sorted(folder.good)
    assert not list(out.glob(".*.tmp")), "temporary files left behind"


def test_missing_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        ingest(tmp_path / "does-not-exist", tmp_path / "out", progress=None)
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError):
        shard_paths(tmp_path)  # no shards here
