"""``latentzip bench decode`` (pipeline/bench/decode.py) on a 300-image archive (two segments): every
figure is reported, and one lookup reads less than the archive (behaviour only; timing goals live in
docs/benchmarks.md)."""

from __future__ import annotations

import json

from latentzip.jobs import bench


def test_bench_decode_smoke(ray_local, tiny_codec_dir, tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert bench.main(["decode", "--model", str(tiny_codec_dir), "--count", "300", "--trials", "5",
                       "--batch-images", "10", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert document["images"] == 300 and document["trials"] == 5 * 3 and document["build_s"] > 0
    for name in ("bare_ms", "fresh_ms", "warm_ms", "cold_ms", "lookup_ms", "fresh_ratio", "warm_ratio"):
        assert document[name] > 0, name
    read = document["bytes_read"]
    assert 0 < read["bitstreams_bytes"] <= read["store_bytes"] < document["archive_bytes"]
    assert 0 < read["rchar"] < document["archive_bytes"]
    assert read["chunk_bytes"] == 1 << 12 and read["item_bytes"] > 0
    # One id reads its own chunks (at most two partly used), its shard's chunk index and zarr.json; no more.
    shard_index = 16 * (read["shard_bytes"] // read["chunk_bytes"]) + 4
    assert read["bitstreams_bytes"] <= read["item_bytes"] + 2 * (read["chunk_bytes"] + 4) + shard_index + 2048
    assert any(key.startswith("bitstreams/") for key in read["per_file"])
    assert document["batch"]["images"] == 10 and document["batch"]["failures"] == 0
    assert document["batch"]["images_per_s"] > 0
    assert "× bare" in capsys.readouterr().out


def test_bench_decode_reuses_an_archive(tiny_codec_dir, tmp_path):
    first = tmp_path / "first.json"
    assert bench.main(["decode", "--model", str(tiny_codec_dir), "--count", "12", "--trials", "3",
                       "--batch-images", "0", "--workdir", str(tmp_path / "work"), "--out", str(first)]) == 0
    archive = json.loads(first.read_text())["archive"]
    again = tmp_path / "again.md"
    assert bench.main(["decode", "--archive", archive, "--trials", "3", "--batch-images", "0",
                       "--out", str(again)]) == 0
    assert archive in again.read_text()
    assert bench.main(["decode", "--archive", archive, "--out", str(tmp_path / "x.txt")]) == 2
