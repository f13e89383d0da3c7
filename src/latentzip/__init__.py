"""latentzip: learned image compression as a distributed data pipeline.

The public API lives in :mod:`latentzip.api`; the names are re-exported here lazily so that
``import latentzip`` stays cheap (no torch, ray or zarr until they are used).
"""

__version__ = "0.1.0"

_API = {"load_codec", "open_archive", "list_codecs"}


def __getattr__(name):
    if name in _API:
        from latentzip import api

        return getattr(api, name)
    raise AttributeError(f"module 'latentzip' has no attribute {name!r}")


__all__ = sorted(_API | {"__version__"})
