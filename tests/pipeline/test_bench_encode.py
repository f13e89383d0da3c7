"""``latentzip bench encode`` (pipeline/bench/encode.py) on tiny inputs: it runs and reports every figure."""

from __future__ import annotations

import json

from latentzip.jobs import bench


def test_bench_encode_smoke(tiny_codec_dir, tmp_path, _sample_image_cache, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i, image in enumerate(_sample_image_cache[:3]):
        image.save(images / f"img{i}.png")
    out = tmp_path / "encode.json"
    assert bench.main(["encode", "--model", str(tiny_codec_dir), "--images", str(images), "--count", "3",
                       "--lookup-images", "300", "--repeat", "2", "--profile", "--overhead-images", "5",
                       "--out", str(out)]) == 0
    document = json.loads(out.read_text())
    assert [p["path"] for p in document["paths"]] == [
        "compressai", "latentzip-1", "latentzip-batched", "latentzip-batched-bf16"]
    for path in document["paths"]:
        assert path["images"] == 3 and path["images_per_s"] > 0 and path["num_bytes"] > 0
        assert len(path["runs"]) == 2
    # The profile times the encoder's own path stage by stage (its bytes checked against encode_batch's).
    assert [p["precision"] for p in document["profiles"]] == ["fp32", "bf16"]
    for profile in document["profiles"]:
        assert list(profile["seconds"]) == ["decode", "pad", "g_a", "h_a", "z coding", "h_s", "y coding", "pack",
                                            "archive"]
        assert profile["images"] == 3 and profile["total_s"] > 0
        assert abs(sum(profile["percent"].values()) - 100) < 1e-6
    assert document["archive_images"] == 5 and 0 < document["metadata_bytes"] < document["archive_bytes"]
    assert document["archive_bytes"] > 0 and document["bitstream_bytes"] > 0 and document["peak_rss_mb"] > 0
    assert document["lookup"]["images"] == 300 and document["lookup"]["max_ms"] > 0
    assert "× CompressAI" in capsys.readouterr().out
