"""Object storage: archives, image folders, ingest shards, training data, Ray Train checkpoints and
codecs on s3:// URLs.

Against moto's S3 server on 127.0.0.1 (started here, a real HTTP endpoint), through the real s3fs /
aiobotocore client path that zarr's FsspecStore and pipeline/storage.py use; only the endpoint comes from
the environment (AWS_ENDPOINT_URL), as it would for any S3-compatible store. Jobs whose Ray workers read the
bucket run as `latentzip` commands in a subprocess with that environment, as a user would run them: the
embedded Ray cluster they start passes it to its workers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch
from moto import server as moto_server
from PIL import Image

BUCKET = "latentzip-test"
AWS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """An s3fs filesystem on the local endpoint with an empty bucket; AWS_* set for this process."""
    import fsspec
    import s3fs

    for name, value in {**AWS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    fsspec.AbstractFileSystem.clear_instance_cache()
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    if fs.exists(BUCKET):
        fs.rm(BUCKET, recursive=True)
    fs.mkdir(BUCKET)
    fs.invalidate_cache()
    return fs


def test_encode_to_s3_and_decode_back(s3, ray_local, tiny_codec_dir, sample_images, tmp_path, capsys):
    from latentzip.jobs import decode, encode, verify
    from latentzip.pipeline.decoding import open_archive
    from latentzip.pipeline.shards import ingest

    photos = tmp_path / "photos"
    photos.mkdir()
    for index, image in enumerate(sample_images[:3]):
        image.save(photos / f"p{index}.png")
    ingest(photos, tmp_path / "shards", images_per_shard=2)
    url = f"s3://{BUCKET}/runs/photos.zarr"
    args = [str(tmp_path / "shards"), "--model", str(tiny_codec_dir), "--archive", url, "--batch-size", "2"]
    assert encode.main(args) == 0
    s3.invalidate_cache()
    assert s3.isfile(f"{BUCKET}/runs/photos.zarr/zarr.json")
    assert s3.ls(f"{BUCKET}/runs/photos.zarr/bitstreams")  # the bytes live in the bucket...
    assert not (tmp_path / "s3:").exists()  # ...and nowhere local

    assert encode.main(args) == 0  # a rerun finds the committed shards on S3 and skips them
    assert "already in the archive" in capsys.readouterr().out

    archive = open_archive(url)
    assert sorted(archive.ids) == ["p0.png", "p1.png", "p2.png"]
    assert verify.main([url]) == 0
    out = tmp_path / "p1.png"
    assert decode.main([url, "--id", "p1.png", "-o", str(out)]) == 0
    decoded = np.asarray(Image.open(out))
    assert decoded.shape == (sample_images[1].height, sample_images[1].width, 3)
    assert np.array_equal(decoded, np.asarray(archive.decode("p1.png")))


def test_file_urls_are_local_folders(tmp_path):
    from latentzip.pipeline.archive import ArchiveError, location, open_archive

    assert location(f"file://{tmp_path}/a.zarr") == tmp_path / "a.zarr"
    assert location("s3://bucket/a.zarr/") == "s3://bucket/a.zarr"
    with pytest.raises(ArchiveError, match="no zarr.json"):
        open_archive(f"file://{tmp_path}")


def _latentzip(args: list[str], endpoint: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``latentzip ARGS`` in a fresh process (its own embedded Ray) with the S3 endpoint's environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update({**AWS, "AWS_ENDPOINT_URL": endpoint})
    return subprocess.run([sys.executable, "-m", "latentzip.jobs.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def _upload_folder(s3, images, prefix: str) -> dict[str, Image.Image]:
    """Sample images as PNGs under ``prefix`` (one in a sub-folder), a hidden file and a broken one."""
    import io

    good = {}
    for index, image in enumerate(images):
        item_id = f"sub/p{index}.png" if index == 2 else f"p{index}.png"
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        s3.pipe(f"{BUCKET}/{prefix}/{item_id}", buffer.getvalue())
        good[item_id] = image
    s3.pipe(f"{BUCKET}/{prefix}/broken.jpg", b"not a jpeg")
    s3.pipe(f"{BUCKET}/{prefix}/.hidden/x.png", b"skipped")
    s3.invalidate_cache()
    return good


def test_storage_lists_remote_folders_like_local_ones(s3, sample_images, tmp_path):
    from latentzip.pipeline import storage

    good = _upload_folder(s3, sample_images[:3], "photos")
    for item_id in [*good, "broken.jpg"]:
        path = tmp_path / "photos" / item_id
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s3.cat(f"{BUCKET}/photos/{item_id}"))
    remote = storage.list_files(f"s3://{BUCKET}/photos/")
    assert remote == storage.list_files(tmp_path / "photos")  # same ids, same order: same units of work
    assert remote == ["broken.jpg", "p0.png", "p1.png", "sub/p2.png"]
    assert storage.join(f"s3://{BUCKET}/photos/", "sub/p2.png") == f"s3://{BUCKET}/photos/sub/p2.png"
    assert storage.read_bytes(f"s3://{BUCKET}/photos/p0.png") == (tmp_path / "photos/p0.png").read_bytes()
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"s3://{BUCKET}/photos/missing.png")


@pytest.mark.slow
def test_folder_and_shards_on_s3_encode_into_s3_archive(s3, s3_endpoint, tiny_codec_dir, sample_images, tmp_path):
    """An image folder on S3 -> archive on S3 (its workers read the bucket); ingest S3 -> S3 shards, and the
    shards -> a second archive; the stored streams are the codec's own for every image."""
    from latentzip.codecs.registry import load_codec
    from latentzip.pipeline.decoding import open_archive
    from latentzip.pipeline.encoding import list_units
    from latentzip.pipeline.shards import ingest, shard_paths

    good = _upload_folder(s3, sample_images[:3], "photos")
    folder, shards = f"s3://{BUCKET}/photos", f"s3://{BUCKET}/shards"
    units, kind = list_units(folder)
    assert kind == "file groups" and [u.files for u in units] == [("broken.jpg", "p0.png", "p1.png", "sub/p2.png")]

    result = _latentzip(["encode", folder, "--model", str(tiny_codec_dir), "--archive", f"s3://{BUCKET}/a.zarr"],
                        s3_endpoint, tmp_path)
    assert result.returncode == 3, result.stderr  # every good image encoded, the broken one recorded
    assert "1 failed" in result.stdout

    result = ingest(folder, shards, images_per_shard=2, progress=None)
    assert (result.images, result.errors) == (3, 1)
    s3.invalidate_cache()
    assert [str(p) for p in shard_paths(shards)] == [f"{shards}/shard-00000.parquet", f"{shards}/shard-00001.parquet"]
    assert s3.isfile(f"{BUCKET}/shards/ingest.json") and s3.isfile(f"{BUCKET}/shards/errors.parquet")
    result = _latentzip(["encode", shards, "--model", str(tiny_codec_dir), "--archive", f"s3://{BUCKET}/b.zarr"],
                        s3_endpoint, tmp_path)
    assert result.returncode == 0, result.stderr

    codec = load_codec(tiny_codec_dir)
    for name in ("a.zarr", "b.zarr"):
        archive = open_archive(f"s3://{BUCKET}/{name}")
        assert sorted(archive.ids) == sorted(good)
        for item_id, image in good.items():
            assert archive.item(item_id).data == codec.encode(image), (name, item_id)
    assert [f.id for f in open_archive(f"s3://{BUCKET}/a.zarr").errors()] == ["broken.jpg"]

    # The report reads the archive and the originals (ingest shards) on S3.
    from latentzip.pipeline.report.run import report

    import pyarrow.parquet as pq

    result = report([f"s3://{BUCKET}/b.zarr"], shards, tmp_path / "report", classical=("jpeg",),
                    qualities={"jpeg": [50]}, use_ray=False, progress=None, extend_sweeps=False)
    rows = pq.read_table(result.rows_parquet).to_pylist()
    learned = {r["id"]: r for r in rows if r["kind"] == "learned"}
    assert sorted(learned) == sorted(good)
    assert all(r["num_bytes"] == len(codec.encode(good[i])) for i, r in learned.items())

    # Scoring by bpp: Ray Data reads the shards from S3 (the fsspec filesystem handed to read_parquet).
    result = _latentzip(["score", shards, "--model", str(tiny_codec_dir), "--out", "scores"], s3_endpoint, tmp_path)
    assert result.returncode == 0, result.stderr
    scored = pq.read_table(tmp_path / "scores" / "rows.parquet").to_pylist()
    assert {r["id"]: r["num_bytes"] for r in scored} == {i: r["num_bytes"] for i, r in learned.items()}

    # Batch decode on Ray: its actors read the archive on S3.
    result = _latentzip(["decode", f"s3://{BUCKET}/b.zarr", "--all", "-o", "decoded"], s3_endpoint, tmp_path)
    assert result.returncode == 0, result.stderr
    archive = open_archive(f"s3://{BUCKET}/b.zarr")
    for item_id in good:
        decoded = tmp_path / "decoded" / f"{item_id}.png"
        assert np.array_equal(np.asarray(Image.open(decoded)), np.asarray(archive.decode(item_id))), item_id
    assert not list(tmp_path.glob("s3*")) and not (tmp_path / BUCKET).exists()  # nothing landed locally


