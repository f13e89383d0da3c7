"""latentzip: learned image compression as a distributed data pipeline.

The public API lives in :mod:`latentzip.api`; the names are re-exported here lazily so that
``import latentzip`` stays cheap (no torch, ray or zarr until they are used).
"""

import warnings

__version__ = "0.1.0"

# CompressAI 1.2.8 decorates a helper with torch.jit.script at import, which torch 2.14 deprecates: one
# FutureWarning on every process (every Ray worker too) that says nothing about latentzip's use.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)

_API = {"load_codec", "open_archive", "list_codecs", "decode_array", "decode_image"}


def __getattr__(name):
    if name in _API:
        from latentzip import api

        return getattr(api, name)
    raise AttributeError(f"module 'latentzip' has no attribute {name!r}")


__all__ = sorted(_API | {"__version__"})
