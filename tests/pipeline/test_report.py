"""The rate-distortion report (latentzip.pipeline.report.run and latentzip.jobs.report) on a tiny archive."""

from __future__ import annotations

import json
import math
import shutil
from importlib.resources import files

import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentzip.codecs.classical import FORMATS
from latentzip.jobs import report as report_job
from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.encoding import encode
from latentzip.pipeline.report.measure import assign_series, classical_plan, learned_spec, model_spec
from latentzip.pipeline.report.run import report
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


def encoded_archive(photos, ids, codec_dir, root):
    """ingest ``ids`` of ``photos`` and encode them with ``codec_dir`` on Ray: the archive's path."""
    for item_id in ids:
        (root / "in" / item_id).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(photos / item_id, root / "in" / item_id)
    ingest(root / "in", root / "shards", images_per_shard=2, progress=None)
    summary = encode(root / "shards", root / "a.zarr", str(codec_dir), batch_size=2, progress=None)
    assert summary.images == len(ids)
    return root / "a.zarr"


@pytest.fixture(scope="module")
def archive(local_ray, photos, tiny_codec_dir, tmp_path_factory):
    """Every photo but ``c.png``, ingested and encoded by the tiny codec."""
    return encoded_archive(photos, ("a.png", "sub/b.jpg", "large.png"), tiny_codec_dir,
                           tmp_path_factory.mktemp("report-archive"))


def lambda_codec(source, codec_dir, lmbda):
    """A copy of a codec with a training lambda in its card (the card is not part of the model id)."""
    shutil.copytree(source, codec_dir)
    document = json.loads((codec_dir / "codec.json").read_text())
    document["card"]["training"] = {"lmbda": lmbda}
    (codec_dir / "codec.json").write_text(json.dumps(document))
    return codec_dir


@pytest.fixture(scope="module")
def in_process(archive, shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("report-out")
    result = report(archive, shards, out, classical=("jpeg", "webp"), qualities=QUALITIES, use_ray=False,
                    progress=None, extend_sweeps=False)
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
                    progress=None, extend_sweeps=False)
    rows = pq.read_table(result.rows_parquet).to_pylist()
    key = ("id", "codec", "quality", "num_bytes", "bpp", "psnr_db", "width", "height")

    def comparable(row):  # NaN (the learned quality) never equals itself
        return tuple(None if isinstance(row[k], float) and math.isnan(row[k]) else row[k] for k in key)

    assert [comparable(r) for r in rows] == [comparable(r) for r in expected]


def test_learned_name_and_lambda_from_a_training_run(local_ray, photos, tiny_codec_dir, tmp_path):
    """Training writes RUN/codec with the recipe in the card: the run names the model, lmbda is the quality."""
    codec_dir = lambda_codec(tiny_codec_dir, tmp_path / "my-run" / "codec", 0.025)
    path = encoded_archive(photos, ("a.png",), codec_dir, tmp_path)
    spec = learned_spec(open_archive(path))
    assert (spec.name, spec.lmbda, spec.ref) == ("my-run", 0.025, str(codec_dir.resolve()))
    assert model_spec(str(codec_dir)) == spec  # the same model encoding on the fly


def test_series_from_models_of_one_architecture(tiny_codec_factory, tmp_path):
    a = model_spec(str(lambda_codec(tiny_codec_factory(seed=0), tmp_path / "ra" / "codec", 0.01)))
    b = model_spec(str(lambda_codec(tiny_codec_factory(seed=1), tmp_path / "rb" / "codec", 0.02)))
    c = model_spec(str(tiny_codec_factory(seed=2)))  # no lambda in its card
    assert [s.name for s in assign_series([a])] == ["ra"]
    assert [s.name for s in assign_series([a, b])] == ["scale-hyperprior-N16-M24"] * 2
    assert [s.name for s in assign_series([a, b], series="mine")] == ["mine", "mine"]
    with pytest.raises(ValueError, match="distinct lambda"):
        assign_series([a, c], series="mine")
    named = assign_series([a, c])  # c has no lambda: a and c cannot share a curve, each keeps its name
    assert [s.name for s in named] == ["ra", c.model]
    with pytest.raises(ValueError, match="given twice"):
        assign_series([a, a])


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
                            "--qualities", "jpeg=30,80", "--no-extend"]) == 0
    printed = capsys.readouterr().out
    assert str(out / "report.md") in printed and str(out / "rd_psnr.png") in printed
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    assert {(r["codec"], r["quality"]) for r in rows if r["kind"] == "classical"} == {("jpeg", 30), ("jpeg", 80)}