@pytest.mark.slow
def test_training_data_and_checkpoints_on_s3(s3, s3_endpoint, sample_images, tmp_path):
    """`latentzip train s3://data --out s3://run`: workers read the images from S3, Ray Train writes its
    checkpoints to S3, and a rerun with more steps resumes from them; the codec loads from its URL."""
    from latentzip.codecs.registry import load_codec

    _upload_folder(s3, sample_images, "train")
    out = f"s3://{BUCKET}/runs/tiny"
    common = ["train", f"s3://{BUCKET}/train", "--out", out, "--arch", "scale-hyperprior", "--N", "16", "--M", "24",
              "--batch-size", "1", "--patch-size", "64", "--workers", "1", "--checkpoint-every", "2"]
    first = _latentzip([*common, "--steps", "2"], s3_endpoint, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "trained 2 steps (resumed from 0)" in first.stdout
    s3.invalidate_cache()
    checkpoints = s3.ls(f"{BUCKET}/runs/tiny/ray/train")
    assert any(p.endswith("checkpoint_00000002") for p in checkpoints), checkpoints
    assert s3.isfile(f"{BUCKET}/runs/tiny/ray/train/checkpoint_00000002/model.safetensors")

    second = _latentzip([*common, "--steps", "4"], s3_endpoint, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "trained 4 steps (resumed from 2)" in second.stdout  # restored from the checkpoint on S3
    s3.invalidate_cache()
    assert s3.isfile(f"{BUCKET}/runs/tiny/codec/codec.json")
    assert len(s3.cat(f"{BUCKET}/runs/tiny/metrics.jsonl").decode().splitlines()) >= 2

    codec = load_codec(f"{out}/codec")
    assert codec.card["card"]["steps"] == 4

    # --init-from a codec URL: workers read its weights from S3; its steps count as done.
    from latentzip.codecs.hyperprior import CodecConfig, build_model
    from latentzip.pipeline.training.checkpoints import initial_weights, initialise
    from latentzip.pipeline.training.config import TrainConfig

    init = initial_weights(f"{out}/codec/", TrainConfig(arch="scale-hyperprior", N=16, M=24, steps=8))
    assert init["weights"] == f"{out}/codec/model.safetensors" and init["step"] == 4
    module = build_model(CodecConfig("scale-hyperprior", 16, 24))
    assert initialise(module, init)["step"] == 4
    assert torch.equal(module.g_a[0].weight, codec.model.g_a[0].weight.cpu())
    decoded = codec.decode(codec.encode(sample_images[0]))
    assert decoded.size == sample_images[0].size
    assert not list(tmp_path.glob("s3*"))
