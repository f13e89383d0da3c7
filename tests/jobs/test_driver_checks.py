"""Jobs check their arguments in the driver before any Ray cluster starts, and start none for work they can
do alone (jobs/encode.py, jobs/decode.py; pipeline/encoding.py, pipeline/decoding.py).

Each job runs in a fresh interpreter that reports, after ``main`` returns, whether ``ray`` was imported at
all, whether it was initialised, and any raylet or GCS process among its children: no Ray means none of
these.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import ArchiveWriter, Item, open_archive

PROBE = """
import json, sys
import psutil
from latentzip.jobs.{module} import main
code = main({argv!r})
ray = sys.modules.get("ray")
children = [p.name() for p in psutil.Process().children(recursive=True)]
print(json.dumps({{"code": code, "ray_imported": ray is not None,
                  "ray_initialized": bool(ray is not None and ray.is_initialized()),
                  "ray_processes": [n for n in children if "raylet" in n or "gcs_server" in n]}}))
"""


def run_job(module: str, argv: list[str]) -> tuple[dict, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    result = subprocess.run([sys.executable, "-c", PROBE.format(module=module, argv=[str(a) for a in argv])],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.stdout.strip(), result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), result.stderr


def assert_no_ray(probe: dict) -> None:
    assert not probe["ray_imported"] and not probe["ray_initialized"] and probe["ray_processes"] == []


@pytest.fixture
def photos(tmp_path, sample_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for index, image in enumerate(sample_images[:3]):
        image.save(folder / f"p{index}.png")
    return folder


def test_wrong_model_name_fails_without_ray(photos, tmp_path):
    probe, err = run_job("encode", [photos, "--model", "mean-scale-q9", "--archive", tmp_path / "a.zarr"])
    assert probe["code"] == 2
    assert "'mean-scale-q9' is not a codec" in err and "did you mean mean-scale-q" in err
    assert_no_ray(probe)
    assert not (tmp_path / "a.zarr").exists()


def test_missing_folder_fails_without_ray(tiny_codec_dir, tmp_path):
    probe, err = run_job("encode", [tmp_path / "nope", "--model", tiny_codec_dir, "--archive", tmp_path / "a.zarr"])
    assert probe["code"] == 2 and f"input {tmp_path / 'nope'} does not exist" in err
    assert_no_ray(probe)


def test_archive_of_another_model_fails_without_ray_naming_both_models(photos, tiny_codec_factory, tmp_path,
                                                                       sample_images):
    first, second = tiny_codec_factory(seed=0), tiny_codec_factory(seed=1)
    archive = tmp_path / "a.zarr"
    codec = load_codec(first)
    writer = ArchiveWriter.open_or_create(archive, codec.card, str(first))
    writer.append([Item("x.png", codec.encode(sample_images[0]), 64, 64, "by-hand")], unit="by-hand")
    del writer
    probe, err = run_job("encode", [photos, "--model", second, "--archive", archive])
    assert probe["code"] == 2
    assert f"was written by model '{first}', not by '{second}'" in err
    assert err.index(str(first)) < err.index(codec.card["model_id"])  # names first, ids second
    assert_no_ray(probe)


def test_archive_location_that_is_a_file_fails_without_ray(photos, tiny_codec_dir, tmp_path):
    (tmp_path / "file.zarr").write_text("not a folder")
    probe, err = run_job("encode", [photos, "--model", tiny_codec_dir, "--archive", tmp_path / "file.zarr"])
    assert probe["code"] == 2 and "exists and is not a folder" in err
    assert_no_ray(probe)


@pytest.fixture
def encoded(ray_local, photos, tiny_codec_dir, tmp_path):
    from latentzip.pipeline.encoding import encode

    archive = tmp_path / "encoded.zarr"
    summary = encode(photos, archive, str(tiny_codec_dir), batch_size=2, progress=None)
    assert summary.images == 3
    # This process keeps the writer's lock on the archive until it exits: the jobs below get a copy.
    copy = tmp_path / "copy.zarr"
    shutil.copytree(archive, copy)
    return copy


def test_rerun_with_nothing_to_do_and_a_few_ids_need_no_ray(encoded, photos, tiny_codec_dir, tmp_path):
    probe, _ = run_job("encode", [photos, "--model", tiny_codec_dir, "--archive", encoded])
    assert probe["code"] == 0
    assert_no_ray(probe)
    assert len(open_archive(encoded).jobs()) == 2  # the rerun was recorded, and wrote nothing

    out = tmp_path / "two"
    probe, err = run_job("decode", [encoded, "--id", "p0.png", "--id", "p2.png", "-o", out])
    assert probe["code"] == 0, err
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png.png", "p2.png.png"]
    assert_no_ray(probe)

    (tmp_path / "taken").write_text("a file where the output folder should go")
    probe, err = run_job("decode", [encoded, "--all", "-o", tmp_path / "taken"])
    assert probe["code"] == 2 and "is not a folder" in err
    assert_no_ray(probe)
