"""Archives on object storage: `latentzip encode` writes to s3://, `latentzip decode` reads it back.

Against moto's S3 server on 127.0.0.1 (started here, a real HTTP endpoint), through the real s3fs /
aiobotocore client path zarr's FsspecStore uses; only the endpoint comes from the environment
(AWS_ENDPOINT_URL), as it would for any S3-compatible store.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
from moto import server as moto_server
from PIL import Image

BUCKET = "latentzip-test"


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

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3_endpoint}.items():
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
    from latentzip.pipeline.archive import open_archive
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
