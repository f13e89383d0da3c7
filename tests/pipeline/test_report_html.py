"""The report's HTML page and outputs (pipeline/report/html.py, pipeline/report/outputs.py), from a report that
encodes a folder of images on the fly with four tiny learned codecs (no archive involved)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from latentzip.codecs.checkpoint import export_codec
from latentzip.codecs.hyperprior import CodecConfig, build_model
from latentzip.pipeline.report.run import report
from latentzip.pipeline.report.html import outliers
from latentzip.pipeline.report.outputs import load_reference

LAMBDAS = (0.001, 0.002, 0.004, 0.008)
QUALITIES = {"jpeg": [30, 80], "webp": [50]}
#: A made-up reference series, drawn on the plots (never measured).
REFERENCE = {"label": "made-up reference", "source": "invented for this test", "bpp": [0.5, 1, 2, 4],
             "psnr_db": [20, 24, 28, 32], "ms_ssim": [0.8, 0.88, 0.94, 0.97]}
CRIMSON = (220, 20, 60)      # the first learned series (report_outputs.LEARNED_COLOURS)
TAB_BLUE = (31, 119, 180)    # matplotlib's first cycle colour: the first classical codec


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """Four tiny codecs of one architecture, each with a training lambda in its card and a larger latent
    gain (so a larger rate): one series of four rate points, as four trained runs would be."""
    root = tmp_path_factory.mktemp("ladder")
    dirs = []
    for step, lmbda in enumerate(LAMBDAS):
        torch.manual_seed(0)
        model = build_model(CodecConfig(arch="scale-hyperprior", N=16, M=24))
        with torch.no_grad():
            model.g_a[-1].weight.mul_(5 * 2**step)
            model.h_a[-1].weight.mul_(20)
        directory = root / f"run-l{lmbda}" / "codec"
        export_codec(model, directory, card={"training": {"lmbda": lmbda}})
        dirs.append(directory)
    return dirs


@pytest.fixture(scope="module")
def images(_sample_image_cache, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html-images")
    (folder / "sub").mkdir()
    _sample_image_cache[0].save(folder / "a.png")
    _sample_image_cache[1].save(folder / "sub" / "b.png")
    _sample_image_cache[4].resize((176, 168)).save(folder / "large.png")  # MS-SSIM needs 161 px
    return folder


@pytest.fixture(scope="module")
def made(ladder, images, tmp_path_factory):
    root = tmp_path_factory.mktemp("html-report")
    (root / "ref.json").write_text(json.dumps(REFERENCE))
    return report(None, images, root / "out", classical=("jpeg", "webp"), qualities=QUALITIES, use_ray=False,
                  progress=None, models=[str(d) for d in ladder], references=[root / "ref.json"])


def test_rows_have_the_issue_columns_and_learned_rows_encode_on_the_fly(made):
    rows = pq.read_table(made.rows_parquet).to_pylist()
    assert {"id", "codec", "quality", "num_bytes", "bpp", "psnr_db", "ms_ssim", "encode_s", "decode_s"} <= set(rows[0])
    learned = [r for r in rows if r["kind"] == "learned"]
    assert {r["codec"] for r in learned} == {"scale-hyperprior-N16-M24"}  # one series named after the architecture
    assert sorted({r["quality"] for r in learned}) == list(LAMBDAS)
    assert len(learned) == 3 * len(LAMBDAS)
    assert all(r["encode_s"] > 0 and r["decode_s"] > 0 and r["bpp"] == r["num_bytes"] * 8 / (r["width"] * r["height"])
               for r in learned)


def test_sweeps_are_extended_towards_the_learned_bpp_range(made):
    rows = pq.read_table(made.rows_parquet).to_pylist()
    jpeg = sorted({r["quality"] for r in rows if r["codec"] == "jpeg"})
    assert jpeg[:1] < [30] and {30, 80} <= set(jpeg), "lower JPEG qualities were added for the low learned rates"
    assert made.coverage and all(note.startswith(("jpeg:", "webp:")) for note in made.coverage)


def test_bd_table_written_and_explains_missing_points(made):
    records = json.loads(made.bd_json.read_text())
    assert {(r["learned"], r["anchor"], r["metric"]) for r in records} == {
        ("scale-hyperprior-N16-M24", anchor, metric) for anchor in ("jpeg", "webp")
        for metric in ("mean_psnr_db", "mean_ms_ssim")}
    assert pq.read_table(made.bd_parquet).num_rows == len(records)
    for record in records:  # an untrained model's PSNR does not rise with rate: fewer than 4 frontier points
        if record["learned_points"] < 4:
            assert record["bd_rate_pct"] is None and "needs ≥ 4 rate points" in record["note"]
        else:  # four points, but an untrained model's MS-SSIM is far below any JPEG's: no common quality
            assert record["bd_rate_pct"] is not None or "no overlap in quality" in record["note"]
            assert record["bd_quality"] is not None
    markdown = made.markdown.read_text()
    assert "## BD-rate against the classical codecs" in markdown and "| scale-hyperprior-N16-M24 | jpeg |" in markdown
    assert "made-up reference: invented for this test" in markdown


def test_html_is_self_contained(made):
    page = made.html.read_text()
    assert made.html.name == "report.html" and page.startswith("<!DOCTYPE html>")
    sources = re.findall(r"""(?:src|href)=['"]([^'"]*)""", page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for source in sources:
        with Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1]))) as plot:
            assert plot.format == "PNG" and plot.width > 500
    for heading in ("BD-rate against the classical codecs", "Per-image outliers", "Means per codec and quality",
                    "Reference series"):
        assert heading in page
    assert "made-up reference" in page
    # Prose as a reader sees it: no raw Markdown marks, no internal column names in the BD table.
    text = re.sub(r"<[^>]+>", "", page)
    assert "`" not in text and "**" not in text and "<code>bjontegaard</code>" in page
    assert ">psnr_db<" not in page and ">PSNR<" in page and ">MS-SSIM<" in page


