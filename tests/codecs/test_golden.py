"""Golden bitstream: one bundled sample photo encoded with the shipped ``mean-scale-q2`` codec.

``tests/expected/`` holds the stream's bytes (``<name>.lzip``) and a JSON record (its sha256 and length, the
model id, and the sha256 of the decoded pixels). The test re-encodes the photo and must write the very same
bytes, and decoding the stored bytes must give the very same pixels: any change to the coding path, the
container, the integer prior or the image policy that alters a stream shows up here.

The analysis (``g_a``, ``h_a``) and synthesis (``g_s``) transforms run in float32, so these bytes and pixels
are specific to the CPU kind they were made on (x86-64, an AMD EPYC); the entropy parameters are exact
integers everywhere (docs/determinism.md). On another kind of CPU, or after a deliberate format change,
regenerate them, and only then, with an explicit flag::

    LATENTZIP_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/codecs/test_golden.py
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from importlib.resources import as_file, files
from pathlib import Path

import pytest

from latentzip.codecs.images import load_image
from latentzip.codecs.registry import load_codec

EXPECTED = Path(__file__).resolve().parent.parent / "expected"
MODEL = "mean-scale-q2"
SAMPLE = "darknet-dog.jpg"
NAME = f"{MODEL}-{Path(SAMPLE).stem}"
REGENERATE = os.environ.get("LATENTZIP_REGEN_GOLDEN") == "1"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def golden():
    codec = load_codec(MODEL)
    with as_file(files("latentzip.jobs") / "samples" / SAMPLE) as path:
        image = load_image(str(path))
    stream_path, record_path = EXPECTED / f"{NAME}.lzip", EXPECTED / f"{NAME}.json"
    if REGENERATE:
        data = codec.encode(image)
        EXPECTED.mkdir(exist_ok=True)
        stream_path.write_bytes(data)
        record = {"model": MODEL, "model_id": codec.model_id.hex(), "sample": SAMPLE, "size": list(image.size),
                  "stream_sha256": _sha256(data), "stream_bytes": len(data),
                  "decoded_pixels_sha256": _sha256(codec.decode(data).tobytes()), "machine": platform.machine()}
        record_path.write_text(json.dumps(record, indent=2) + "\n")
    return codec, image, stream_path.read_bytes(), json.loads(record_path.read_text())


def test_golden_files_agree_with_each_other(golden):
    codec, image, data, record = golden
    assert (record["model"], record["sample"], record["size"]) == (MODEL, SAMPLE, list(image.size))
    assert record["model_id"] == codec.model_id.hex()
    assert (len(data), _sha256(data)) == (record["stream_bytes"], record["stream_sha256"])


def test_encoding_the_sample_gives_the_golden_bytes(golden):
    codec, image, data, _ = golden
    assert codec.encode(image) == data, (
        "the stream of the golden sample changed; if on purpose (or on another CPU kind), regenerate with "
        "LATENTZIP_REGEN_GOLDEN=1")


def test_decoding_the_golden_bytes_gives_the_golden_pixels(golden):
    codec, image, data, record = golden
    decoded = codec.decode(data)
    assert decoded.size == image.size
    assert _sha256(decoded.tobytes()) == record["decoded_pixels_sha256"]
