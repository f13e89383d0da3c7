"""Hostile archives (issue 19, archive half): each damage found by hand is a named test, then a fuzz test.

A small real archive (the tiny codec, four photos of 33-64 px coded by CompressAI, two segments and a
failed row, a real Zarr v3 store) is copied and edited the way a hostile user would: rows swapped or
duplicated with plain zarr, attributes and ``zarr.json`` files edited, shard files flipped, truncated or
deleted, ids no file can be named after, a remote ``model_ref``. Whatever the damage, ``verify`` reports
it without crashing, and no decode returns a wrong image: each id decodes to its original pixels, or
fails with a specific error naming it.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from latentzip.codecs.bitstream import BitstreamError
from latentzip.codecs.registry import load_codec
from latentzip.jobs import decode as decode_job
from latentzip.jobs import verify as verify_job
from latentzip.pipeline import archive as archive_module
from latentzip.pipeline.archive import (ArchiveError, ArchiveWriter, Failure, Item, ItemCorruptError,
                                        ItemNotFoundError, RemoteModelRefusedError, open_archive)
from latentzip.pipeline.decoding import DecodeError, ModelUnavailableError, decode_array, output_path
from latentzip.pipeline.decoding_job import decode_archive
from latentzip.pipeline.decoding import open_archive as open_decodable
from latentzip.pipeline.decoding import verify_with_model

#: The archive's ids (two segments) and the crops of the sample photos they hold (width, height).
CROPS = {"a.png": (0, 48, 40), "sub/b.jpg": (1, 64, 48), "sub/c.png": (2, 33, 37), "d.png": (4, 64, 64)}
FIRST_SEGMENT = ["a.png", "sub/b.jpg"]


@pytest.fixture(scope="module")
def codec(tiny_codec_dir):
    return load_codec(tiny_codec_dir)


@pytest.fixture(scope="module")
def streams(codec, _sample_image_cache) -> dict[str, tuple[bytes, int, int]]:
    """id -> (bitstream, height, width) of each crop, coded once for the module."""
    out = {}
    for item_id, (which, width, height) in CROPS.items():
        image = _sample_image_cache[which].crop((0, 0, width, height))
        out[item_id] = (codec.encode(image), height, width)
    return out


@pytest.fixture(scope="module")
def expected(codec, streams) -> dict[str, np.ndarray]:
    """id -> the pixels its stream decodes to (what every decode of the id must return, or fail)."""
    return {item_id: np.asarray(codec.decode(data)) for item_id, (data, _, _) in streams.items()}


def write_archive(path: Path, codec, codec_dir, streams: dict, extra: dict | None = None, version: int = 4) -> Path:
    """An archive of ``streams`` in two segments (with one failed row), plus ``extra`` id -> stream."""
    writer = ArchiveWriter.open_or_create(path, codec.card, str(codec_dir), version=version)
    items = [Item(item_id, data, height, width, "folder") for item_id, (data, height, width) in streams.items()]
    first = [item for item in items if item.id in FIRST_SEGMENT]
    writer.append(first, [Failure("bad.jpg", "not a readable image", "folder")], unit="folder#0")
    writer.append([item for item in items if item.id not in FIRST_SEGMENT], unit="folder#1")
    if extra:
        writer.append([Item(item_id, data, height, width, "odd") for item_id, (data, height, width) in extra.items()])
    writer.update_index()
    return path


@pytest.fixture(scope="module")
def template(tmp_path_factory, codec, tiny_codec_dir, streams) -> Path:
    return write_archive(tmp_path_factory.mktemp("hostile") / "template.zarr", codec, tiny_codec_dir, streams)


@pytest.fixture
def archive(template, tmp_path) -> Path:
    """A fresh copy of the template archive for one test to damage."""
    return Path(shutil.copytree(template, tmp_path / "archive.zarr"))


def edit_meta(path: Path, edit) -> None:
    """Edit the group attributes in the group's zarr.json, as a hand edit would."""
    document = json.loads((path / "zarr.json").read_text())
    edit(document["attributes"]["latentzip"])
    (path / "zarr.json").write_text(json.dumps(document))


