"""The rate-distortion report (latentzip.pipeline.report and latentzip.jobs.report) on a tiny archive."""

from __future__ import annotations

import json
import math
import shutil
from importlib.resources import files

import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentzip.codecs.classical import FORMATS
from latentzip.codecs.registry import load_codec
from latentzip.jobs import report as report_job
from latentzip.pipeline.archive import ArchiveWriter, Item, open_archive
from latentzip.pipeline.report import classical_plan, learned_spec, report
from latentzip.pipeline.shards import ingest

QUALITIES = {"jpeg": [30, 80], "webp": [50]}


@pytest.fixture(scope="module")
def local_ray(ray_local):
    """The session's local Ray cluster (conftest.ray_local)."""
    return ray_local


@pytest.fixture(scope="module")
def photos(_sample_image_cache, tmp_path_factory):
    """Three small photos (one in a subfolder, so an id has a folder) and one of 176x168 px for MS-SSIM."""
    folder = tmp_path_factory.mktemp("report-photos")
    (folder / "sub").mkdir()
    _sample_image_cache[0].save(folder / "a.png")                  # 64x64
    _sample_image_cache[1].save(folder / "sub" / "b.jpg", quality=95)  # 128x96
    _sample_image_cache[2].save(folder / "c.png")                  # 93x70, padded by the learned codec
    with (files("latentzip.jobs") / "samples" / "darknet-dog.jpg").open("rb") as handle:
        large = Image.open(handle).convert("RGB")
    large.resize((176, round(176 * large.height / large.width))).crop((0, 0, 176, 168)).save(folder / "large.png")
    return folder


@pytest.fixture(scope="module")
def shards(photos, tmp_path_factory):
    return ingest(photos, tmp_path_factory.mktemp("report-shards"), images_per_shard=2, progress=None).out_dir


@pytest.fixture(scope="module")
def archive(photos, tiny_codec_dir, tmp_path_factory):
    """An archive written directly (no Ray): every photo but ``c.png``, encoded by the tiny codec."""
    codec = load_codec(tiny_codec_dir)
    path = tmp_path_factory.mktemp("report-archive") / "a.zarr"
    writer = ArchiveWriter.open_or_create(path, codec.card, str(tiny_codec_dir))
    items = []
    for item_id in ("a.png", "sub/b.jpg", "large.png"):
        image = Image.open(photos / item_id).convert("RGB")
        items.append(Item(item_id, codec.encode(image), image.height, image.width, str(photos)))
    assert writer.append(items) == 3
    return path


