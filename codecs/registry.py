"""The one table of codec names. Everything that takes ``--codec``/``--model`` resolves names here.

A name is one of:

- a classical codec (``jpeg``, ``jpeg444``, ``webp``, ``jpeg2000``, ``avif``, ``jpegxl``), optionally with
  a quality: ``load_codec("webp", quality=60)``;
- a model in the bundled zoo (``codecs/zoo/<name>/``), e.g. ``load_codec("mean-scale-q3")``;
- a path to a codec directory written by training (``codec.json`` + ``model.safetensors``).
"""

from __future__ import annotations

from pathlib import Path

from latentzip.codecs.checkpoint import CONFIG_FILE
from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.learned import LearnedCodec

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
#: What the demo (and anything else that needs a learned codec and was given none) uses.
DEFAULT_ZOO_MODEL = "mean-scale-q5"


class UnknownCodecError(ValueError):
    """The name is neither a known codec, a zoo model, nor a codec directory."""


def zoo_models() -> dict[str, Path]:
    if not ZOO_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(ZOO_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}


def codec_directory(name_or_path: str | Path) -> Path:
    """The directory of a learned codec: a zoo model's by name, else ``name_or_path`` itself as a path."""
    return zoo_models().get(str(name_or_path), Path(name_or_path).expanduser())


def list_codecs() -> list[str]:
    return [*FORMATS, *zoo_models()]


def is_classical(name: str) -> bool:
    return name in FORMATS


def load_codec(name_or_path: str | Path, **options):
    """Return a codec with ``encode(PIL.Image) -> bytes`` and ``decode(bytes) -> PIL.Image``.

    Options: ``quality`` for classical codecs; ``device``, ``max_batch`` and ``entropy_params``
    (``"integer"``, the default, or ``"float"``) for learned ones.
    """
    name = str(name_or_path)
    if name in FORMATS:
        return ClassicalCodec(name, **options)
    zoo = zoo_models()
    if name in zoo:
        return LearnedCodec.from_path(zoo[name], name=name, **options)
    path = Path(name).expanduser()
    if (path / CONFIG_FILE).is_file():
        return LearnedCodec.from_path(path, **options)
    raise UnknownCodecError(
        f"{name!r} is not a codec: expected one of {', '.join(list_codecs())}, "
        f"or a directory containing {CONFIG_FILE}"
    )
