"""`latentzip serve`: the Ray Serve application over real HTTP on 127.0.0.1 (one server for the module:
Serve's start-up is slow), and the shared batch decode path without Ray."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from urllib.parse import quote

import pytest

from latentzip.pipeline.archive import FORMAT_VERSION

TOKEN = "s3cret-token"
IDS = ("plain.png", "folder/sub/img.png", "ünïcødé/fîlé 1.png", "extra.jpg")
BROKEN = "broken.png"


def _build(path, codec_dir, images):
    from latentzip.codecs.registry import load_codec
    from latentzip.pipeline.archive import ArchiveWriter, Item

    codec = load_codec(str(codec_dir))
    writer = ArchiveWriter.open_or_create(path, codec.card, str(codec_dir))
    writer.start_job("test", {})
    streams = codec.encode_batch(images)
    items = [Item(i, s, im.height, im.width, "test") for i, s, im in zip(IDS, streams, images)]
    # Stored intact (its checksum matches) but not a stream: decoding it fails.
    items.append(Item(BROKEN, b"not a latentzip stream", 64, 64, "test"))
    writer.append(items, unit="u0")
    writer.finish_job({"images": len(items)})
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory, tiny_codec_dir, _sample_image_cache):
    images = [_sample_image_cache[0].copy() for _ in IDS]  # 64x64: one latent shape, so batches form
    images[1] = images[1].transpose(0)  # distinct pixels per id
    images[2] = images[2].rotate(90)
    images[3] = _sample_image_cache[4].resize((64, 64))
    return _build(tmp_path_factory.mktemp("serve") / "a.zarr", tiny_codec_dir, images)


@pytest.fixture(scope="module")
def server(ray_local, archive):
    from latentzip.pipeline.bench.serve import _free_port
    from latentzip.pipeline.serving import start_server, stop_server

    url = start_server(str(archive), port=_free_port(), max_batch_size=8, batch_wait_ms=50, token=TOKEN)
    yield url
    stop_server()


def get(url, token=TOKEN, headers=None):
    request = urllib.request.Request(url, headers={**({"Authorization": f"Bearer {token}"} if token else {}),
                                                   **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_batch_decode_isolates_a_bad_item_and_matches_decode_image(archive):
    from latentzip.pipeline.archive import open_archive
    from latentzip.pipeline.batch_decode import decode_pngs, read_items
    from latentzip.pipeline.decoding import DecodeError, decode_image, png_bytes

    reader = open_archive(archive)
    results = decode_pngs(reader, read_items(reader, [IDS[0], BROKEN, IDS[1]]))
    assert results[0] == png_bytes(decode_image(reader, IDS[0]))
    assert results[2] == png_bytes(decode_image(reader, IDS[1]))
    assert isinstance(results[1], DecodeError) and BROKEN in str(results[1])


def test_serve_refuses_bad_arguments_before_ray(tmp_path, archive, capsys):
    from latentzip.jobs import serve

    (tmp_path / "empty").write_text("\n")
    assert serve.main([str(archive), "--token-file", str(tmp_path / "empty")]) == 2
    assert "token" in capsys.readouterr().err
    assert serve.main([str(tmp_path / "missing.zarr")]) == 2


def test_images_are_the_png_bytes_of_decode_id(server, archive, tmp_path):
    from latentzip.jobs import decode

    for number, item_id in enumerate(IDS):
        target = tmp_path / f"{number}.png"
        assert decode.main([str(archive), "--id", item_id, "-o", str(target)]) == 0
        status, headers, body = get(f"{server}/images/{quote(item_id, safe='/')}")
        assert status == 200 and headers["content-type"] == "image/png"
        assert body == target.read_bytes(), item_id
        assert "immutable" in headers["cache-control"] and headers["etag"].startswith('"')
    status, _, body = get(f"{server}/images/{quote(IDS[1], safe='')}")  # '/' as %2F
    assert status == 200 and body == (tmp_path / "1.png").read_bytes()


def test_etag_answers_304_and_formats_reencode(server):
    url = f"{server}/images/{quote(IDS[0])}"
    status, headers, _ = get(url)
    status, again, body = get(url, headers={"If-None-Match": headers["etag"]})
    assert status == 304 and body == b"" and again["etag"] == headers["etag"]
    assert get(url, headers={"If-None-Match": '"other"'})[0] == 200
    status, webp, body = get(url + "?format=webp&quality=60")
    assert status == 200 and webp["content-type"] == "image/webp" and body[8:12] == b"WEBP"
    assert webp["etag"] != headers["etag"]
    status, jpeg, body = get(url + "?format=jpeg")
    assert status == 200 and jpeg["content-type"] == "image/jpeg" and body[:2] == b"\xff\xd8"


def test_errors_404_400_401_500(server):
    status, _, body = get(f"{server}/images/no/such%20id.png")
    assert status == 404 and json.loads(body)["id"] == "no/such id.png" and "no/such id.png" in json.loads(body)["error"]
    for query in ("format=gif", "format=webp&quality=0", "format=jpeg&quality=x", "quality=50", "size=3"):
        status, _, body = get(f"{server}/images/{quote(IDS[0])}?{query}")
        assert status == 400 and json.loads(body)["error"], query
    assert get(f"{server}/ids?limit=-1")[0] == 400
    assert get(f"{server}/ids?offset=abc")[0] == 400
    for token in (None, "wrong"):
        status, headers, body = get(f"{server}/images/{quote(IDS[0])}", token=token)
        assert status == 401 and "bearer" in headers["www-authenticate"].lower() and "token" in json.loads(body)["error"]
        assert get(f"{server}/info", token=token)[0] == 401
    assert get(f"{server}/healthz", token=None)[:1] == (200,)
    status, _, body = get(f"{server}/images/{BROKEN}")
    error = json.loads(body)
    assert status == 500 and error["id"] == BROKEN and "DecodeError" in error["error"] and BROKEN in error["error"]


def test_ids_and_info(server, archive):
    status, _, body = get(f"{server}/ids?offset=1&limit=2")
    listing = json.loads(body)
    assert status == 200 and listing["ids"] == list(IDS[1:3]) and listing["total"] == len(IDS) + 1
    info = json.loads(get(f"{server}/info")[2])
    assert info["count"] == len(IDS) + 1 and info["format_version"] == FORMAT_VERSION and info["model_id"]
    assert info["server"]["max_batch_size"] == 8


def test_concurrent_requests_are_batched(server):
    before = json.loads(get(f"{server}/stats")[2])["decoder"]
    answers = []

    def client(item_id):
        for _ in range(3):
            answers.append(get(f"{server}/images/{quote(item_id)}")[0])

    threads = [threading.Thread(target=client, args=(IDS[n % len(IDS)],)) for n in range(12)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert answers == [200] * 36
    after = json.loads(get(f"{server}/stats")[2])["decoder"]
    assert after["images"] - before["images"] == 36
    assert max(int(size) for size in after["batch_sizes"]) > 1, after["batch_sizes"]


def test_server_stops(server):
    from latentzip.pipeline.serving import stop_server

    stop_server()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{server}/healthz", timeout=10)


def test_app_builder_for_serve_deploy_configs(archive, tmp_path):
    from ray.serve import Application

    from latentzip.pipeline.serving import app_builder

    (tmp_path / "token").write_text(TOKEN + "\n")
    assert isinstance(app_builder({"archive": str(archive), "replicas": 2, "token_file": str(tmp_path / "token")}),
                      Application)
    with pytest.raises(ValueError, match="archive"):
        app_builder({"replicas": 2})
