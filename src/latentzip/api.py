"""The public Python API, importable from one place::

    from latentzip.api import decode_array, load_codec, open_archive

    codec = load_codec("runs/demo/codec")        # or "jpeg", quality=75; or a zoo name
    data = codec.encode(PIL.Image.open("a.png"))  # bytes (a latentzip bitstream for learned codecs)
    image = codec.decode(data)                    # PIL.Image, 8-bit RGB

    archive = open_archive("runs/demo/archive.zarr")
    archive.ids[:5]; archive.decode(archive.ids[0])
    pixels = decode_array(archive, archive.ids[0])  # numpy uint8 (height, width, 3); errors name the id

    vae, card = load_generative("digits-vae", "my script")  # a gaussian-vae: see latentzip.codecs.vae_generative
"""

from latentzip.codecs.registry import list_codecs, load_codec, load_generative
from latentzip.pipeline.decoding import decode_array, decode_image, open_archive

__all__ = ["decode_array", "decode_image", "list_codecs", "load_codec", "load_generative", "open_archive"]
