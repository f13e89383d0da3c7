"""The one table of codec names. Everything that takes ``--codec``/``--model`` resolves names here.

A name is one of:

- a classical codec (``jpeg``, ``jpeg444``, ``webp``, ``jpeg2000``, ``avif``, ``jpegxl``), optionally with
  a quality: ``load_codec("webp", quality=60)``;
- a model in the bundled zoo (``codecs/zoo/<name>/``), e.g. ``load_codec("mean-scale-q3")``;
- a path to a codec directory written by training (``codec.json`` + ``model.safetensors``), or an fsspec
  URL of one (``s3://bucket/runs/q3/codec``: both files are fetched to a temporary folder, then loaded;
  the model id inside the card is verified against the weights as for any codec directory).
"""

from __future__ import annotations

import atexit
import difflib
import shutil
import tempfile
from pathlib import Path

from latentzip.codecs.card import CONFIG_FILE, WEIGHTS_FILE

# The codec classes (torch, Pillow, CompressAI) are imported when a codec is loaded, so that resolving and
# checking names (``latentzip zoo``, a job's argument checks) costs no imports.

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
#: What the demo (and anything else that needs a learned codec and was given none) uses.
DEFAULT_ZOO_MODEL = "mean-scale-q5"


#: The one table of learned architectures: name -> what its folders can do. ``"codec"``: an entropy coder
#: (encode, decode, archives, report, bench rd) and a prior to sample from; ``"generative"``: a VAE with no
#: entropy coder, which samples, interpolates and scores but writes no bitstreams (codecs/gaussian_vae.py).
ARCHITECTURES = {"scale-hyperprior": "codec", "mean-scale-hyperprior": "codec", "gaussian-vae": "generative"}


class UnknownCodecError(ValueError):
    """The name is neither a known codec, a zoo model, nor a codec directory."""


class NotACodecError(ValueError):
    """A learned model that writes no bitstreams (a generative architecture) was given to a job that encodes."""


def config_from_dict(data: dict):
    """The typed config of a card's ``config``: a :class:`~latentzip.codecs.hyperprior.CodecConfig` or a
    :class:`~latentzip.codecs.gaussian_vae.GaussianVAEConfig`, by its ``arch``."""
    arch = data.get("arch", "scale-hyperprior") if isinstance(data, dict) else None
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r:.40}; choose one of {', '.join(ARCHITECTURES)}")
    if ARCHITECTURES[arch] == "generative":
        from latentzip.codecs.gaussian_vae import GaussianVAEConfig

        return GaussianVAEConfig.from_dict(data)
    from latentzip.codecs.hyperprior import CodecConfig

    return CodecConfig.from_dict(data)


def architecture(name_or_path: str | Path) -> str | None:
    """The architecture a learned model's card names (reading ``codec.json`` only), or None for a classical
    codec, a name that is not a codec, or a card without one (those are refused where they are loaded)."""
    from latentzip.codecs.card import read_card

    name = str(name_or_path)
    if is_classical(name):
        return None
    path = codec_directory(name)
    try:
        if isinstance(path, str):  # a URL: its codec.json alone, not the weights
            import json

            import fsspec

            fs, root = fsspec.core.url_to_fs(path)
            config = json.loads(fs.cat_file(f"{root}/{CONFIG_FILE}"))["config"]
        else:
            config = read_card(path)["config"]
        arch = config.get("arch", "scale-hyperprior")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return arch if isinstance(arch, str) else None


def is_generative(name_or_path: str | Path) -> bool:
    """Whether ``name_or_path`` is a learned model that samples and scores but writes no bitstreams."""
    return ARCHITECTURES.get(architecture(name_or_path)) == "generative"


def refuse_generative(name_or_path: str | Path, purpose: str) -> None:
    """Raise :class:`NotACodecError` if ``name_or_path`` is a generative model: ``purpose`` (e.g. ``"encode"``)
    needs bitstreams, which such a model does not write."""
    arch = architecture(name_or_path)
    if ARCHITECTURES.get(arch) == "generative":
        raise NotACodecError(
            f"{purpose} needs an entropy-coded codec; {str(name_or_path)!r} is a {arch} (a generative VAE with no "
            f"entropy coder: it writes no bitstreams). Use it with sample, interpolate, score or bench anomaly/digits")


def load_generative(name_or_path: str | Path, purpose: str):
    """A generative model (``(GaussianVAE in eval mode, card)``) by zoo name, directory or URL; anything else
    is refused with a ValueError saying that ``purpose`` needed one."""
    from latentzip.codecs.checkpoint import load_vae

    name = str(name_or_path)
    if not is_generative(name):
        check_codec_name(name)
        raise ValueError(f"{purpose} needs a generative model (architecture gaussian-vae); {name!r} is not one")
    path = codec_directory(name)
    return load_vae(fetch_codec(path) if isinstance(path, str) else path)


def zoo_models(kind: str | None = None) -> dict[str, Path]:
    """The zoo's models by name; ``kind`` (``"codec"`` or ``"generative"``, see :data:`ARCHITECTURES`) keeps
    those whose ``codec.json`` names an architecture of that kind."""
    if not ZOO_DIR.is_dir():
        return {}
    models = {p.name: p for p in sorted(ZOO_DIR.iterdir()) if (p / CONFIG_FILE).is_file()}
    if kind is None:
        return models
    return {name: path for name, path in models.items() if ARCHITECTURES.get(architecture(path)) == kind}


