"""Hostile input folders (issue 19): ingest, encode and train read only regular files of bounded size, links
only within the folder, and record everything else per file while the good images are written.

The hostile folder holds good images beside: a FIFO named ``pipe.png``, a link to ``/dev/zero``, a link to
an image outside the folder, a broken link, a name that is not UTF-8, a file above ``--max-file-bytes`` and
a PNG whose header claims 16000x12000 pixels (above the 178.9 M pixel limit; Pillow alone only warns
there). Ingest and the encode stage run on it in child processes with a time limit and a memory limit, so
that a reader that blocks on the FIFO or reads ``/dev/zero`` fails the test instead of hanging or
exhausting the machine.
"""

from __future__ import annotations

import io
import json
import os
import resource
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from latentzip.codecs.images import MAX_PIXELS, ImageTooLargeError, load_image

CHILD_SECONDS = 240
MEMORY_LIMIT = 6 * 2**30
MAX_FILE_BYTES = 200_000
BAD_NAME = b"bad-\xff\xfe.png"


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with one tiny IDAT (no real pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _png(size=(48, 40), colour=(200, 30, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = ("a.png", "sub/b.png", "inside-link.png")
#: id -> what its recorded reason must say.
REFUSED = {
    "pipe.png": "FIFO",
    "zero.png": "symbolic link to /dev/zero, outside the input folder",
    "outside.png": "outside the input folder",
    "dangling.png": "broken symbolic link",
    "bad-\\xff\\xfe.png": "not valid UTF-8",
    "big.png": f"above the limit of {MAX_FILE_BYTES} bytes",
    "huge.png": "above the limit of 178956970 pixels",
}


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    folder = root / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.png").write_bytes(_png())
    (folder / "sub" / "b.png").write_bytes(_png((64, 32), (10, 200, 10)))
    os.symlink("a.png", folder / "inside-link.png")
    os.mkfifo(folder / "pipe.png")
    os.symlink("/dev/zero", folder / "zero.png")
    (root / "elsewhere.png").write_bytes(_png((32, 32)))
    os.symlink(root / "elsewhere.png", folder / "outside.png")
    os.symlink("missing.png", folder / "dangling.png")
    with open(os.path.join(os.fsencode(folder), BAD_NAME), "wb") as handle:
        handle.write(_png((16, 16)))
    (folder / "big.png").write_bytes(_png((40, 40)) + b"\0" * MAX_FILE_BYTES)
    (folder / "huge.png").write_bytes(png_header_only(16000, 12000))
    return folder


def _limited():
    resource.setrlimit(resource.RLIMIT_DATA, (MEMORY_LIMIT, MEMORY_LIMIT))


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=CHILD_SECONDS,
                              preexec_fn=_limited, cwd=cwd)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{args[:3]} hung for {CHILD_SECONDS} s on the hostile folder")


# -- ingest ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ingested(hostile_folder):
    out = hostile_folder.parent / "shards"
    done = _run(["-m", "latentzip.jobs.ingest", str(hostile_folder), "--out", str(out),
                 "--max-file-bytes", str(MAX_FILE_BYTES)], hostile_folder.parent)
    errors = {}
    if (out / "errors.parquet").exists():
        for row in pq.read_table(out / "errors.parquet").to_pylist():
            errors[os.path.relpath(row["source"], hostile_folder)] = row["reason"]
    ids = [i for shard in sorted(out.glob("shard-*.parquet")) for i in pq.read_table(shard)["id"].to_pylist()]
    return done, errors, ids


def test_ingest_writes_the_good_images_beside_hostile_files(ingested):
    done, errors, ids = ingested
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(ids) == sorted(GOOD)
    assert sorted(errors) == sorted(REFUSED), errors


@pytest.mark.parametrize("item_id", sorted(REFUSED))
def test_ingest_records_each_hostile_file_with_its_reason(ingested, item_id):
    done, errors, _ = ingested
    assert done.returncode == 0, done.stderr[-3000:]
    assert REFUSED[item_id] in errors.get(item_id, ""), errors.get(item_id)


def test_ingest_follows_outside_links_when_asked(hostile_folder, tmp_path):
    from latentzip.pipeline.shards import ingest

    folder = tmp_path / "linked"
    folder.mkdir()
    os.symlink(hostile_folder.parent / "elsewhere.png", folder / "outside.png")
    result = ingest(folder, tmp_path / "out", follow_symlinks=True, progress=None)
    assert (result.images, result.errors) == (1, 0)
    result = ingest(folder, tmp_path / "out", progress=None)
    assert (result.images, result.errors) == (0, 1)


def test_ingest_out_under_a_regular_file_is_one_line_error(hostile_folder, tmp_path, capsys):
    from latentzip.jobs import ingest

    (tmp_path / "file").write_text("x")
    assert ingest.main([str(hostile_folder / "sub"), "--out", str(tmp_path / "file" / "shards")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("latentzip ingest: error: cannot create the output folder") and "Traceback" not in err


# -- the encode stage --------------------------------------------------------------------------------------

ENCODE_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    from latentzip.pipeline.encoding import list_units
    from latentzip.pipeline.encoding_stage import EncodeStage
    folder, model, max_bytes = sys.argv[1], sys.argv[2], int(sys.argv[3])
    [unit], kind = list_units(folder)
    stage = EncodeStage(model, max_file_bytes=max_bytes)
    batch = {"unit": np.array([unit.name]), "folder": np.array([unit.folder]),
             "files": np.array(["\\0".join(unit.files)]),
             "refused": np.array([json.dumps(dict((f, r) for f, r in zip(unit.files, unit.refused) if r))])}
    out = stage(batch)
    if not isinstance(out, dict):  # a stage that yields its rows a chunk at a time
        parts, out = list(out), {}
        for part in parts:
            for name, values in part.items():
                out.setdefault(name, []).extend(values)
    print(json.dumps({str(i): {"error": str(e), "bytes": len(d)} for i, e, d in zip(out["id"], out["error"], out["data"])}))
""")


@pytest.fixture(scope="module")
def encoded_rows(hostile_folder, tiny_codec_dir):
    done = _run(["-c", ENCODE_CHILD, str(hostile_folder), str(tiny_codec_dir), str(MAX_FILE_BYTES)],
                hostile_folder.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_encode_stage_encodes_the_good_images_beside_hostile_files(encoded_rows):
    assert sorted(encoded_rows) == sorted([*GOOD, *REFUSED])
    for item_id in GOOD:
        assert encoded_rows[item_id]["error"] == "" and encoded_rows[item_id]["bytes"] > 0, encoded_rows[item_id]


@pytest.mark.parametrize("item_id", sorted(REFUSED))
def test_encode_stage_records_each_hostile_file_with_its_reason(encoded_rows, item_id):
    row = encoded_rows[item_id]
    assert row["bytes"] == 0 and REFUSED[item_id] in row["error"], row


def test_encode_folder_with_a_name_that_is_not_utf8_writes_the_others(ray_local, tiny_codec_dir, tmp_path):
    from latentzip.pipeline.archive import open_archive
    from latentzip.pipeline.encoding import encode

    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png())
    with open(os.path.join(os.fsencode(folder), BAD_NAME), "wb") as handle:
        handle.write(_png((16, 16)))
    summary = encode(folder, tmp_path / "a.zarr", str(tiny_codec_dir), progress=None)
    assert (summary.images, summary.failures) == (1, 1)
    archive = open_archive(tmp_path / "a.zarr")
    assert archive.ids == ["a.png"]


# -- images ------------------------------------------------------------------------------------------------

def test_image_above_the_pixel_limit_is_refused_from_its_header():
    assert 16000 * 12000 > MAX_PIXELS  # but below 2 * MAX_PIXELS, where Pillow itself only warns
    with pytest.raises(ImageTooLargeError, match=r"16000x12000 = 192000000 pixels, above the limit of 178956970"):
        load_image(png_header_only(16000, 12000))


def test_image_at_the_pixel_limit_is_not_refused_for_its_size():
    # 13000 x 13000 = 169 M pixels: not too large, so it fails only as the truncated file it is.
    with pytest.raises(Exception) as caught:
        load_image(png_header_only(13000, 13000))
    assert not isinstance(caught.value, ImageTooLargeError)


# -- training ----------------------------------------------------------------------------------------------

def _train(argv, capsys):
    from latentzip.jobs import train

    code = train.main(argv)
    err = capsys.readouterr().err
    return code, err


def test_train_out_under_a_regular_file_is_one_line_error(hostile_folder, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    code, err = _train([str(hostile_folder / "sub"), "--out", str(tmp_path / "file" / "run"), "--steps", "1"], capsys)
    assert code == 2 and err.startswith("latentzip train: error: cannot write the training output"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_out_on_a_read_only_location_is_one_line_error(hostile_folder, capsys):
    location = Path("/sys/latentzip-test-run")
    try:
        location.mkdir()
    except OSError:
        pass
    else:
        location.rmdir()
        pytest.skip("/sys is writable here: no read-only location to try")
    code, err = _train([str(hostile_folder / "sub"), "--out", str(location), "--steps", "1"], capsys)
    assert code == 2 and err.startswith("latentzip train: error: cannot write the training output"), err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_train_on_data_of_only_unreadable_files_is_one_line_error(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.png").write_text("not an image")
    (data / "half.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    (data / "huge.png").write_bytes(png_header_only(16000, 12000))
    os.symlink(tmp_path / "missing.png", data / "dangling.png")
    code, err = _train([str(data), "--out", str(tmp_path / "run"), "--steps", "1"], capsys)
    assert code == 2 and "latentzip train: error: none of the 3 images in" in err, err
    assert "Traceback" not in err


def test_train_data_discovery_skips_what_is_not_a_regular_file_inside_the_folder(hostile_folder):
    from latentzip.pipeline.training.data import resolve_data

    source = resolve_data(hostile_folder)
    names = sorted(os.path.relpath(path, hostile_folder) for path in source.paths)
    # The FIFO, the links to /dev/zero, out of the folder and to nothing, and the name that is not UTF-8
    # are skipped; the link inside the folder is read as its target; big.png and huge.png are regular
    # files (refused when read, per image).
    assert names == ["a.png", "a.png", "big.png", "huge.png", "sub/b.png"], names


def test_train_data_discovery_follows_outside_links_when_asked(hostile_folder):
    from latentzip.pipeline.training.data import resolve_data

    source = resolve_data(hostile_folder, follow_symlinks=True)
    names = sorted(os.path.relpath(path, hostile_folder.parent) for path in source.paths)
    # /dev/zero is still skipped: a link may be followed, a device is never read.
    assert names == ["elsewhere.png", "photos/a.png", "photos/a.png", "photos/big.png", "photos/huge.png",
                     "photos/sub/b.png"], names
