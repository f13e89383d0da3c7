"""pipeline/scoring.py and ``latentzip score``: rates as anomaly scores, on the tiny codec and a local Ray.

The tiny codec is untrained, so "normal" here means "like the reference images" by its own rates: the
reference set is shifted crops of one photo (a tight spread of bpp), the anomaly an image of uniform noise.
"""

from __future__ import annotations

import io
import json
import math
from importlib.resources import files

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentzip.codecs.images import load_image
from latentzip.codecs.registry import load_codec
from latentzip.jobs import cli
from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.encoding import encode
from latentzip.pipeline.scoring import Calibration, ScoreStage, score, score_archive
from latentzip.pipeline.shards import ingest, read_originals


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo():
    path = sorted(p for p in (files("latentzip.jobs") / "samples").iterdir() if p.name.endswith(".jpg"))[1]
    with path.open("rb") as handle:
        image = Image.open(handle).convert("RGB")
    image.thumbnail((256, 256))
    return image


@pytest.fixture(scope="module")
def folders(tmp_path_factory, photo):
    """``reference/``: six shifted 64x64 crops of one photo; ``input/``: another crop, noise and a text file."""
    root = tmp_path_factory.mktemp("score")
    (root / "reference").mkdir()
    (root / "input").mkdir()
    for shift in range(0, 36, 6):
        photo.crop((shift, shift, shift + 64, shift + 64)).save(root / "reference" / f"crop{shift:02d}.png")
    photo.crop((3, 3, 67, 67)).save(root / "input" / "normal.png")
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "input" / "noise.png")
    (root / "input" / "broken.png").write_text("not an image\n")
    (root / "input" / "SOURCES.md").write_text("notes beside the photos are not scored\n")
    return root


def test_stage_bpp_is_the_bpp_of_the_encoded_bytes(tiny_codec_dir, sample_images):
    codec = load_codec(tiny_codec_dir)
    batch = {"id": np.array([f"im{i}" for i in range(len(sample_images))] + ["bad"], dtype=object),
             "source": np.array(["-"] * (len(sample_images) + 1), dtype=object),
             "image": np.array([_png(im) for im in sample_images] + [b"junk"], dtype=object)}
    out = ScoreStage(str(tiny_codec_dir), groups=3)(batch)
    for i, image in enumerate(sample_images):
        data = codec.encode(load_image(batch["image"][i]))
        assert out["num_bytes"][i] == len(data)
        assert out["bpp"][i] == len(data) * 8 / (image.width * image.height)
        assert (out["height"][i], out["width"][i]) == (image.height, image.width)
        assert 0 < out["bpp_y"][i] + out["bpp_z"][i] < out["bpp"][i]
        groups = [out[f"est_bpp_g{k}"][i] for k in range(3)]
        assert sum(groups) == pytest.approx(out["est_bpp_y"][i])
        rate_map = np.frombuffer(out["rate_map"][i], np.float32).reshape(out["rate_map_rows"][i], out["rate_map_cols"][i])
        assert rate_map.shape == (math.ceil(image.height / 16), math.ceil(image.width / 16))
    assert "not a readable image" in out["error"][-1] and math.isnan(out["bpp"][-1])


def test_calibration_percentile_and_robust_z():
    bpps = [1.0, 2.0, 3.0, 4.0, 100.0, math.nan]
    by_percentile = Calibration.fit(bpps, "percentile", percentile=50)
    assert (by_percentile.threshold, by_percentile.count, by_percentile.median, by_percentile.mad) == (3.0, 5, 3.0, 1.0)
    robust = Calibration.fit(bpps, "robust-z", z=3.5)
    assert robust.threshold == pytest.approx(3.0 + 3.5 * 1.4826)
    assert robust.flag(100.0) and not robust.flag(3.0) and not robust.flag(math.nan)
    assert robust.robust_z(3.0 + 1.4826) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="method"):
        Calibration.fit(bpps, "zscore")
    with pytest.raises(ValueError, match="no scored images"):
        Calibration.fit([math.nan])


def test_score_job_flags_the_anomaly_and_writes_rows_calibration_heatmaps(ray_local, tiny_codec_dir, folders, tmp_path):
    out = tmp_path / "out"
    summary = score(folders / "input", str(tiny_codec_dir), out, reference=folders / "reference",
                    method="robust-z", z=3.5, top_k=1, progress=None)
    rows = {r["id"]: r for r in pq.read_table(out / "rows.parquet").to_pylist()}
    assert sorted(rows) == ["broken.png", "noise.png", "normal.png"]  # SOURCES.md is a note (pipeline/sources.py)
    assert rows["broken.png"]["error"] and not rows["broken.png"]["flagged"]
    calibration = json.loads((out / "calibration.json").read_text())
    assert calibration["method"] == "robust-z" and calibration["count"] == 6
    assert calibration["model_id"] == load_codec(tiny_codec_dir).model_id.hex()
    assert rows["noise.png"]["bpp"] > calibration["threshold"] > rows["normal.png"]["bpp"]
    assert rows["noise.png"]["flagged"] and not rows["normal.png"]["flagged"]
    assert rows["noise.png"]["robust_z"] > 3.5
    assert (summary.images, summary.failures, summary.flagged) == (2, 1, 1)
    heatmaps = sorted((out / "heatmaps").iterdir())
    assert [p.name for p in heatmaps] == ["00-noise.png.png"] and rows["noise.png"]["heatmap"] == str(heatmaps[0])
    assert Image.open(heatmaps[0]).size[0] == 2 * 64 + 4