@pytest.fixture(scope="module")
def in_process(archive, shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    result = report(archive, shards, out, classical=("jpeg", "webp"), qualities=QUALITIES, use_ray=False,
                    progress=None)
    return result, pq.read_table(result.rows_parquet).to_pylist()


def test_learned_bpp_is_from_stored_bytes(in_process, archive, tiny_codec_dir):
    result, rows = in_process
    reader = open_archive(archive)
    learned = [r for r in rows if r["kind"] == "learned"]
    assert sorted(r["id"] for r in learned) == sorted(reader.ids)
    for row in learned:
        item = reader.item(row["id"])
        assert row["num_bytes"] == len(item.data)
        assert row["bpp"] == len(item.data) * 8 / (item.height * item.width)
        assert (row["width"], row["height"]) == (item.width, item.height)
        assert math.isnan(row["encode_s"]) and row["decode_s"] > 0
        assert math.isnan(row["quality"])  # the tiny codec's card records no lambda
        assert row["codec"] == tiny_codec_dir.name
        assert 5 < row["psnr_db"] < 60


def test_classical_codecs_and_qualities_all_present(in_process):
    result, rows = in_process
    assert result.errors == []
    assert result.images == 3  # c.png is not in the archive, so it is left out for every codec
    assert result.rows == len(rows) == 3 * (1 + 2 + 1)
    for codec, qualities in QUALITIES.items():
        for quality in qualities:
            measured = [r for r in rows if r["codec"] == codec and r["quality"] == quality]
            assert sorted(r["id"] for r in measured) == ["a.png", "large.png", "sub/b.jpg"]
            assert all(r["encode_s"] > 0 and r["decode_s"] > 0 and r["bpp"] > 0 for r in measured)
    # MS-SSIM only where both sides are at least 161 px
    assert all(math.isnan(r["ms_ssim"]) == (r["id"] != "large.png") for r in rows)


def test_psnr_rises_with_jpeg_quality(in_process):
    _, rows = in_process
    mean = {q: sum(r["psnr_db"] for r in rows if r["codec"] == "jpeg" and r["quality"] == q) / 3 for q in (30, 80)}
    rate = {q: sum(r["bpp"] for r in rows if r["codec"] == "jpeg" and r["quality"] == q) / 3 for q in (30, 80)}
    assert mean[80] > mean[30] and rate[80] > rate[30]


def test_files_written(in_process):
    result, _ = in_process
    for path in (result.rows_parquet, result.summary_parquet, result.markdown, result.rd_psnr, result.rd_msssim):
        assert path.is_file() and path.parent == result.out_dir
    for plot in (result.rd_psnr, result.rd_msssim):
        with Image.open(plot) as image:
            assert image.format == "PNG" and image.width > 100
            image.verify()
    summary = pq.read_table(result.summary_parquet).to_pylist()
    assert [(s["codec"], s["quality"]) for s in summary][1:] == [("jpeg", 30), ("jpeg", 80), ("webp", 50)]
    assert summary[0]["kind"] == "learned" and all(s["images"] == 3 for s in summary)
    assert all(s["ms_ssim_images"] == 1 for s in summary)
    markdown = result.markdown.read_text()
    assert "stored" in markdown and "161 px" in markdown and "| jpeg | 80 | 3 |" in markdown
    assert "rd_psnr.png" in markdown


def test_on_ray_from_an_image_folder_matches_in_process(local_ray, in_process, archive, photos, tmp_path):
    _, expected = in_process
    result = report(archive, photos, tmp_path, classical=("jpeg", "webp"), qualities=QUALITIES, use_ray=True,
                    progress=None)
    rows = pq.read_table(result.rows_parquet).to_pylist()
    key = ("id", "codec", "quality", "num_bytes", "bpp", "psnr_db", "width", "height")

    def comparable(row):  # NaN (the learned quality) never equals itself
        return tuple(None if isinstance(row[k], float) and math.isnan(row[k]) else row[k] for k in key)

    assert [comparable(r) for r in rows] == [comparable(r) for r in expected]


def test_learned_name_and_lambda_from_a_training_run(tiny_codec_dir, tmp_path):
    """Training writes RUN/codec with the recipe in the card: the run names the model, lmbda is the quality."""
    codec_dir = tmp_path / "my-run" / "codec"
    shutil.copytree(tiny_codec_dir, codec_dir)
    document = json.loads((codec_dir / "codec.json").read_text())
    document["card"]["training"] = {"lmbda": 0.025}  # the card is not part of the model id
    (codec_dir / "codec.json").write_text(json.dumps(document))
    ArchiveWriter.open_or_create(tmp_path / "a.zarr", document, str(codec_dir))
    spec = learned_spec(open_archive(tmp_path / "a.zarr"))
    assert (spec.name, spec.lmbda, spec.ref) == ("my-run", 0.025, str(codec_dir.resolve()))


def test_plan_validation():
    plan = classical_plan(("jpeg", "avif"), {"jpeg": [40]})
    assert plan == [("jpeg", 40)] + [("avif", q) for q in FORMATS["avif"].sweep]
    with pytest.raises(ValueError, match="unknown classical"):
        classical_plan(("jpeg", "gif"))
    with pytest.raises(ValueError, match="not among"):
        classical_plan(("jpeg",), {"webp": [50]})
    with pytest.raises(ValueError, match="quality"):
        classical_plan(("jpeg",), {"jpeg": [500]})


def test_report_command(local_ray, archive, shards, tmp_path, capsys):
    out = tmp_path / "cli"
    assert report_job.main([str(archive), str(shards), "--out", str(out), "--codecs", "jpeg",
                            "--qualities", "jpeg=30,80"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and str(out / "rd_psnr.png") in printed
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert {(r["codec"], r["quality"]) for r in rows if r["kind"] == "classical"} == {("jpeg", 30), ("jpeg", 80)}


def test_report_command_errors(archive, shards, tmp_path, capsys):
    assert report_job.parse_qualities("jpeg=20,50.5;webp=30") == {"jpeg": [20, 50.5], "webp": [30]}
    assert report_job.main([str(archive), str(shards), "--out", str(tmp_path), "--no-ray", "--codecs", "jpeg",
                            "--qualities", "webp=50"]) == 2
    assert "not among" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_job.main([str(archive), str(shards), "--out", str(tmp_path), "--codecs", "gif"])
