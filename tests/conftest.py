"""Shared fixtures for the whole test suite (codecs, pipeline, training tests all use them).

Fixtures
--------
``tiny_codec_factory`` (session)
    ``tiny_codec_factory(seed=0, arch="scale-hyperprior") -> Path``: exports a tiny, untrained learned
    codec (``CodecConfig(arch, N=16, M=24)``, weights from ``torch.manual_seed(seed)``) with
    :func:`latentzip.codecs.checkpoint.export_codec` into a session temp dir and returns the directory.
    Calls with the same arguments return the same directory (built once per session); different seeds
    give different model ids.
``tiny_codec_dir`` (session)
    ``tiny_codec_factory(seed=0)``: the default tiny codec directory (``codec.json`` +
    ``model.safetensors``), loadable with ``load_codec(path)`` / ``LearnedCodec.from_path(path)``.
    Treat it as read-only (copy it with ``shutil.copytree`` before editing).
``sample_images`` (function)
    A fresh list of small 8-bit RGB PIL images cut from the bundled ``latentzip.jobs/samples/*.jpg``,
    in sizes (width x height) 64x64, 128x96, 93x70, 65x100 and 128x128: two are multiples of the
    learned codec's stride (64), three are odd sizes that need padding. Copies are returned, so a test
    may modify them.
``image_folder_factory`` (session)
    ``image_folder_factory(folder) -> ImageFolder``: writes a small input folder for ingest tests, built from
    the sample images: five good images (``a.png`` 64x64, ``b.jpg`` 128x96, ``sub/c.png`` 93x70,
    ``sub/deeper/d.jpg`` 65x100, and ``rotated.jpg``, 128x96 stored pixels with EXIF orientation 6, so
    96x128 once the orientation is applied), three bad files (``empty.jpg`` zero bytes, ``notes.jpg`` a
    text file, ``truncated.jpg`` half of a JPEG) and a hidden ``.DS_Store`` that ingest must ignore.
    ``ImageFolder.good`` maps id -> (width, height), ``ImageFolder.bad`` lists the bad ids.
``ray_local`` (session)
    A local Ray cluster for pipeline tests: ``start_pinned(num_cpus=2, include_dashboard=False)`` unless Ray is
    already initialised (then the existing one is used). Shut down at the end of the session only if this
    fixture started it. Request it in any test that runs a Ray Data job (``encode()``, ``decode_archive()``).

Note on the tiny codec: a freshly initialised hyperprior maps almost every latent to zero, which would
make round-trip tests pass vacuously. The factory multiplies the last layer of ``g_a`` and ``h_a`` by
``LATENT_GAIN`` before export, so latents span several integer values and the bitstreams carry real
entropy-coded data (hundreds of bytes for a 128x128 image). Decoding stays deterministic and fast.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

import pytest
import torch
from PIL import Image

#: Gain applied to the last analysis layers of the tiny codec so its latents are not all zero.
LATENT_GAIN = 20.0

#: (width, height) of the images returned by ``sample_images``.
SAMPLE_SIZES = ((64, 64), (128, 96), (93, 70), (65, 100), (128, 128))


@pytest.fixture(scope="session")
def tiny_codec_factory(tmp_path_factory):
    """Return ``make(seed=0, arch="scale-hyperprior") -> Path`` building tiny exported codecs (cached)."""
    from latentzip.codecs.checkpoint import export_codec
    from latentzip.codecs.hyperprior import CodecConfig, build_model

    built: dict[tuple[int, str], Path] = {}

    def make(seed: int = 0, arch: str = "scale-hyperprior") -> Path:
        key = (seed, arch)
        if key not in built:
            torch.manual_seed(seed)
            model = build_model(CodecConfig(arch=arch, N=16, M=24))
            with torch.no_grad():
                model.g_a[-1].weight.mul_(LATENT_GAIN)
                model.h_a[-1].weight.mul_(LATENT_GAIN)
            directory = tmp_path_factory.mktemp(f"tiny-codec-{arch}-seed{seed}")
            export_codec(model, directory, card={"note": "tiny untrained test codec", "seed": seed})
            built[key] = directory
        return built[key]

    return make


@pytest.fixture(scope="session")
def tiny_codec_dir(tiny_codec_factory) -> Path:
    """Directory of the default tiny codec (scale hyperprior, N=16, M=24, seed 0). Read-only."""
    return tiny_codec_factory(seed=0)


@pytest.fixture(scope="session")
def _sample_image_cache() -> tuple[Image.Image, ...]:
    sample_dir = files("latentzip.jobs") / "samples"
    paths = sorted((p for p in sample_dir.iterdir() if p.name.endswith(".jpg")), key=lambda p: p.name)
    assert paths, f"no sample images in {sample_dir}"
    images = []
    for index, (width, height) in enumerate(SAMPLE_SIZES):
        with paths[index % len(paths)].open("rb") as handle:
            source = Image.open(handle)
            source.load()
        source = source.convert("RGB")
        # Shrink so the short side is about 1.5x the target, then cut a centred crop: real photo texture
        # at the exact target size.
        scale = 1.5 * max(width / source.width, height / source.height)
        source = source.resize((max(width, round(source.width * scale)), max(height, round(source.height * scale))),
                               Image.Resampling.LANCZOS)
        left, top = (source.width - width) // 2, (source.height - height) // 2
        images.append(source.crop((left, top, left + width, top + height)))
    return tuple(images)


@pytest.fixture
def sample_images(_sample_image_cache) -> list[Image.Image]:
    """Small RGB images of sizes ``SAMPLE_SIZES`` (width x height), fresh copies for each test."""
    return [image.copy() for image in _sample_image_cache]


@dataclass(frozen=True)
class ImageFolder:
    path: Path
    good: dict[str, tuple[int, int]]  # id (relative POSIX path) -> (width, height) after EXIF orientation
    bad: list[str]


@pytest.fixture(scope="session")
def image_folder_factory(_sample_image_cache):
    """Return ``make(folder) -> ImageFolder`` writing good, bad and hidden files into ``folder``."""

    def make(folder: Path) -> ImageFolder:
        folder = Path(folder)
        (folder / "sub" / "deeper").mkdir(parents=True, exist_ok=True)
        im64, im128x96, im93, im65, im128 = _sample_image_cache
        im64.save(folder / "a.png", format="PNG")
        im128x96.save(folder / "b.jpg", format="JPEG", quality=90)
        im93.save(folder / "sub" / "c.png", format="PNG")
        im65.save(folder / "sub" / "deeper" / "d.jpg", format="JPEG", quality=90)
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
        im128x96.save(folder / "rotated.jpg", format="JPEG", quality=90, exif=exif)
        (folder / "empty.jpg").write_bytes(b"")
        (folder / "notes.jpg").write_text("this is not a JPEG\n")
        buffer = io.BytesIO()
        im128.save(buffer, format="JPEG", quality=90)
        (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        good = {"a.png": (64, 64), "b.jpg": (128, 96), "rotated.jpg": (96, 128),
                "sub/c.png": (93, 70), "sub/deeper/d.jpg": (65, 100)}
        return ImageFolder(folder, good, ["empty.jpg", "notes.jpg", "truncated.jpg"])

    return make


@pytest.fixture(scope="session")
def ray_local():
    """A local 2-CPU Ray cluster for the session (reuses one that is already initialised)."""
    import os

    import ray

    from latentzip.pipeline.cluster import PINNED, start_pinned

    started, saved = False, {name: os.environ.get(name) for name in ("RAY_ADDRESS", PINNED)}
    if not ray.is_initialized():
        # A new cluster, pinned (RAY_ADDRESS) as the jobs' embedded ones are: never one found on the machine.
        start_pinned(num_cpus=2, include_dashboard=False)
        started = True
    yield ray
    if started:
        ray.shutdown()
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory):
    """A copy of the bundled sample photos: in an editable install the package's samples are links into the
    source tree, which the input policy does not follow out of the folder (pipeline/inputs.py)."""
    from importlib.resources import as_file, files

    folder = tmp_path_factory.mktemp("samples")
    with as_file(files("latentzip.jobs") / "samples") as path:
        for photo in sorted(path.glob("*.jpg")):
            (folder / photo.name).write_bytes(photo.read_bytes())
    return folder