@pytest.fixture(scope="module")
def encoded(ray_local, tiny_codec_dir, image_folder_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("score-archive")
    folder = image_folder_factory(root / "images")
    ingest(folder.path, root / "shards", images_per_shard=2, progress=None)
    encode(root / "shards", root / "a.zarr", str(tiny_codec_dir), batch_size=4, progress=None)
    return root, folder


def test_score_equals_the_encode_jobs_bpp(encoded, tiny_codec_dir):
    root, folder = encoded
    archive = open_archive(root / "a.zarr")
    assert sorted(archive.ids) == sorted(folder.good)
    originals = read_originals(root / "shards")
    ids = sorted(archive.ids)
    out = ScoreStage(str(tiny_codec_dir))({"id": np.array(ids, dtype=object), "source": np.array(ids, dtype=object),
                                           "image": np.array([originals[i] for i in ids], dtype=object)})
    assert dict(zip(ids, out["bpp"].tolist())) == {i: archive.item(i).bpp for i in ids}
    screened = score_archive(root / "a.zarr", root / "screened", progress=None)
    rows = pq.read_table(root / "screened" / "rows.parquet").to_pylist()
    assert {r["id"]: r["bpp"] for r in rows} == {i: archive.item(i).bpp for i in ids}
    assert screened.images == len(ids) and screened.calibration.count == len(ids)


def test_score_command_on_shards_and_an_archive(encoded, tiny_codec_dir, tiny_codec_factory, tmp_path, capsys):
    root, folder = encoded
    archive = open_archive(root / "a.zarr")
    assert cli.main(["score", str(root / "shards"), "--model", str(tiny_codec_dir), "--top-k", "2",
                     "--percentile", "50", "--out", str(tmp_path / "s")]) == 0
    assert "scored 5 images" in capsys.readouterr().out
    rows = pq.read_table(tmp_path / "s" / "rows.parquet").to_pylist()
    assert {r["id"]: r["bpp"] for r in rows} == {i: archive.item(i).bpp for i in archive.ids}  # the Ray job
    assert sum(r["flagged"] for r in rows) == 2  # above the median of five
    assert len(list((tmp_path / "s" / "heatmaps").iterdir())) == 2
    # Screening the archive with that calibration: same model, no re-encoding, the same flags.
    assert cli.main(["score", "--archive", str(root / "a.zarr"), "--calibration", str(tmp_path / "s" / "calibration.json"),
                     "--out", str(tmp_path / "a")]) == 0
    screened = pq.read_table(tmp_path / "a" / "rows.parquet").to_pylist()
    assert {r["id"]: r["flagged"] for r in screened} == {r["id"]: r["flagged"] for r in rows}
    capsys.readouterr()
    other = tiny_codec_factory(seed=1)
    assert cli.main(["score", str(root / "shards"), "--model", str(other), "--calibration",
                     str(tmp_path / "s" / "calibration.json"), "--out", str(tmp_path / "x")]) == 2
    assert "calibration was made with model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["score", "--out", str(tmp_path / "y")])


def test_bench_anomaly_on_constructed_anomalies(tiny_codec_dir, photo, tmp_path, capsys):
    from latentzip.jobs import bench
    from latentzip.pipeline.bench.anomaly import KINDS, auroc, precision_at_recall

    assert auroc([0.0, 1.0], [2.0, 3.0]) == 1.0 and auroc([1.0], [1.0]) == 0.5 and auroc([2.0], [1.0]) == 0.0
    assert precision_at_recall([0.5, 2.5], [1.0, 2.0, 3.0], recall=0.6) == 2 / 3
    normal = tmp_path / "normal"
    normal.mkdir()
    photo.crop((0, 0, 96, 64)).save(normal / "a.png")
    photo.crop((40, 40, 136, 104)).save(normal / "b.png")
    out = tmp_path / "anomaly.json"
    assert bench.main(["anomaly", "--model", str(tiny_codec_dir), "--normal", str(normal), "--max-side", "96",
                       "--out", str(out)]) == 0
    assert "| learned_bpp |" in capsys.readouterr().out
    document = json.loads(out.read_text())
    assert document["counts"] == {"normal": 2, **{kind: 2 for kind in KINDS}}
    assert all(0 <= document["metrics"]["png_bpp"][k]["auroc"] <= 1 for k in (*KINDS, "all"))
    by_name = {r["name"]: r for r in document["images"]}
    assert by_name["a-text"]["width"] == 96 and by_name["a-noise"]["png_bpp"] > by_name["a.png"]["png_bpp"]