def test_outliers_compare_each_image_with_its_own_jpeg_curve():
    def row(image, kind, codec, bpp, psnr):
        return {"id": image, "kind": kind, "codec": codec, "quality": 1.0, "bpp": bpp, "psnr_db": psnr}

    rows = [row("x", "classical", "jpeg", 0.5, 30.0), row("x", "classical", "jpeg", 2.0, 40.0),
            row("y", "classical", "jpeg", 0.5, 20.0), row("y", "classical", "jpeg", 2.0, 24.0),
            row("x", "learned", "m", 1.0, 33.0), row("y", "learned", "m", 1.0, 25.0),
            row("z", "learned", "m", 1.0, 25.0)]  # no anchor curve for z: left out
    anchor, compared = outliers(rows)
    assert anchor == "jpeg" and [c["id"] for c in compared] == ["x", "y"]
    assert compared[0]["anchor_psnr_db"] == pytest.approx(35.0) and compared[0]["delta_db"] == pytest.approx(-2.0)
    assert compared[1]["delta_db"] == pytest.approx(3.0)


def test_reference_files_in_both_layouts(tmp_path):
    compressai = {"name": "bmshj2018-hyperprior", "description": "Inference (ans)",
                  "results": {"bpp": [0.1, 0.2], "psnr-rgb": [27.0, 29.0], "ms-ssim-rgb": [0.9, 0.94]}}
    (tmp_path / "a.json").write_text(json.dumps(compressai))
    (tmp_path / "b.json").write_text(json.dumps([REFERENCE, {**REFERENCE, "ms_ssim": None, "label": "psnr only"}]))
    (tmp_path / "bad.json").write_text(json.dumps({"label": "x", "bpp": [1, 2], "psnr_db": [30]}))
    [series] = load_reference(tmp_path / "a.json")
    assert series["label"] == "bmshj2018-hyperprior Inference (ans)" and series["psnr_db"] == [27.0, 29.0]
    assert [s["label"] for s in load_reference(tmp_path / "b.json")] == ["made-up reference", "psnr only"]
    with pytest.raises(ValueError, match="1 psnr_db values for 2 bpp"):
        load_reference(tmp_path / "bad.json")


def _near(pixels: np.ndarray, colour, tolerance: int = 12) -> int:
    return int(np.all(np.abs(pixels.astype(int) - colour) <= tolerance, axis=-1).sum())


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is not on PATH (Debian: apt-get install chromium) - the headless render check "
                           "of report.html is skipped")
def test_html_renders_in_headless_chromium_with_the_plots_visible(made, tmp_path):
    """Render report.html in a real browser and look for the plots' colours in the screenshot."""
    shot = tmp_path / "report.png"
    result = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={shot}", "--window-size=1200,2000", made.html.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[:2] == (2000, 1200)
    assert pixels.std() > 20, "the screenshot is blank"
    assert _near(pixels, CRIMSON) > 200, "no learned-series crimson: the RD plot is not visible"
    assert _near(pixels, TAB_BLUE) > 100, "no classical-codec blue: the RD plot is not visible"
    assert math.isfinite(float(pixels.mean()))
