"""Classical codecs (latentzip.codecs.classical): standard files, one quality knob each."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.metrics import psnr_db

#: quality pairs (low, high) whose files must grow with quality
MONOTONE = {"jpeg": (20, 90), "jpeg444": (20, 90), "webp": (20, 90), "avif": (20, 90), "avif444": (20, 90),
            "jpegxl": (20, 90)}


@pytest.fixture(scope="module")
def photo(_sample_image_cache) -> Image.Image:
    """A 128x96 (width x height) photo crop."""
    image = _sample_image_cache[1]
    assert image.size == (128, 96)
    return image


def _signature_ok(name: str, data: bytes) -> bool:
    if name in ("jpeg", "jpeg444"):
        return data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9"
    if name == "webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP" and int.from_bytes(data[4:8], "little") == len(data) - 8
    if name == "jpeg2000":  # JP2 container signature box, or a raw J2K codestream
        return data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n" or data[:4] == b"\xff\x4f\xff\x51"
    if name in ("avif", "avif444"):
        return data[4:8] == b"ftyp" and data[8:12] in (b"avif", b"avis")
    if name == "jpegxl":  # bare codestream or ISO BMFF container
        return data[:2] == b"\xff\x0a" or data[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n"
    raise AssertionError(f"no signature known for {name}")


def test_the_documented_formats():
    assert list(FORMATS) == ["jpeg", "jpeg444", "webp", "jpeg2000", "avif", "avif444", "jpegxl"]
    for name, fmt in FORMATS.items():
        low, high = fmt.quality_range
        assert fmt.name == name
        assert low <= fmt.default_quality <= high
        assert fmt.sweep == tuple(sorted(fmt.sweep)) and all(low <= q <= high for q in fmt.sweep)


@pytest.mark.parametrize("name", list(FORMATS))
def test_round_trip_at_default_quality(name, photo):
    codec = ClassicalCodec(name)
    assert codec.kind == "classical" and codec.name == name
    assert codec.quality == FORMATS[name].default_quality
    data = codec.encode(photo)
    assert isinstance(data, bytes)
    assert _signature_ok(name, data), data[:16]
    assert len(data) < photo.width * photo.height * 3  # it compresses
    out = codec.decode(data)
    assert out.mode == "RGB" and out.size == (128, 96)
    psnr = psnr_db(photo, out)
    assert 20 < psnr < 80, psnr


@pytest.mark.parametrize("name", [n for n in FORMATS if n != "jpegxl"])
def test_files_open_with_pillow_as_their_format(name, photo):
    expected = {"jpeg": "JPEG", "jpeg444": "JPEG", "webp": "WEBP", "jpeg2000": "JPEG2000", "avif": "AVIF",
                "avif444": "AVIF"}[name]
    image = Image.open(io.BytesIO(ClassicalCodec(name).encode(photo)))
    assert image.format == expected
    assert image.size == photo.size


def test_jpeg_subsampling(photo):
    from PIL import JpegImagePlugin

    def subsampling(name):
        return JpegImagePlugin.get_sampling(Image.open(io.BytesIO(ClassicalCodec(name).encode(photo))))

    assert subsampling("jpeg") == 2  # 4:2:0
    assert subsampling("jpeg444") == 0  # 4:4:4


@pytest.mark.parametrize("name", list(MONOTONE))
def test_higher_quality_gives_more_bytes_and_less_error(name, photo):
    low, high = MONOTONE[name]
    small = ClassicalCodec(name, quality=low).encode(photo)
    large = ClassicalCodec(name, quality=high).encode(photo)
    assert len(large) > len(small)
    codec = ClassicalCodec(name)
    assert psnr_db(photo, codec.decode(large)) > psnr_db(photo, codec.decode(small))


def test_jpeg2000_higher_target_psnr_gives_more_bytes(photo):
    assert len(ClassicalCodec("jpeg2000", quality=45).encode(photo)) > len(ClassicalCodec("jpeg2000", quality=25).encode(photo))


@pytest.mark.parametrize("name", list(FORMATS))
def test_quality_out_of_range(name):
    low, high = FORMATS[name].quality_range
    for quality in (low - 1, high + 0.5):
        with pytest.raises(ValueError, match="quality"):
            ClassicalCodec(name, quality=quality)
    ClassicalCodec(name, quality=low)
    ClassicalCodec(name, quality=high)


def test_unknown_name():
    with pytest.raises(ValueError, match="jpeg"):
        ClassicalCodec("gif")


@pytest.mark.parametrize("name", ["jpeg", "webp", "jpegxl"])
def test_odd_sizes_and_non_rgb_inputs(name, sample_images):
    codec = ClassicalCodec(name, quality=FORMATS[name].quality_range[1])
    odd = sample_images[2]  # 93x70
    for image in (odd, odd.convert("L"), odd.convert("RGBA")):
        out = codec.decode(codec.encode(image))
        assert out.mode == "RGB" and out.size == (93, 70)
    grey = np.asarray(codec.decode(codec.encode(odd.convert("L")))).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 1]).max() <= 8  # grey stays (nearly) grey


def test_batch_methods_match_single_calls(photo, sample_images):
    codec = ClassicalCodec("webp", quality=50)
    streams = codec.encode_batch(sample_images)
    assert streams == [codec.encode(image) for image in sample_images]
    assert [image.size for image in codec.decode_batch(streams)] == [image.size for image in sample_images]


def test_jpeg2000_uses_the_colour_transform():
    """Coding R, G and B separately (Pillow's default, mct=0) costs far more rate at equal target PSNR than
    the YCbCr colour transform that JPEG 2000 encoders use for photos; ours must be the latter."""
    from latentzip.codecs.registry import load_codec
    from latentzip.jobs.demo import sample_folder

    image = Image.open(sorted(sample_folder().glob("*.jpg"))[0]).convert("RGB")
    ours = load_codec("jpeg2000", quality=32).encode(image)
    separate = io.BytesIO()
    image.save(separate, format="JPEG2000", quality_mode="dB", quality_layers=[32], irreversible=True, mct=0)
    assert len(ours) < 0.8 * len(separate.getvalue()), (len(ours), len(separate.getvalue()))
