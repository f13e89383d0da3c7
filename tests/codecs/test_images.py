"""The image conversion policy of latentzip.codecs.images and its tensor helpers."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from latentzip.codecs.images import (
    UnsupportedImageError,
    load_image,
    pad_to_multiple,
    padded_size,
    to_pil,
    to_rgb8,
    to_tensor,
)

ORIENTATION = 0x0112


def _encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _assert_rgb8(image: Image.Image, size: tuple[int, int]):
    assert image.mode == "RGB"
    assert image.size == size


def _rgb_noise(width=23, height=17, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# -- modes ----------------------------------------------------------------------------------------------


def test_rgb_is_kept_pixel_for_pixel():
    image = _rgb_noise()
    out = to_rgb8(image)
    _assert_rgb8(out, image.size)
    assert np.array_equal(np.asarray(out), np.asarray(image))


def test_grey_l_becomes_rgb_with_equal_channels():
    grey = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    out = to_rgb8(Image.fromarray(grey))
    _assert_rgb8(out, (16, 16))
    array = np.asarray(out)
    for channel in range(3):
        assert np.array_equal(array[..., channel], grey)


def test_bilevel_1_becomes_black_and_white_rgb():
    image = Image.new("1", (4, 2), 0)
    image.putpixel((1, 0), 1)
    array = np.asarray(to_rgb8(image))
    assert array.shape == (2, 4, 3)
    assert array[0, 1].tolist() == [255, 255, 255]
    assert array[0, 0].tolist() == [0, 0, 0]


def test_rgba_transparent_pixels_flattened_onto_white():
    image = Image.new("RGBA", (4, 3), (200, 10, 30, 0))  # fully transparent: colour must not leak
    image.putpixel((0, 0), (200, 10, 30, 255))  # opaque: kept
    image.putpixel((1, 0), (255, 0, 0, 128))  # half transparent red over white
    out = to_rgb8(image)
    _assert_rgb8(out, (4, 3))
    assert out.getpixel((2, 2)) == (255, 255, 255)
    assert out.getpixel((0, 0)) == (200, 10, 30)
    r, g, b = out.getpixel((1, 0))
    assert r == 255 and abs(g - 127) <= 1 and abs(b - 127) <= 1


def test_la_and_pa_alpha_flattened_onto_white():
    la = Image.new("LA", (3, 3), (0, 0))
    la.putpixel((1, 1), (0, 255))
    out = to_rgb8(la)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 1)) == (0, 0, 0)
    pa = Image.new("PA", (2, 2), (0, 0))
    pa.putpalette([10, 20, 30] * 256)
    assert to_rgb8(pa).getpixel((0, 0)) == (255, 255, 255)


def test_premultiplied_modes_are_flattened_too():
    # RGBa and La are listed alongside RGBA/LA; La needs a detour through LA in Pillow.
    for mode in ("RGBa", "La"):
        out = to_rgb8(Image.new(mode, (2, 2)))
        _assert_rgb8(out, (2, 2))
        assert out.getpixel((0, 0)) == (255, 255, 255)


def _palette_image() -> Image.Image:
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 255, 255, 0, 0] + [0, 0, 0] * 254)  # 0 = blue, 1 = red
    image.putpixel((0, 0), 1)
    return image


def test_palette_without_transparency_expands_colours():
    out = to_rgb8(_palette_image())
    _assert_rgb8(out, (4, 4))
    assert out.getpixel((0, 0)) == (255, 0, 0)
    assert out.getpixel((3, 3)) == (0, 0, 255)


def test_palette_with_transparency_index_is_flattened_onto_white():
    image = _palette_image()
    image.info["transparency"] = 1  # red is the transparent index
    out = to_rgb8(image)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == (0, 0, 255)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_survives_a_file_round_trip(fmt):
    data = _encode(_palette_image(), fmt, transparency=1)
    assert Image.open(io.BytesIO(data)).mode == "P"
    out = load_image(data)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((3, 3)) == (0, 0, 255)


def test_palette_with_rgba_palette_is_flattened():
    image = Image.new("P", (2, 1), 0)
    image.putpalette([10, 20, 30, 0, 40, 50, 60, 255], "RGBA")
    image.putpixel((1, 0), 1)
    out = to_rgb8(image)
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (40, 50, 60)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I"])
def test_16bit_grey_scaled_to_8bit(mode):
    values = np.array([[0, 257, 65535, 128, 129, 32896]], dtype=np.uint16)
    if mode == "I":
        image = Image.fromarray(values.astype(np.int32))
    else:
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (values.shape[1], 1), values.astype(dtype).tobytes())
    assert image.mode == mode
    out = to_rgb8(image)
    _assert_rgb8(out, (6, 1))
    array = np.asarray(out)
    assert array[0, :, 0].tolist() == [0, 1, 255, 0, 1, 128]  # round(v / 257)
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])


def test_16bit_png_file_is_scaled():
    values = np.array([[0, 257, 65535, 65535 // 2]], dtype=np.uint16)
    data = _encode(Image.fromarray(values), "PNG")
    assert np.asarray(load_image(data))[0, :, 0].tolist() == [0, 1, 255, 127]


def test_32bit_integer_out_of_16bit_range_refused():
    for value in (-1, 70000):
        image = Image.fromarray(np.array([[0, value]], dtype=np.int32))
        assert image.mode == "I"
        with pytest.raises(UnsupportedImageError):
            to_rgb8(image)


def test_cmyk_converted():
    out = to_rgb8(Image.new("CMYK", (3, 2), (0, 255, 255, 0)))  # no cyan, full magenta + yellow = red
    _assert_rgb8(out, (3, 2))
    assert out.getpixel((0, 0)) == (255, 0, 0)


def test_cmyk_jpeg_file_converted():
    data = _encode(Image.new("CMYK", (16, 8), (0, 0, 0, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    out = load_image(data)
    _assert_rgb8(out, (16, 8))
    assert min(out.getpixel((4, 4))) >= 250  # no ink = white


@pytest.mark.parametrize("mode", ["YCbCr", "LAB", "HSV"])
def test_other_colour_spaces_converted(mode):
    out = to_rgb8(Image.new(mode, (5, 4)))
    _assert_rgb8(out, (5, 4))


@pytest.mark.parametrize("mode", ["F", "RGBX"])
def test_float_and_unlisted_modes_refused(mode):
    with pytest.raises(UnsupportedImageError, match="unsupported image mode"):
        to_rgb8(Image.new(mode, (4, 4)))


def test_float_tiff_file_refused():
    data = _encode(Image.new("F", (4, 4), 0.5), "TIFF")
    with pytest.raises(UnsupportedImageError):
        load_image(data)


# -- EXIF orientation ------------------------------------------------------------------------------------


def _oriented_jpeg(orientation: int, size=(40, 20)) -> bytes:
    image = Image.new("RGB", size, (0, 128, 0))
    image.paste((255, 0, 0), (0, 0, 10, 10))  # red block in the top-left corner
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return _encode(image, "JPEG", exif=exif, quality=95)


def test_exif_orientation_6_transposes_size_and_drops_tag():
    data = _oriented_jpeg(6)
    assert Image.open(io.BytesIO(data)).size == (40, 20)
    out = load_image(data)
    _assert_rgb8(out, (20, 40))
    assert out.getexif().get(ORIENTATION) is None
    # Orientation 6 = rotate 90 degrees clockwise to display: the top-left block ends up top-right.
    r, g, _ = out.getpixel((15, 4))
    assert r > 200 and g < 80
    r, g, _ = out.getpixel((4, 4))
    assert r < 80 and g > 90


def test_exif_orientation_1_keeps_size():
    out = load_image(_oriented_jpeg(1))
    assert out.size == (40, 20)


def test_to_rgb8_applies_orientation_of_an_opened_image():
    image = Image.open(io.BytesIO(_oriented_jpeg(8, size=(30, 12))))
    assert to_rgb8(image).size == (12, 30)


# -- unreadable input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00", b"garbage, not an image" * 10, b"\xff\xd8\xff" + b"\x00" * 20],
    ids=["empty", "one-zero", "garbage", "jpeg-magic-only"],
)
def test_garbage_bytes_refused(data):
    with pytest.raises(UnsupportedImageError):
        load_image(data)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_jpeg_refused(fraction):
    data = _encode(_rgb_noise(64, 48), "JPEG", quality=90)
    with pytest.raises(UnsupportedImageError):
        load_image(data[: int(len(data) * fraction)])


def _exif_jpeg() -> bytes:
    image = Image.new("RGB", (40, 20), (0, 128, 0))
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif[0x010F] = "maker"
    exif[0x0110] = "model"
    return _encode(image, "JPEG", exif=exif, quality=95)


def _readable_or_refused(data: bytes):
    """load_image's contract for any bytes: an RGB image, or UnsupportedImageError - nothing else."""
    try:
        out = load_image(data)
    except UnsupportedImageError:
        return
    assert out.mode == "RGB"


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about corrupt EXIF / TIFF tags
@pytest.mark.parametrize(("offset", "xor"), [(11, 0x10), (23, 0x01), (23, 0x10), (2, 0xFF)])
def test_damaged_exif_block_gives_only_the_policy_error(offset, xor):
    # Flips inside the EXIF TIFF block make Pillow raise TypeError / struct.error / SyntaxError while the
    # orientation is applied; load_image must turn those into UnsupportedImageError.
    data = bytearray(_exif_jpeg())
    data[data.index(b"MM\x00*") + offset] ^= xor
    _readable_or_refused(bytes(data))


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "TIFF", "JPEG2000", "AVIF"])
def test_damaged_files_give_only_the_policy_error(fmt):
    data = _encode(_rgb_noise(53, 37), fmt)
    step = max(1, len(data) // 80)
    for position in range(0, len(data), step):
        damaged = bytearray(data)
        damaged[position] ^= 0xFF
        _readable_or_refused(bytes(damaged))
    for cut in range(0, len(data), max(1, len(data) // 20)):
        _readable_or_refused(data[:cut])


def test_load_image_accepts_paths_and_buffers(tmp_path):
    image = _rgb_noise(9, 7)
    data = _encode(image, "PNG")
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for source in (data, bytearray(data), memoryview(data), str(path)):
        out = load_image(source)
        assert np.array_equal(np.asarray(out), np.asarray(image))
    with pytest.raises(UnsupportedImageError):
        load_image(str(tmp_path / "missing.png"))


def test_multi_frame_gif_uses_first_frame():
    frames = [Image.new("P", (4, 4), index) for index in range(3)]
    for frame in frames:
        frame.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * 759)
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buffer.getvalue()).getpixel((0, 0)) == (255, 0, 0)


# -- tensor helpers --------------------------------------------------------------------------------------


def test_to_tensor_and_to_pil_round_trip_exactly():
    image = _rgb_noise(31, 13)
    x = to_tensor(image)
    assert x.shape == (3, 13, 31) and x.dtype == torch.float32
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert np.array_equal(np.asarray(to_pil(x)), np.asarray(image))


def test_to_pil_clamps_and_rounds():
    x = torch.tensor([-0.5, 0.5 / 255, 1.6 / 255, 2.0]).reshape(1, 1, 4).expand(3, 1, 4)
    assert np.asarray(to_pil(x))[0, :, 0].tolist() == [0, 0, 2, 255]


def test_to_tensor_rejects_non_rgb():
    with pytest.raises(UnsupportedImageError):
        to_tensor(Image.new("L", (4, 4)))


def test_pad_to_multiple_replicates_edges():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded = pad_to_multiple(x, 4)
    assert padded.shape == (2, 3, 8, 8)
    assert torch.equal(padded[..., :5, :7], x)
    assert torch.equal(padded[..., 5:, :7], x[..., 4:5, :].expand(2, 3, 3, 7))
    assert torch.equal(padded[..., :5, 7], x[..., :, 6])
    assert pad_to_multiple(padded, 4) is padded


@pytest.mark.parametrize(("size", "expected"), [((64, 64), (64, 64)), ((70, 93), (128, 128)), ((1, 65), (64, 128))])
def test_padded_size(size, expected):
    assert padded_size(*size, 64) == expected
    assert pad_to_multiple(torch.zeros(1, 3, *size), 64).shape[-2:] == expected


def test_an_unrecognised_file_is_named_as_such_not_by_the_stream_object():
    from latentzip.codecs.images import UnsupportedImageError, load_image

    with pytest.raises(UnsupportedImageError) as caught:
        load_image(b"this is not a jpeg")
    assert str(caught.value) == "not a readable image: no image format recognised in its bytes"
    assert "BytesIO" not in str(caught.value)
