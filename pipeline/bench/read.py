"""``latentzip bench read``: images/s a training loop gets from an archive (decoded on the fly by
:class:`~latentzip.pipeline.archive_data.ArchiveDataset`) against the same images as JPEG and as PNG files
in a folder, read by the same ``DataLoader`` settings, and the bytes on disk of each.

``count`` crops of ``size`` x ``size`` of the bundled samples are written as PNG files (the originals), as
JPEG files (``jpeg_quality``, 4:2:0) and encoded with ``model`` into an archive (or ``archive=`` is measured
with its own images decoded to PNG and JPEG). Each source: a ``DataLoader`` with ``batch_size``, ``workers``
persistent workers, ``shuffle=True``, yielding float32 (B, 3, H, W) tensors in [0, 1]; the loop sums each
batch (standing in for a training step that costs nothing, so the figure is what the loader delivers). One
untimed epoch warms each loader up (workers start, the model loads), then ``epochs`` timed epochs alternate
between the sources; each source's best epoch counts. Torch runs one thread per process.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset


class FolderImages(Dataset):
    """Image files as float32 (3, H, W) tensors in [0, 1] (what ArchiveDataset's ``tensor`` output gives)."""

    def __init__(self, files: list[Path]):
        self.files = [str(f) for f in files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from latentzip.codecs.images import to_tensor

        with Image.open(self.files[index]) as image:
            return to_tensor(image.convert("RGB"))


def _bytes(paths) -> int:
    return sum(p.stat().st_size for p in paths if p.is_file())


def _epoch(iterator_source) -> tuple[int, float]:
    started, images = time.perf_counter(), 0
    for batch in iterator_source:
        batch.sum().item()
        images += batch.shape[0]
    return images, time.perf_counter() - started


def bench_read(archive: Path | None = None, model: str = "mean-scale-q3", count: int = 256, size: int = 128,
               batch_size: int = 16, workers: int = 2, epochs: int = 2, jpeg_quality: int = 90,
               workdir: Path | None = None, progress=print) -> dict:
    from latentzip.pipeline.archive import open_archive
    from latentzip.pipeline.archive_data import ArchiveDataset
    from latentzip.pipeline.bench.decode import build_archive
    from latentzip.pipeline.bench.encode import generate_images
    from latentzip.pipeline.decoding import output_path
    from latentzip.pipeline.decoding_job import decode_archive

    torch.set_num_threads(1)
    work = Path(workdir or tempfile.mkdtemp(prefix="latentzip-bench-read-"))
    work.mkdir(parents=True, exist_ok=True)
    png_dir, jpeg_dir = work / "png", work / "jpeg"
    if archive is None:
        archive = work / "read.zarr"
        if not archive.exists():
            generate_images(png_dir, count, sizes=((size, size),))
            build_archive(archive, model, count, images=png_dir, progress=None)
        pngs = sorted(png_dir.glob("*.png"))
    else:
        decode_archive(archive, png_dir, use_ray=False, progress=None)
        pngs = [output_path(png_dir, i) for i in open_archive(archive).ids]
    jpeg_dir.mkdir(exist_ok=True)
    jpegs = []
    for png in pngs:
        jpegs.append(jpeg_dir / (png.stem + ".jpg"))
        if not jpegs[-1].exists():
            Image.open(png).convert("RGB").save(jpegs[-1], quality=jpeg_quality)
    archive = Path(archive)
    sources = {"archive (decoded on the fly)": ArchiveDataset(archive, output="tensor"),
               f"JPEG files (quality {jpeg_quality})": FolderImages(jpegs), "PNG files": FolderImages(pngs)}
    disk = {"archive (decoded on the fly)": _bytes(archive.rglob("*")),
            f"JPEG files (quality {jpeg_quality})": _bytes(jpegs), "PNG files": _bytes(pngs)}
    loaders = {name: DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                persistent_workers=workers > 0, generator=torch.Generator().manual_seed(0))
               for name, ds in sources.items()}
    for name, loader in loaders.items():
        _epoch(loader)  # warm-up
        if progress:
            progress(f"bench read: {name} warmed up")
    timed = {name: [] for name in loaders}
    for epoch in range(epochs):
        for name, loader in loaders.items():
            images, seconds = _epoch(loader)
            timed[name].append(images / seconds)
            if progress:
                progress(f"bench read: {name} epoch {epoch + 1}: {images / seconds:.1f} images/s")
    reader = open_archive(archive)
    images = len(sources["PNG files"])
    return {"archive": str(archive), "model": reader.meta["model_ref"], "images": images,
            "pixels": sum(Image.open(p).size[0] * Image.open(p).size[1] for p in pngs[:images]),
            "batch_size": batch_size, "workers": workers, "epochs": epochs,
            "sources": {name: {"images_per_s": max(rates), "all_images_per_s": rates, "bytes": disk[name]}
                        for name, rates in timed.items()}}


def markdown(result: dict) -> str:
    png = result["sources"]["PNG files"]["bytes"]
    lines = [f"{result['images']} images ({result['pixels'] / result['images']:.0f} pixels each), model "
             f"{result['model']}; DataLoader batch {result['batch_size']}, {result['workers']} workers, shuffled, "
             f"float32 tensors; best of {result['epochs']} epochs after a warm-up, one torch thread per process",
             "", "| source | images/s | bytes on disk | bits per pixel | × PNG size |", "|---|---|---|---|---|"]
    for name, r in result["sources"].items():
        lines.append(f"| {name} | {r['images_per_s']:.1f} | {r['bytes']} | {r['bytes'] * 8 / result['pixels']:.2f} | "
                     f"{r['bytes'] / png:.3f} |")
    return "\n".join(lines) + "\n"


def write_result(result: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n" if out.suffix == ".json"
                   else "# Read benchmark\n\n" + markdown(result))
    return out