def is_remote(name: str | Path) -> bool:
    text = str(name)
    return "://" in text and not text.startswith("file://")


def codec_directory(name_or_path: str | Path) -> Path | str:
    """The directory of a learned codec: a zoo model's by name, a URL as its string, else a local path."""
    text = str(name_or_path)
    if text in zoo_models():
        return zoo_models()[text]
    if is_remote(text):
        return text.rstrip("/")
    return Path(text[len("file://"):] if text.startswith("file://") else text).expanduser()


def fetch_codec(url: str) -> Path:
    """A remote codec directory's two files in a new temporary folder (removed when the process exits)."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(url.rstrip("/"))
    directory = Path(tempfile.mkdtemp(prefix="latentzip-codec-"))
    atexit.register(shutil.rmtree, directory, True)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            (directory / name).write_bytes(fs.cat_file(f"{root}/{name}"))
        except FileNotFoundError:
            raise UnknownCodecError(f"{url!r} is not a codec: no {name} there") from None
    return directory


def list_codecs() -> list[str]:
    from latentzip.codecs.classical import FORMATS

    return [*FORMATS, *zoo_models()]


def is_classical(name: str) -> bool:
    from latentzip.codecs.classical import FORMATS

    return name in FORMATS


def did_you_mean(name: str, choices) -> str:
    """`` (did you mean X?)`` for the choices closest to ``name``, or ``""``."""
    close = difflib.get_close_matches(str(name), list(choices), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_codec_name(name_or_path: str | Path) -> None:
    """Raise :class:`UnknownCodecError` (with a "did you mean") unless ``name_or_path`` names a codec: a
    classical name, a zoo model, a local codec directory or a URL (URLs are checked when fetched). Reads
    nothing but names and directory entries."""
    name = str(name_or_path)
    if is_classical(name) or name in zoo_models() or is_remote(name):
        return
    path = codec_directory(name)
    if not (path / CONFIG_FILE).is_file():
        raise _unknown(name)


def _unknown(name: str) -> UnknownCodecError:
    path = codec_directory(name)
    where = (f"{path} exists but has no {CONFIG_FILE}" if isinstance(path, Path) and path.is_dir()
             else "no zoo model or directory of that name")
    return UnknownCodecError(
        f"{name!r} is not a codec ({where}){did_you_mean(name, list_codecs())}: expected one of "
        f"{', '.join(list_codecs())}, or a directory (or URL) containing {CONFIG_FILE}"
    )


def load_learned_codec(name_or_path: str | Path, purpose: str, **options):
    """``load_codec`` for the jobs that need a learned codec: a classical name is refused with a ValueError
    saying which job (``purpose``, e.g. ``"encode"``) needed one."""
    if is_classical(str(name_or_path)):
        raise ValueError(f"{purpose} needs a learned codec, got classical codec {str(name_or_path)!r}")
    refuse_generative(name_or_path, purpose)
    return load_codec(name_or_path, **options)


def coding_card(name_or_path: str | Path, purpose: str) -> dict:
    """The card bitstreams of a learned codec are written under (``model_id`` and ``config`` as
    ``load_codec(name).card`` has them, in the default integer mode), for a job's driver, which writes no
    bitstream itself: read from ``codec.json`` alone when it can tell (a local directory whose card holds
    the integer prior's model id, as every exported codec's does), else from the loaded codec. The weights
    file is checked as loading checks it (:func:`~latentzip.codecs.checkpoint.check_weights`), so a damaged
    folder fails here, but no codec is built; the workers that write the bitstreams load it and must check
    that their model id is this one (the integer-mode id is the card's word)."""
    from latentzip.codecs.card import PRIOR_KEY, is_model_id

    name = str(name_or_path)
    if is_classical(name):
        raise ValueError(f"{purpose} needs a learned codec, got classical codec {name!r}")
    refuse_generative(name, purpose)
    path = codec_directory(name)
    if isinstance(path, Path):
        import dataclasses

        from latentzip.codecs.checkpoint import check_weights

        document, config = check_weights(path)
        if config.entropy_params == "integer":
            return document
        entry = document.get(PRIOR_KEY)
        stored = entry.get("model_id") if isinstance(entry, dict) else None
        if is_model_id(stored):
            integer = dataclasses.replace(config, entropy_params="integer")
            return {**document, "config": integer.to_dict(), "model_id": stored}
    return load_learned_codec(name, purpose).card


def load_codec(name_or_path: str | Path, **options):
    """Return a codec with ``encode(PIL.Image) -> bytes`` and ``decode(bytes) -> PIL.Image``.

    Options: ``quality`` for classical codecs; ``device``, ``max_batch`` and ``entropy_params``
    (``"integer"``, the default, or ``"float"``) for learned ones. A generative model (``gaussian-vae``)
    writes no bitstreams and is refused with :class:`NotACodecError` (load it with :func:`load_generative`).
    """
    from latentzip.codecs.learned import LearnedCodec

    name = str(name_or_path)
    if is_classical(name):
        from latentzip.codecs.classical import ClassicalCodec

        return ClassicalCodec(name, **options)
    refuse_generative(name, "load_codec")
    zoo = zoo_models()
    if name in zoo:
        return LearnedCodec.from_path(zoo[name], name=name, **options)
    path = codec_directory(name)
    if isinstance(path, str):
        return LearnedCodec.from_path(fetch_codec(path), name=name, **options)
    if (path / CONFIG_FILE).is_file():
        return LearnedCodec.from_path(path, **options)
    raise _unknown(name)