def run_verify(path, *args, capsys) -> tuple[int, str]:
    code = verify_job.main([str(path), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def run_decode_all(path, out: Path, capsys, *args) -> tuple[int, str]:
    code = decode_job.main([str(path), "--all", "-o", str(out), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def written_pngs(out: Path) -> dict[str, np.ndarray]:
    pngs = {}
    for path in sorted(out.rglob("*")):
        if path.is_file():
            assert path.name.endswith(".png") and not path.name.startswith("."), path
            with Image.open(path) as image:
                pngs[path.relative_to(out).as_posix()[: -len(".png")]] = np.asarray(image.convert("RGB"))
    return pngs


def assert_no_wrong_image(out: Path, expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    pngs = written_pngs(out) if out.exists() else {}
    for item_id, pixels in pngs.items():
        assert item_id in expected and np.array_equal(pixels, expected[item_id]), f"{item_id}: wrong image written"
    return pngs


def items_group(path: Path):
    return zarr.open_group(str(path), mode="r+")


COLUMNS = {name: i for i, name in enumerate(archive_module.ITEM_COLUMNS)}
DATA_COLUMNS = [COLUMNS[c] for c in ("offset", "length", "height", "width", "checksum", "mode")]


# -- ids bound to their bytes ---------------------------------------------------------------------------

def test_new_archives_are_format_4_and_bitstreams_are_unchanged(archive, streams):
    meta = json.loads((archive / "zarr.json").read_text())["attributes"]["latentzip"]
    assert meta["format_version"] == 4
    reader = open_archive(archive)
    for item_id, (data, height, width) in streams.items():
        item = reader.item(item_id)
        assert item.data == data and (item.height, item.width) == (height, width)  # byte for byte
        start, end = reader.byte_range(item_id)
        assert zarr.open_group(str(archive), mode="r")["bitstreams"][start:end].tobytes() == data


def test_swapped_rows_are_detected_by_verify_and_decode(archive, capsys, expected, tmp_path):
    """The bytes of two rows exchanged (offset, length, size, checksum): main said OK and decoded A as B."""
    group = items_group(archive)
    rows = group["items"][:2]
    swapped = rows.copy()
    swapped[np.ix_([0, 1], DATA_COLUMNS)] = rows[np.ix_([1, 0], DATA_COLUMNS)]
    group["items"][:2] = swapped
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "a.png: id and bytes fail their CRC-32C" in printed and "sub/b.jpg: id and bytes" in printed
    for item_id in FIRST_SEGMENT:
        with pytest.raises(ItemCorruptError, match=repr(item_id)):
            decode_array(archive, item_id)
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3 and "2 failed" in printed
    assert sorted(assert_no_wrong_image(tmp_path / "out", expected)) == ["d.png", "sub/c.png"]


def test_whole_rows_swapped_are_detected(archive, capsys, expected, tmp_path):
    group = items_group(archive)
    table = group["items"][:2]
    group["items"][:2] = table[[1, 0]]
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "not in the index" in printed
    code, _ = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3
    assert_no_wrong_image(tmp_path / "out", expected)


def test_duplicated_id_never_decodes_to_the_other_image(archive, capsys, expected, tmp_path):
    """Row 1 renamed to row 0's id (id bytes, key and index entry): main decoded a.png as sub/b.jpg's image."""
    group = items_group(archive)
    rows = group["items"][:2]
    # "sub/b.jpg" and "a.png" differ in length: give row 1 the id bytes of "a.png" in place.
    start = int(rows[1, COLUMNS["id_offset"]])
    group["ids"][start : start + 5] = np.frombuffer(b"a.png", np.uint8)
    rows[1, COLUMNS["id_length"]] = 5
    rows[1, COLUMNS["key"]] = rows[0, COLUMNS["key"]]
    group["items"][:2] = rows
    index = group[group.attrs["latentzip"]["index"]["array"]]
    table = index[:]
    table[table[:, 0] == int(rows[0, COLUMNS["key"]]), 1] = 1  # the index sends a.png to the renamed row
    index[:] = table
    with pytest.raises(ItemCorruptError, match="'a.png'"):
        decode_array(archive, "a.png")
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "duplicate id" in printed
    code, _ = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3
    pngs = assert_no_wrong_image(tmp_path / "out", expected)
    assert "a.png" not in pngs


def test_changed_capacity_is_a_finding_not_silent_loss(archive, capsys, expected, tmp_path):
    edit_meta(archive, lambda meta: meta["index"].update(capacity=meta["index"]["capacity"] // 2))
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "index.capacity" in printed
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3 and f"{len(expected)} failed" in printed
    assert_no_wrong_image(tmp_path / "out", expected)


def test_stale_index_entry_is_a_finding(archive, capsys):
    group = items_group(archive)
    index = group[group.attrs["latentzip"]["index"]["array"]]
    table = index[:]
    row = int(np.flatnonzero(table[:, 0] != 0)[0])
    table[row, 1] = 999  # an entry pointing at a row that holds nothing
    index[:] = table
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "names no encoded item" in printed and "not in the index" in printed


# -- verify never crashes ---------------------------------------------------------------------------------

def shard_files(path: Path, array: str) -> list[Path]:
    return sorted(p for p in (path / array / "c").rglob("*") if p.is_file())


@pytest.mark.parametrize("array", ["segments", "index", "items", "ids", "bitstreams"])
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_shard_file_is_a_finding(archive, capsys, expected, tmp_path, array, damage):
    if array == "index":
        array = json.loads((archive / "zarr.json").read_text())["attributes"]["latentzip"]["index"]["array"]
    target = shard_files(archive, array)[0]
    raw = bytearray(target.read_bytes())
    if damage == "flip":
        raw[len(raw) // 3] ^= 0x20
    else:
        raw = raw[: len(raw) // 2]
    target.write_bytes(bytes(raw))
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "PROBLEMS" in printed and "Traceback" not in printed
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3 and "failed" in printed
    assert_no_wrong_image(tmp_path / "out", expected)


@pytest.mark.parametrize("array", ["bitstreams", "ids", "items", "segments", "reasons", "index"])
def test_deleted_array_metadata_is_a_finding(archive, capsys, expected, tmp_path, array):
    if array == "index":
        array = json.loads((archive / "zarr.json").read_text())["attributes"]["latentzip"]["index"]["array"]
    (archive / array / "zarr.json").unlink()
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "PROBLEMS" in printed
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    pngs = assert_no_wrong_image(tmp_path / "out", expected)
    if array == "reasons":  # only failed rows have reasons: every image still decodes
        assert code == 0 and sorted(pngs) == sorted(expected)
    else:
        assert code == 3 and "failed" in printed


def test_missing_index_array_is_a_finding(archive, capsys, expected, tmp_path):
    edit_meta(archive, lambda meta: meta["index"].update(array="index_99"))
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "index_99" in printed
    with pytest.raises(ItemCorruptError, match="'a.png'"):
        decode_array(archive, "a.png")
    code, _ = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3


@pytest.mark.parametrize("sources", [[], "out-of-range"])
def test_sources_emptied_or_out_of_range(archive, capsys, expected, tmp_path, sources):
    if sources == []:
        edit_meta(archive, lambda meta: meta.update(num_sources=0))
    else:
        group = items_group(archive)
        rows = group["items"][:2]
        rows[0, COLUMNS["source"]] = 99
        group["items"][:2] = rows
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "source" in printed
    with pytest.raises(ItemCorruptError, match="'a.png'.*source"):
        decode_array(archive, "a.png")
    code, _ = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3
    assert_no_wrong_image(tmp_path / "out", expected)


def test_attributes_claiming_more_segments_than_exist(archive, capsys):
    edit_meta(archive, lambda meta: meta.update(segments=meta["segments"] + 2))
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "segments" in printed


def test_huge_length_gives_a_specific_error_not_an_allocation(archive, capsys, tmp_path):
    group = items_group(archive)
    rows = group["items"][:2]
    rows[0, COLUMNS["length"]] = 1 << 40
    group["items"][:2] = rows
    started = time.perf_counter()
    with pytest.raises(ItemCorruptError, match="'a.png'.*outside"):
        open_archive(archive).item("a.png")
    assert time.perf_counter() - started < 5
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1 and "a.png" in printed
    code, _ = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3


@pytest.mark.parametrize("array", ["items", "segments"])
def test_deleted_table_shard_is_not_decoded_0_images(archive, capsys, tmp_path, array):
    for path in shard_files(archive, array):
        path.unlink()
    code, printed = run_verify(archive, capsys=capsys)
    assert code == 1
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 3 and "failed" in printed


# -- ids that cannot name a file ------------------------------------------------------------------------

ODD_IDS = {"x" * 300: "too long", "../../x": "'..'", "/abs/x.jpg": "absolute", "": "empty",
           "x//y.jpg": "empty, '.' or '..' part", "x/./y.jpg": "empty, '.' or '..' part"}


def test_ids_that_cannot_name_a_file_are_recorded_and_the_rest_decoded(tmp_path, codec, tiny_codec_dir, streams,
                                                                        expected, capsys):
    data, height, width = streams["a.png"]
    odd = {item_id: (data, height, width) for item_id in [*ODD_IDS, "x/y.jpg"]}
    path = write_archive(tmp_path / "odd.zarr", codec, tiny_codec_dir, streams, extra=odd)
    want = {**expected, **{item_id: expected["a.png"] for item_id in odd}}
    out = tmp_path / "deep" / "out"
    code, printed = run_decode_all(path, out, capsys)
    assert code == 3 and f"decoded {len(expected) + 1} images" in printed and f"{len(ODD_IDS)} failed" in printed
    for item_id, why in ODD_IDS.items():
        assert repr(item_id)[1:-1] in printed or item_id == "", item_id
        assert why in printed
    pngs = assert_no_wrong_image(out, want)
    assert sorted(pngs) == sorted([*expected, "x/y.jpg"])
    # Nothing outside the output folder.
    everything = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()
                        and "odd.zarr" not in p.parts)
    assert all(name.startswith("deep/out/") for name in everything), everything
    code, printed = run_verify(path, capsys=capsys)
    assert code == 0, printed  # odd names are legal ids: only their file names are refused
    # Each odd id still decodes on its own, to its own pixels.
    for item_id in ODD_IDS:
        assert np.array_equal(decode_array(path, item_id), expected["a.png"])
    # Into Parquet (no file names), every id is decoded.
    summary = decode_archive(path, tmp_path / "all.parquet", format="parquet", progress=None)
    assert summary.failures == {} and summary.images == len(want)


def test_id_that_is_not_utf8_is_recorded_and_the_rest_decoded(tmp_path, codec, tiny_codec_dir, streams,
                                                               expected, capsys):
    """An id whose stored bytes are not UTF-8 (edited in place, its key and checksum made to match, so the
    archive is otherwise sound): main stopped `decode --all` for every id."""
    import google_crc32c

    data, height, width = streams["a.png"]
    path = write_archive(tmp_path / "odd.zarr", codec, tiny_codec_dir, streams, extra={"bad_.jpg": (data, height, width)})
    group = items_group(path)
    version = group.attrs["latentzip"]["format_version"]
    rows = group["items"][:]
    [row] = [r for r in range(len(rows)) if rows[r, COLUMNS["id_length"]] == 8 and rows[r, COLUMNS["status"]] == 0]
    start = int(rows[row, COLUMNS["id_offset"]])
    raw = b"bad\xff.jpg"
    group["ids"][start : start + 8] = np.frombuffer(raw, np.uint8)
    key = int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)
    crc = google_crc32c.value(data) if version < 3 else google_crc32c.value(len(raw).to_bytes(8, "little") + raw + data)
    rows[row, COLUMNS["key"]], rows[row, COLUMNS["checksum"]] = key, crc
    group["items"][:] = rows
    index = group[group.attrs["latentzip"]["index"]["array"]]
    table = index[:]
    table[table[:, 1] == row] = 0
    index[:] = table
    edit_meta(path, lambda meta: meta["index"].update(segments=0, entries=meta["index"]["entries"] - 1))  # re-index

    out = tmp_path / "out"
    code, printed = run_decode_all(path, out, capsys)
    assert code == 3 and f"decoded {len(expected)} images" in printed and "1 failed" in printed
    assert "UTF-8" in printed
    assert sorted(assert_no_wrong_image(out, expected)) == sorted(expected)
    assert np.array_equal(decode_array(path, "bad\udcff.jpg"), expected["a.png"])  # decodes on its own
    summary = decode_archive(path, tmp_path / "all.parquet", format="parquet", progress=None)
    assert list(summary.failures) == ["bad\udcff.jpg"] and summary.images == len(expected)
    assert decode_job.main([str(path), "--list"]) == 0 and "'bad\\udcff.jpg'" in capsys.readouterr().out


def test_output_names_are_unique_per_id():
    out = Path("/out")
    assert output_path(out, "x/y.jpg") == out / "x" / "y.jpg.png"
    for item_id in [*ODD_IDS, "bad\udcff.jpg"]:
        with pytest.raises(ValueError, match="cannot name a PNG file"):
            output_path(out, item_id)


# -- no archive attribute reaches the network ---------------------------------------------------------------

class _Recorder(http.server.BaseHTTPRequestHandler):
    served: Path | None = None
    requests: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        name = self.path.rsplit("/", 1)[-1]
        if self.served is not None and (self.served / name).is_file():
            body = (self.served / name).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_error(404)

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder(tiny_codec_dir):
    _Recorder.requests, _Recorder.served = [], Path(tiny_codec_dir)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.requests
    server.shutdown()
    server.server_close()


def test_remote_model_ref_is_never_fetched_unless_asked(archive, recorder, capsys, tiny_codec_dir, expected,
                                                         tmp_path):
    url, requests = recorder
    edit_meta(archive, lambda meta: meta.update(model_ref=f"{url}/codec"))
    assert decode_job.main([str(archive), "--id", "a.png", "-o", str(tmp_path / "a.png")]) == 2
    assert "remote model" in capsys.readouterr().err
    code, printed = run_decode_all(archive, tmp_path / "out", capsys)
    assert code == 2 and "remote model" in printed
    for args in ([], ["--decode-sample", "4"]):
        code, printed = run_verify(archive, *args, capsys=capsys)
        assert code == 1 and "remote" in printed
    with pytest.raises(DecodeError, match="remote model"):
        decode_array(archive, "a.png")
    with pytest.raises(ModelUnavailableError) as raised:
        open_decodable(archive).decode("a.png")
    assert isinstance(raised.value.__cause__, RemoteModelRefusedError)
    assert requests == [], "an archive attribute made latentzip contact a server"

    # Asked for: --model (a local copy, or the URL itself), or an allow-list prefix.
    code, _ = run_decode_all(archive, tmp_path / "local", capsys, "--model", str(tiny_codec_dir))
    assert code == 0 and sorted(written_pngs(tmp_path / "local")) == sorted(expected)
    assert requests == []
    code, _ = run_decode_all(archive, tmp_path / "allowed", capsys, "--allow-model-url", url)
    assert code == 0 and requests
    assert_no_wrong_image(tmp_path / "allowed", expected)
    assert run_verify(archive, "--allow-model-url", url, capsys=capsys)[0] == 0
    # A prefix that only looks like the URL's is not the URL's.
    assert decode_job.main([str(archive), "--id", "a.png", "-o", str(tmp_path / "b.png"),
                            "--allow-model-url", url + "0"]) == 2


# -- format 2 archives ------------------------------------------------------------------------------------

def test_format_2_archive_opens_appends_and_verifies(tmp_path, codec, tiny_codec_dir, streams, expected,
                                                     monkeypatch, capsys):
    path = tmp_path / "v2.zarr"
    first = dict(list(streams.items())[:2])
    write_archive(path, codec, tiny_codec_dir, first, version=2)
    assert open_archive(path).version == 2
    # Appended to by this release: it stays format 2, its checksums cover the bytes only.
    writer = ArchiveWriter.open_or_create(path, codec.card, str(tiny_codec_dir))
    rest = [Item(i, d, h, w, "later") for i, (d, h, w) in list(streams.items())[2:]]
    assert writer.append(rest) == 2
    writer.update_index()
    reader = open_archive(path)
    assert reader.version == 2 and len(reader) == 4
    for item_id in streams:
        assert np.array_equal(decode_array(reader, item_id), expected[item_id])
    code, printed = run_verify(path, capsys=capsys)
    assert code == 0 and "format 2" in printed and "not its id" in printed


# -- the fuzz test ------------------------------------------------------------------------------------------

SEED = 20261202
CASES = int(os.environ.get("LATENTZIP_ARCHIVE_FUZZ_CASES", "320"))  # fewer for a quick local run
CASE_SECONDS = 60  # a hang bound, generous for a loaded 2-core machine (a case takes well under a second)
SPECIFIC = (ArchiveError, ItemNotFoundError, DecodeError, BitstreamError)


class _Hang(Exception):
    pass


def _on_alarm(signum, frame):
    raise _Hang()


def _files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def _json_edit(rng: random.Random, value):
    """A random replacement for a JSON value (or the marker to delete it)."""
    if isinstance(value, bool) or value is None:
        return rng.choice([not value, 0, "x", None])
    if isinstance(value, int):
        return rng.choice([value + 1, value - 1, 0, -1, 2 * value + 1, 1 << 40, -(1 << 62), "7", 1.5, None])
    if isinstance(value, str):
        return rng.choice(["", value + "x", value[:-1], "http://127.0.0.1:9/codec", "index_99", 3, None])
    if isinstance(value, list):
        return rng.choice([[], value[:-1], value + value[-1:], value[::-1], "x", None])
    return rng.choice([{}, "x", None, []])


def _edit_json(rng: random.Random, document: dict, root: list) -> None:
    """Change (or delete) one value somewhere under ``root`` of a JSON document."""
    node = document
    for key in root:
        node = node[key]
    while isinstance(node, dict) and node and rng.random() < 0.6:
        key = rng.choice(sorted(node))
        if not isinstance(node[key], (dict, list)) or rng.random() < 0.3:
            break
        node = node[key] if isinstance(node[key], dict) else node
        if not isinstance(node, dict):
            break
    if isinstance(node, list):
        if node:
            at = rng.randrange(len(node))
            node[at] = _json_edit(rng, node[at])
        return
    if not node:
        return
    key = rng.choice(sorted(node))
    if rng.random() < 0.1:
        del node[key]
    else:
        node[key] = _json_edit(rng, node[key])


def _mutate(rng: random.Random, path: Path) -> str:
    """Damage the archive at ``path`` in one random way; returns what was done."""
    kind = rng.choice(["flip", "flip", "truncate", "delete", "swap-files", "group-json", "group-json", "array-json",
                       "swap-rows", "swap-columns", "item-cell", "item-cell", "segment-cell", "index-cell", "ids-bytes",
                       "bitstream-bytes"])
    files = _files(path)
    if kind in ("flip", "truncate", "delete", "swap-files"):
        target = rng.choice(files)
        raw = bytearray(target.read_bytes())
        if kind == "flip" and raw:
            for _ in range(rng.choice([1, 1, 2, 8])):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(raw))
        elif kind == "truncate":
            target.write_bytes(bytes(raw[: rng.randrange(len(raw) + 1)]))
        elif kind == "delete":
            target.unlink()
        elif kind == "swap-files":
            other = rng.choice(files)
            other_raw = other.read_bytes()
            other.write_bytes(bytes(raw))
            target.write_bytes(other_raw)
            return f"{kind} {target.relative_to(path)} {other.relative_to(path)}"
        return f"{kind} {target.relative_to(path)}"
    if kind in ("group-json", "array-json"):
        target = path / "zarr.json" if kind == "group-json" else rng.choice([f for f in files if f.name == "zarr.json"])
        document = json.loads(target.read_text())
        _edit_json(rng, document, ["attributes", "latentzip"] if kind == "group-json" else [])
        target.write_text(json.dumps(document))
        return f"{kind} {target.relative_to(path)}"
    group = zarr.open_group(str(path), mode="r+")
    meta = group.attrs["latentzip"]
    if kind in ("swap-rows", "swap-columns", "item-cell"):
        items = group["items"]
        rows = [int(r) for seg in group["segments"][: meta["segments"]] for r in range(seg[0], seg[0] + seg[1])]
        table = items[: max(rows) + 1]
        a, b = rng.choice(rows), rng.choice(rows)
        if kind == "swap-rows":
            table[[a, b]] = table[[b, a]]
        elif kind == "swap-columns":
            columns = rng.sample(range(table.shape[1]), rng.randint(1, 4))
            table[np.ix_([a, b], columns)] = table[np.ix_([b, a], columns)]
        else:
            column = rng.randrange(table.shape[1])
            table[a, column] = rng.choice([table[a, column] + 1, table[a, column] - 1, 0, -1, 1 << 40,
                                           table[b, column], -(1 << 62)])
        items[: len(table)] = table
        return f"{kind} rows {a} {b}"
    if kind == "segment-cell":
        segments = group["segments"]
        table = segments[: meta["segments"]]
        row, column = rng.randrange(len(table)), rng.randrange(table.shape[1])
        table[row, column] = rng.choice([table[row, column] + 1, table[row, column] - 1, 0, -1, 1 << 40])
        segments[: len(table)] = table
        return f"{kind} {row} {column}"
    if kind == "index-cell":
        index = group[meta["index"]["array"]]
        table = index[:]
        full = np.flatnonzero(table[:, 0] != 0)
        slot = int(rng.choice(full))
        change = rng.choice(["zero", "row", "key", "move"])
        if change == "zero":
            table[slot] = 0
        elif change == "row":
            table[slot, 1] = rng.choice([table[slot, 1] + 1, -1, 1 << 40, 0])
        elif change == "key":
            table[slot, 0] ^= 1 << rng.randrange(63)
        else:
            table[rng.randrange(len(table))] = table[slot]
            table[slot] = 0
        index[:] = table
        return f"{kind} {change}"
    name = "ids" if kind == "ids-bytes" else "bitstreams"
    array = group[name]
    ends = [int(seg[3 if name == "ids" else 5]) + int(seg[2 if name == "ids" else 4])
            for seg in group["segments"][: meta["segments"]]]
    starts = [int(seg[2 if name == "ids" else 4]) for seg in group["segments"][: meta["segments"]]]
    which = rng.randrange(len(starts))
    at = rng.randrange(starts[which], max(starts[which] + 1, ends[which]))
    array[at] = int(array[at]) ^ (1 << rng.randrange(8))
    return f"{kind} {at}"


_DECODED: dict[bytes, Image.Image] = {}


def _memoised(decode):
    def memoised(data: bytes):
        if data not in _DECODED:
            _DECODED[data] = decode(data)
        return _DECODED[data].copy()

    return memoised


def _check_case(path: Path, streams: dict, expected: dict, out: Path) -> tuple[bool, bool, int, list[str]]:
    """(verify clean, every id exact, wrong images, crashes) for one damaged archive.

    Each id is looked up on its own (``item``: index, row and id checks, the checksum) and must return its
    original bytes or a specific error; then ``decode_archive`` decodes every listed id with the archive's
    own model and each PNG it writes must hold its id's original pixels. Every lookup, check and model
    load is real; the model's decoder, deterministic, is memoised per distinct bitstream across cases
    (``_DECODED``) so 300 cases fit the suite's time: a stream is entropy-decoded for real the first time
    it reaches the decoder."""
    crashes, wrong, exact = [], 0, True
    try:
        reader = open_decodable(path)
    except ArchiveError:
        reader = None
    except Exception as exc:  # noqa: BLE001 - what the fuzz test looks for
        return False, False, 0, [f"open: {exc!r}"]
    try:
        # The same object as the decodes below: its model is loaded (and its id checked) once per case.
        clean = verify_with_model(path if reader is None else reader).ok
    except ArchiveError:
        clean = False  # `latentzip verify` exits 2: not an archive it can read
    except Exception as exc:  # noqa: BLE001
        crashes.append(f"verify: {exc!r}")
        clean = False
    if reader is None:
        return clean, False, 0, crashes
    try:
        codec = reader.codec()  # the model the (damaged) attributes name, loaded by verify
    except Exception:  # noqa: BLE001 - decode_archive below meets the same failure and must report it
        pass
    else:
        codec.decode = _memoised(codec.decode)
    for item_id, (data, height, width) in streams.items():
        try:
            item = reader.item(item_id)
        except SPECIFIC:
            exact = False
            continue
        except Exception as exc:  # noqa: BLE001
            crashes.append(f"item {item_id}: {exc!r}")
            exact = False
            continue
        if item.data != data:
            wrong += 1  # a lookup returned other bytes as this id's
        exact = exact and (item.data, item.height, item.width) == (data, height, width)
    try:
        summary = decode_archive(reader, out, progress=None, use_ray=False)
        exact = exact and not summary.failures and summary.images == len(expected)
    except SPECIFIC + (ValueError,):
        exact = False
    except Exception as exc:  # noqa: BLE001
        crashes.append(f"decode --all: {exc!r}")
        exact = False
    pngs = written_pngs(out) if out.exists() else {}
    wrong += sum(1 for i, p in pngs.items() if i not in expected or not np.array_equal(p, expected[i]))
    exact = exact and sorted(pngs) == sorted(expected)
    return clean, exact, wrong, crashes


@pytest.mark.slow
def test_fuzzed_archives_never_pass_a_wrong_image(template, streams, expected, tmp_path):
    rng = random.Random(SEED)
    counts = {"clean and exact": 0, "found": 0, "missed": 0, "crashes": 0, "wrong images": 0}
    missed, crashed, slowest = [], [], 0.0
    previous, threads = signal.signal(signal.SIGALRM, _on_alarm), torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend with each other on a loaded machine
    try:
        for case in range(CASES):
            path = Path(shutil.copytree(template, tmp_path / f"case-{case}.zarr"))
            what = _mutate(rng, path)
            started = time.perf_counter()
            signal.alarm(CASE_SECONDS)
            try:
                clean, exact, wrong, crashes = _check_case(path, streams, expected, tmp_path / f"out-{case}")
            except _Hang:
                clean, exact, wrong, crashes = False, False, 0, [f"no answer within {CASE_SECONDS} s"]
            finally:
                signal.alarm(0)
            slowest = max(slowest, time.perf_counter() - started)
            counts["wrong images"] += wrong
            if crashes:
                counts["crashes"] += 1
                crashed.append((what, crashes[:2]))
            elif clean and exact:
                counts["clean and exact"] += 1
            elif clean:
                counts["missed"] += 1
                missed.append(what)
            else:
                counts["found"] += 1
            shutil.rmtree(path)
            shutil.rmtree(tmp_path / f"out-{case}", ignore_errors=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)
    print(f"\narchive fuzz: {CASES} mutations: {counts['clean and exact']} verify clean and all images exact / "
          f"{counts['found']} verify found it / {counts['missed']} verify missed it while an image changed / "
          f"{counts['crashes']} crashes; {counts['wrong images']} wrong images; slowest case {slowest:.2f} s")
    for what, crashes in crashed + [(what, ["missed"]) for what in missed]:
        print(f"  {what}: {'; '.join(c[:300] for c in crashes)}")
    assert not crashed, crashed[:5]
    assert not missed, missed[:5]
    assert counts["wrong images"] == 0
    assert counts["found"] >= CASES // 2  # the mutations do damage: most of them must be found
