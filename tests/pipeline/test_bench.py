"""``latentzip bench rd`` (latentzip.jobs.bench, latentzip.pipeline.bench.rd) on the tiny codec."""

from __future__ import annotations

import json

import pytest

from latentzip.jobs import bench, cli
from latentzip.pipeline.bench.rd import compare


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, _sample_image_cache):
    folder = tmp_path_factory.mktemp("bench-images")
    for i, image in enumerate(_sample_image_cache[1:4]):
        image.save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_rd_writes_json(tiny_codec_dir, tiny_codec_factory, image_folder, tmp_path, capsys):
    out = tmp_path / "rd.json"
    other = tiny_codec_factory(seed=1)
    assert bench.main(["rd", str(tiny_codec_dir), str(other), "--images", str(image_folder), "--out", str(out),
                       "--against", "none"]) == 0
    printed = capsys.readouterr().out
    assert "| model | mode |" in printed and str(out) in printed
    document = json.loads(out.read_text())
    assert document["benchmark"] == "rd"
    assert sorted(document["images"]) == ["img0.png", "img1.png", "img2.png"]
    results = document["results"]
    assert [(r["model"], r["mode"]) for r in results] == [
        (tiny_codec_dir.name, "integer"), (tiny_codec_dir.name, "float"), (other.name, "integer"), (other.name, "float")]
    for r in results:
        assert r["images"] == 3 and r["num_bytes"] == sum(p["num_bytes"] for p in r["per_image"])
        assert r["bpp"] > 0 and r["psnr_db"] > 5 and r["encode_s"] > 0 and r["decode_s"] > 0
        assert all("identical_strings" in p for p in r["per_image"])
    assert results[0]["model_id"] != results[1]["model_id"]
    comparison = document["comparison"]
    assert comparison["bd_rate_pct"] is None and "need 4" in comparison["bd_error"]
    assert [m["model"] for m in comparison["per_model"]] == [tiny_codec_dir.name, other.name]
    for m in comparison["per_model"]:
        assert abs(m["rate_diff_pct"]) < 50 and abs(m["psnr_diff_db"]) < 1


def test_rd_writes_markdown(tiny_codec_dir, image_folder, tmp_path):
    out = tmp_path / "sub" / "rd.md"
    assert cli.main(["bench", "rd", str(tiny_codec_dir), "--images", str(image_folder), "--out", str(out),
                     "--max-side", "64", "--against", "none"]) == 0
    text = out.read_text()
    assert "| integer |" in text and "| float |" in text and "Δbpp" in text


def test_rd_rejects_bad_arguments(tiny_codec_dir, image_folder, tmp_path, capsys):
    assert bench.main(["rd", str(tiny_codec_dir), "--images", str(image_folder), "--out", str(tmp_path / "rd.txt")]) == 2
    assert bench.main(["rd", str(tiny_codec_dir), "--images", str(tmp_path / "none"), "--out", str(tmp_path / "rd.md")])
    assert bench.main(["rd", str(tiny_codec_dir), "--images", str(image_folder), "--out", str(tmp_path / "rd.md"),
                       "--against", "jpeg,bmp"]) == 2 == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main([])


def test_bd_deltas_with_four_rate_points():
    from latentzip.pipeline.bench.rd import ModeResult

    results = []
    for i, (bpp, psnr) in enumerate([(0.2, 28.0), (0.4, 31.0), (0.8, 34.0), (1.6, 37.0)]):
        for mode, factor in (("integer", 1.01), ("float", 1.0)):
            results.append(ModeResult(f"q{i}", "scale-hyperprior", mode, "00", 0.01, 1, 1, bpp * factor, psnr,
                                      1.0, 1.0))
    comparison = compare(results)
    assert comparison["points"] == 4
    assert comparison["bd_rate_pct"] == pytest.approx(1.0, abs=0.05)
    assert comparison["bd_psnr_db"] < 0


def test_bd_deltas_leave_out_models_below_the_curve():
    from latentzip.pipeline.bench.rd import ModeResult

    points = [(0.2, 28.0), (0.4, 31.0), (0.5, 30.0), (0.8, 34.0), (1.6, 37.0)]  # q2: more bits, less PSNR
    results = [ModeResult(f"q{i}", "scale-hyperprior", mode, "00", 0.01, 1, 1, bpp * factor, psnr, 1.0, 1.0)
               for i, (bpp, psnr) in enumerate(points) for mode, factor in (("integer", 1.02), ("float", 1.0))]
    comparison = compare(results)
    assert comparison["bd_dropped"] == ["q2"] and comparison["bd_models"] == ["q0", "q1", "q3", "q4"]
    assert comparison["bd_rate_pct"] == pytest.approx(2.0, abs=0.1)
    comparison = compare([r for r in results if r.model != "q4"])
    assert comparison["bd_rate_pct"] is None and "q2" in comparison["bd_error"]


@pytest.mark.slow
def test_rd_against_classical_codecs_writes_the_bd_table(ray_local, tiny_codec_factory, image_folder, tmp_path):
    out = tmp_path / "rd.md"
    models = [str(tiny_codec_factory(seed=s)) for s in (0, 1)]
    assert bench.main(["rd", *models, "--images", str(image_folder), "--out", str(out), "--against", "jpeg",
                       "--repeats", "1"]) == 0
    text = out.read_text()
    assert "# Learned vs classical codecs" in text and "| jpeg |" in text and "# Integer vs float" in text
    report_dir = tmp_path / "rd-report"
    assert (report_dir / "report.html").is_file() and (report_dir / "bd.json").is_file()


@pytest.mark.slow
def test_rd_with_refinement_adds_refined_series(ray_local, image_folder, tmp_path):
    import torch

    from latentzip.codecs.checkpoint import export_codec
    from latentzip.codecs.hyperprior import CodecConfig, build_model

    models = []
    for seed, lmbda in ((0, 0.005), (1, 0.02)):
        torch.manual_seed(seed)
        model = build_model(CodecConfig(arch="mean-scale-hyperprior", N=16, M=24))
        with torch.no_grad():
            model.g_a[-1].weight.mul_(20.0)
        export_codec(model, tmp_path / f"m{seed}", card={"training": {"lmbda": lmbda}})
        models.append(str(tmp_path / f"m{seed}"))
    out = tmp_path / "rd.json"
    assert bench.main(["rd", *models, "--images", str(image_folder), "--out", str(out), "--against", "jpeg",
                       "--repeats", "1", "--refine-steps", "0,3"]) == 0
    refinement = json.loads(out.read_text())["classical"]["refinement"]
    assert [(r["series"].endswith("+refine3"), r["refine_steps"]) for r in refinement] == [(False, 0), (True, 3)]
    assert all(r["encode_s_per_mp"] > 0 for r in refinement)
    rows = json.loads((tmp_path / "rd-report" / "bd.json").read_text())
    assert {r["learned"] for r in rows} == {r["series"] for r in refinement}  # both series against JPEG
