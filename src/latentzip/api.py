"""The public Python API, importable from one place::

    from latentzip.api import load_codec, open_archive

    codec = load_codec("runs/demo/codec")        # or "jpeg", quality=75; or a zoo name
    data = codec.encode(PIL.Image.open("a.png"))  # bytes (a latentzip bitstream for learned codecs)
    image = codec.decode(data)                    # PIL.Image, 8-bit RGB

    archive = open_archive("runs/demo/archive.zarr")
    archive.ids[:5]; archive.decode(archive.ids[0])
"""

from latentzip.codecs.registry import list_codecs, load_codec
from latentzip.pipeline.archive import open_archive

__all__ = ["list_codecs", "load_codec", "open_archive"]
