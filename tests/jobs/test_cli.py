"""Every `latentzip` subcommand's ``main([...])`` runs end to end on tiny inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from latentzip.jobs import cli, decode, demo, encode, ingest, report, train
from latentzip.pipeline.archive import open_archive


@pytest.fixture(scope="module")
def local_ray(ray_local):
    """The session's local Ray cluster (conftest.ray_local)."""
    return ray_local


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    for path in sorted(demo.sample_folder().glob("*.jpg"))[:3]:
        image = Image.open(path).convert("RGB").resize((96, 72))
        image.save(folder / path.name, quality=95)
    (folder / "broken.jpg").write_bytes(b"this is not a jpeg")
    return folder


@pytest.fixture(scope="module")
def encoded(local_ray, photos, tiny_codec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert ingest.main([str(photos), "--out", str(out / "shards"), "--images-per-shard", "2"]) == 0
    assert encode.main([str(out / "shards"), "--model", str(tiny_codec_dir),
                        "--archive", str(out / "a.zarr"), "--batch-size", "2"]) == 0
    return out


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli.main(["--help"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in cli.COMMANDS)
    assert cli.main(["nope"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_every_command_has_help():
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            cli.main([name, "--help"])
        assert exit_info.value.code == 0


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "latentzip.jobs.ingest", "--help"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "--images-per-shard" in result.stdout


def test_ingest_encode_decode_commands(encoded, photos, tmp_path, capsys):
    archive = open_archive(encoded / "a.zarr")
    assert sorted(archive.ids) == sorted(p.name for p in photos.glob("*.jpg") if p.name != "broken.jpg")
    target = tmp_path / "one.png"
    assert decode.main([str(encoded / "a.zarr"), "--id", archive.ids[0], "-o", str(target)]) == 0
    assert Image.open(target).size == (96, 72)
    assert decode.main([str(encoded / "a.zarr"), "--all", "-o", str(tmp_path / "all")]) == 0
    assert len(list((tmp_path / "all").glob("*.png"))) == len(archive.ids)
    capsys.readouterr()
    assert decode.main([str(encoded / "a.zarr"), "--id", "missing.jpg", "-o", str(tmp_path / "x.png")]) == 2
    assert "missing.jpg" in capsys.readouterr().err


def test_decode_several_ids_a_range_and_parquet(encoded, tmp_path, capsys):
    path = str(encoded / "a.zarr")
    archive = open_archive(path)
    first, second = archive.ids[:2]
    assert decode.main([path, "--id", first, "--id", second, "-o", str(tmp_path / "two")]) == 0
    assert sorted(p.name for p in (tmp_path / "two").glob("*.png")) == sorted([first + ".png", second + ".png"])
    assert decode.main([path, "--range", "1:", "-o", str(tmp_path / "range")]) == 0
    assert sorted(p.name for p in (tmp_path / "range").glob("*.png")) == sorted(i + ".png" for i in archive.ids[1:])
    assert decode.main([path, "--all", "--format", "parquet", "-o", str(tmp_path / "all.parquet")]) == 0
    from latentzip.pipeline.decoding import decode_array
    from latentzip.pipeline.decoding_job import read_parquet_images

    shard = read_parquet_images(tmp_path / "all.parquet")
    assert sorted(shard) == sorted(archive.ids)
    assert all(np.array_equal(pixels, decode_array(archive, item_id)) for item_id, pixels in shard.items())
    capsys.readouterr()
    assert decode.main([path, "--id", first, "--id", "missing.jpg", "-o", str(tmp_path / "x")]) == 2
    assert "missing.jpg" in capsys.readouterr().err
    assert decode.main([path, "--range", "a:b"]) == 2
    assert "START:STOP" in capsys.readouterr().err


def test_encode_refuses_classical_codec(encoded, capsys):
    assert encode.main([str(encoded / "shards"), "--model", "jpeg", "--archive", str(encoded / "b.zarr")]) == 2
    assert "learned codec" in capsys.readouterr().err


def test_report_command(encoded, tmp_path):
    out = tmp_path / "report"
    assert report.main([str(encoded / "a.zarr"), str(encoded / "shards"), "--out", str(out),
                        "--codecs", "jpeg,webp", "--qualities", "jpeg=30,80;webp=50"]) == 0
    assert (out / "report.md").is_file() and (out / "rd_psnr.png").is_file()


@pytest.mark.slow
def test_train_command(local_ray, photos, tmp_path):
    out = tmp_path / "train"
    assert train.main([str(photos), "--out", str(out), "--N", "8", "--M", "8", "--steps", "2",
                       "--batch-size", "1", "--patch-size", "64", "--workers", "1"]) == 0
    assert (out / "codec" / "codec.json").is_file()


@pytest.mark.slow
def test_demo_command(local_ray, photos, tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path / "demo"), "--images", str(photos), "--train", "--steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "archive:" in printed and "report:" in printed
    assert "train a small codec" in printed and str(tmp_path / "demo" / "demo-codec") in printed
    decoded = sorted((tmp_path / "demo" / "decoded").glob("*.png"))
    assert len(decoded) == 3
    assert all(np.asarray(Image.open(p)).shape == (72, 96, 3) for p in decoded)


def test_demo_completes_the_zoo_curve_and_says_where_it_stands(tmp_path):
    from latentzip.pipeline.report.bdrate import BDResult

    siblings = demo.zoo_siblings("mean-scale-q5")
    assert "mean-scale-q5" in siblings and {"mean-scale-q2", "mean-scale-q3"} <= set(siblings)
    assert demo.zoo_siblings(str(tmp_path)) == []  # a codec folder of its own: no siblings to add
    row = lambda anchor, rate, metric="mean_psnr_db": BDResult("zoo", anchor, metric, rate, 0.1, 4, 4, 1, 1, "")
    sentence = demo.standing([row("webp", -12.5), row("avif444", 34.1), row("jpeg", float("nan")),
                              row("avif", -99.0, "mean_ms_ssim")], 6)
    assert sentence.startswith("On these 6 images the learned codec (zoo) needs 12.5 % fewer bits than WebP, "
                               "34.1 % more bits than AVIF (speed 4, 4:4:4) at equal PSNR")
    assert "No BD-rate" in demo.standing([row("webp", float("nan"))], 6)
