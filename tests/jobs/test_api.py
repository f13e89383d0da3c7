"""The public API: one import place, classical and learned codecs behind the same calls."""

from __future__ import annotations

import latentzip
from latentzip.api import list_codecs, load_codec, open_archive


def test_api_names_are_reexported_lazily():
    assert latentzip.load_codec is load_codec
    assert latentzip.open_archive is open_archive
    assert {"jpeg", "webp", "jpeg2000", "avif", "jpegxl"} <= set(list_codecs())


def test_learned_and_classical_codecs_answer_the_same_calls(tiny_codec_dir, sample_images):
    image = sample_images[2]
    for codec in (load_codec(tiny_codec_dir), load_codec("jpeg", quality=75), load_codec("webp")):
        data = codec.encode(image)
        assert isinstance(data, bytes) and data
        assert codec.decode(data).size == image.size
        assert codec.decode(data).mode == "RGB"


def test_open_archive_lists_ids_and_decodes(tiny_codec_dir, sample_images, tmp_path):
    from latentzip.pipeline.archive import ArchiveWriter, Item

    codec = load_codec(tiny_codec_dir)
    writer = ArchiveWriter.open_or_create(tmp_path / "a.zarr", codec.card, str(tiny_codec_dir))
    writer.append([Item(f"img{i}.png", codec.encode(im), im.height, im.width, "test")
                   for i, im in enumerate(sample_images)])
    archive = open_archive(tmp_path / "a.zarr")
    assert archive.ids == [f"img{i}" + ".png" for i in range(len(sample_images))]
    assert archive.decode("img1.png").size == sample_images[1].size