def test_folder_of_images_encoded_on_the_fly_on_ray(local_ray, photos, tiny_codec_factory, tmp_path, capsys):
    models = [lambda_codec(tiny_codec_factory(seed=s), tmp_path / f"run{s}" / "codec", 0.01 * (s + 1)) for s in (0, 1)]
    out = tmp_path / "out"
    assert report_job.main(["--images", str(photos), "--model", ",".join(map(str, models)), "--codecs", "jpeg",
                            "--qualities", "jpeg=30,80", "--no-extend", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "needs ≥ 4 rate points (learned has" in printed and str(out / "report.html") in printed
    rows = pq.read_table(out / "rows.parquet").to_pylist()
    learned = [r for r in rows if r["kind"] == "learned"]
    assert sorted({r["id"] for r in learned}) == ["a.png", "c.png", "large.png", "sub/b.jpg"]
    assert sorted({r["quality"] for r in learned}) == [0.01, 0.02]
    assert all(r["encode_s"] > 0 for r in learned)
    assert {r["quality"] for r in rows if r["codec"] == "jpeg"} == {30, 80}  # --no-extend keeps the sweep
    assert (out / "bd.json").is_file() and (out / "report.html").is_file()


def test_report_command_errors(archive, shards, tmp_path, capsys):
    assert report_job.main(["--images", str(shards), str(archive), "--out", str(tmp_path)]) == 2
    assert "not both" in capsys.readouterr().err
    assert report_job.main([str(shards), "--out", str(tmp_path)]) == 2
    assert "expected ARCHIVE" in capsys.readouterr().err
    assert report_job.parse_qualities("jpeg=20,50.5;webp=30") == {"jpeg": [20, 50.5], "webp": [30]}
    assert report_job.main([str(archive), str(shards), "--out", str(tmp_path), "--no-ray", "--codecs", "jpeg",
                            "--qualities", "webp=50"]) == 2
    assert "not among" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        report_job.main([str(archive), str(shards), "--out", str(tmp_path), "--codecs", "gif"])


def test_notes_beside_the_photos_are_not_measured(tmp_path, sample_images):
    from latentzip.pipeline.report.run import original_ids

    sample_images[0].save(tmp_path / "a.png")
    (tmp_path / "SOURCES.md").write_text("# where the photos come from\n")
    (tmp_path / "manifest.tsv").write_text("a.png\tsomewhere\n")
    (tmp_path / "b.jpg.bad").write_bytes(b"not an image")  # an odd file is still measured (and fails)
    assert sorted(original_ids(tmp_path)) == ["a.png", "b.jpg.bad"]


def test_a_corrupt_stored_item_costs_its_own_row(archive, shards, tmp_path):
    """The stage reads each archive's stored bytes itself: an item that fails its checksum is that model's
    failure on that image, recorded, and every other row is measured."""
    import zarr

    from latentzip.pipeline.archive import I

    damaged = tmp_path / "a.zarr"
    shutil.copytree(archive, damaged)
    row, record = open_archive(damaged)._located("a.png")
    bitstreams = zarr.open_group(str(damaged), mode="r+")["bitstreams"]
    offset = int(record[I["offset"]]) + 20
    bitstreams[offset] = bitstreams[offset] ^ 0xFF
    result = report(damaged, shards, tmp_path / "out", classical=("jpeg",), qualities={"jpeg": [50]},
                    use_ray=False, progress=None, extend_sweeps=False)
    rows = pq.read_table(result.rows_parquet).to_pylist()
    learned = {r["id"] for r in rows if r["kind"] == "learned"}
    assert learned == {"sub/b.jpg", "large.png"}
    assert {r["id"] for r in rows if r["kind"] == "classical"} == {"a.png", "sub/b.jpg", "large.png"}
    [error] = result.errors
    assert error["id"] == "a.png" and "ItemCorruptError" in error["reason"], error


def test_small_passes_stay_in_process_unless_ray_is_asked_for(local_ray, archive, shards, tmp_path, monkeypatch):
    """With Ray running and use_ray=None, a pass goes to Ray only when it has enough measurements to pay
    for a Ray Data pipeline's start (run.RAY_MIN_MEASUREMENTS)."""
    from latentzip.pipeline.report import run

    def lines(out):
        said = []
        report(archive, shards, tmp_path / out, classical=("jpeg",), qualities={"jpeg": [50]}, progress=said.append,
               extend_sweeps=False)
        return " ".join(said)

    assert "(in-process)" in lines("small") and "(Ray)" not in lines("small-again")
    monkeypatch.setattr(run, "RAY_MIN_MEASUREMENTS", 6)  # 3 images x (1 learned + 1 classical)
    assert "(Ray)" in lines("large")
