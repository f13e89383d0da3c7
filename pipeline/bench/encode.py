"""``latentzip bench encode``: encode throughput against CompressAI's own per-image path, archive overhead,
peak memory, and open + lookup time of a 10,000-image archive. Measured in this process, no Ray, on the
threads given (``--threads``, default 2: the 2-core machine the figures are recorded for).

Paths timed on the same weights and the same images:

- ``compressai``: what CompressAI's ``eval_model`` does, one image at a time: load with Pillow,
  ``ToTensor``, zero-pad centred to a multiple of 64, ``compressai.models.ScaleHyperprior.compress`` (its
  float entropy parameters), the weights loaded from the codec's state dict;
- ``latentzip-1``: ``LearnedCodec.encode`` one image at a time (integer prior, bitstream container);
- ``latentzip-batched``: images grouped by padded size, ``encode_batch`` (dense batches);
- ``latentzip-batched-bf16``: the same with ``g_a`` channels-last under bf16 autocast
  (:func:`latentzip.pipeline.encoding_stage.fast_analysis`); the entropy parameters stay exact.

Images/s and MB/s (of decoded RGB pixels in, 3 bytes per pixel) count loading and padding too. Without a
model the benchmark builds a fixed-seed scale hyperprior (N=128, M=192) whose last analysis layers are
scaled so that latents carry entropy, as tests do: its RD figures are those of untrained weights. The
10,000-image lookup archive is encoded with a tiny fixed-seed codec (N=16, M=24): lookup time depends on
the archive's size and layout, not on the model.
"""

from __future__ import annotations

import random
import resource
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from latentzip.codecs.images import load_image
from latentzip.codecs.metrics import psnr_db
from latentzip.codecs.registry import load_codec
from latentzip.pipeline.archive import ArchiveWriter, Item, open_archive
from latentzip.pipeline.encoding_stage import fast_analysis
from latentzip.pipeline.sources import local_images
from PIL import Image

SIZES = ((512, 384), (384, 512), (512, 512), (768, 512), (256, 256), (640, 480))


@dataclass
class PathResult:
    path: str
    images: int
    seconds: float
    images_per_s: float
    mb_per_s: float
    num_bytes: int
    bpp: float
    psnr_db: float | None = None
    #: images/s of each repeat (``seconds``, ``images_per_s`` and ``mb_per_s`` are of the median repeat)
    runs: list[float] = field(default_factory=list)
    #: median CPU seconds (this process, all threads) per image: steadier than wall time on a shared machine
    cpu_s_per_image: float = 0.0


@dataclass
class EncodeBenchmark:
    model: str
    threads: int
    images: int
    pixels: int
    paths: list[PathResult]
    archive_bytes: int
    bitstream_bytes: int
    peak_rss_mb: float
    lookup: dict = field(default_factory=dict)
    repeats: int = 1
    profiles: list = field(default_factory=list)
    archive_images: int = 0  # images in the overhead archive (the timed ones, plus --overhead-images extra)
    metadata_bytes: int = 0  # of the archive's zarr.json files: a fixed cost per archive

    @property
    def overhead_pct(self) -> float:
        return 100.0 * (self.archive_bytes / self.bitstream_bytes - 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "profiles": [p.to_dict() for p in self.profiles], "overhead_pct": self.overhead_pct}

    def table(self) -> str:
        base = next(p for p in self.paths if p.path == "compressai")
        lines = [(f"model {self.model}; {self.images} images, {self.pixels / 1e6:.2f} Mpixel; {self.threads} "
                  f"threads; median of {self.repeats} repeat(s)"), "",
                 ("| path | images/s | MB/s | × CompressAI (median) | × per repeat | CPU s/image | × CompressAI (CPU) | bytes "
                  "| bpp | PSNR (dB) |"), "|---|---|---|---|---|---|---|---|---|---|"]
        for p in self.paths:
            psnr = f"{p.psnr_db:.3f}" if p.psnr_db is not None else "-"
            # Paired: each repeat's ratio (the paths ran back to back, under about the same load), then the median.
            ratios = [r / b for r, b in zip(p.runs, base.runs)]
            lines.append(f"| {p.path} | {p.images_per_s:.2f} | {p.mb_per_s:.3f} | {statistics.median(ratios):.2f} "
                         f"| {' / '.join(f'{r:.2f}' for r in ratios)} "
                         f"| {p.cpu_s_per_image:.3f} | {base.cpu_s_per_image / p.cpu_s_per_image:.2f} "
                         f"| {p.num_bytes} | {p.bpp:.5f} | {psnr} |")
        lines += ["", (f"archive of {self.archive_images} images: archive bytes / bitstream bytes: "
                       f"{self.archive_bytes} / {self.bitstream_bytes} = "
                       f"{self.archive_bytes / self.bitstream_bytes:.5f} ({self.overhead_pct:+.3f} %); "
                       f"without the {self.metadata_bytes} bytes of zarr.json files (fixed per archive): "
                       f"{100 * ((self.archive_bytes - self.metadata_bytes) / self.bitstream_bytes - 1):+.3f} %"),
                  f"peak RSS of the benchmark process: {self.peak_rss_mb:.0f} MB"]
        for profile in self.profiles:
            lines += ["", profile.table()]
        if self.lookup:
            lk = self.lookup
            lines.append(f"lookup: archive of {lk['images']} images ({lk['files']} files): open + item(id) "
                         f"median {lk['median_ms']:.2f} ms, max {lk['max_ms']:.2f} ms over {lk['trials']} random ids "
                         f"(built in {lk['build_s']:.1f} s)")
        return "\n".join(lines)


def fixed_seed_codec(directory: Path, seed: int = 0, N: int = 128, M: int = 192, gain: float = 5.0) -> Path:
    """An untrained codec whose last analysis layers are scaled by ``gain`` (about 1 bpp at N=128, M=192)."""
    from latentzip.codecs.checkpoint import export_codec
    from latentzip.codecs.hyperprior import CodecConfig, build_model

    torch.manual_seed(seed)
    model = build_model(CodecConfig(N=N, M=M))
    with torch.no_grad():
        model.g_a[-1].weight.mul_(gain)
        model.h_a[-1].weight.mul_(gain)
    export_codec(model, directory, card={"note": f"fixed-seed untrained benchmark codec, seed {seed}"})
    return directory


def generate_images(folder: Path, count: int, sizes=SIZES, seed: int = 0) -> list[Path]:
    """``count`` PNG crops of the bundled sample photos at ``sizes`` (cycled), in ``folder``."""
    from importlib.resources import files

    sources = sorted(p for p in (files("latentzip.jobs") / "samples").iterdir() if p.name.endswith(".jpg"))
    photos = [Image.open(p).convert("RGB") for p in sources]
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        width, height = sizes[i % len(sizes)]
        photo = photos[i % len(photos)]
        scale = max(width / photo.width, height / photo.height) * rng.uniform(1.0, 1.5)
        photo = photo.resize((max(width, round(photo.width * scale)), max(height, round(photo.height * scale))))
        left, top = rng.randrange(photo.width - width + 1), rng.randrange(photo.height - height + 1)
        paths.append(folder / f"img{i:05d}.png")
        photo.crop((left, top, left + width, top + height)).save(paths[-1])
    return paths


def _compressai_path(codec, paths: list[Path]) -> list[bytes]:
    """CompressAI's eval_model encode loop on the codec's weights: one image at a time, float prior."""
    from compressai.models import MeanScaleHyperprior, ScaleHyperprior
    from torchvision import transforms

    model_class = MeanScaleHyperprior if codec.config.arch == "mean-scale-hyperprior" else ScaleHyperprior
    model = model_class(codec.config.N, codec.config.M)
    model.load_state_dict(codec.model.state_dict())
    model.eval()
    out = []
    with torch.no_grad():
        for path in paths:
            x = transforms.ToTensor()(Image.open(path).convert("RGB")).unsqueeze(0)
            h, w = x.shape[-2:]
            ph, pw = (-h) % 64, (-w) % 64
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), mode="constant", value=0)
            coded = model.compress(x)
            out.append(b"".join(s[0] for s in coded["strings"]))
    return out


def _timed(run, paths: list[Path]) -> tuple[tuple[float, float], list[bytes]]:
    started, cpu = time.perf_counter(), time.process_time()
    streams = run(paths)
    return (time.perf_counter() - started, time.process_time() - cpu), streams


def _result(name: str, times: list[tuple[float, float]], streams: list[bytes], images: int, pixels: int) -> PathResult:
    seconds = statistics.median(t for t, _ in times)
    num_bytes = sum(len(s) for s in streams)
    return PathResult(name, images, seconds, images / seconds, pixels * 3 / 1e6 / seconds, num_bytes,
                      num_bytes * 8 / pixels, runs=[images / t for t, _ in times],
                      cpu_s_per_image=statistics.median(c for _, c in times) / images)


def _psnr(codec, streams: list[bytes], paths: list[Path]) -> float:
    return statistics.fmean(psnr_db(load_image(str(p)), codec.decode(s)) for p, s in zip(paths, streams))


def bench_encode(model: str | Path | None = None, images: Path | None = None, count: int = 48,
                 threads: int = 2, max_batch: int = 16, lookup_images: int = 10_000, workdir: Path | None = None,
                 repeats: int = 1, profile: bool = False, overhead_images: int = 0, progress=print) -> EncodeBenchmark:
    """Time each path ``repeats`` times (the paths take turns, so a load spike from other jobs hits them
    alike) and report the median; with ``profile``, also the per-stage breakdown (fp32 and bf16 g_a). The
    overhead archive holds the timed images' fp32 streams, plus ``overhead_images`` minus those of extra
    generated crops encoded only for it."""
    torch.set_num_threads(threads)
    work = Path(workdir or tempfile.mkdtemp(prefix="latentzip-bench-"))
    model_ref = str(model) if model else str(fixed_seed_codec(work / "codec"))
    paths = local_images(images)[:count] if images else generate_images(work / "images", count)
    if not paths:
        raise FileNotFoundError(f"no images in {images}")
    codec = load_codec(model_ref, max_batch=max_batch)
    fast = load_codec(model_ref, max_batch=max_batch)
    fast_analysis(fast.model)
    loaded = [load_image(str(p)) for p in paths]
    pixels = sum(im.width * im.height for im in loaded)
    by_size = sorted(range(len(paths)), key=lambda i: (loaded[i].height + (-loaded[i].height) % 64,
                                                      loaded[i].width + (-loaded[i].width) % 64))

    def batched(which):
        def run(batch_paths):
            order = [batch_paths[i] for i in by_size]
            streams = which.encode_batch([load_image(str(p)) for p in order])
            back = [b""] * len(order)
            for position, i in enumerate(by_size):
                back[i] = streams[position]
            return back
        return run

    runs = [("compressai", lambda ps: _compressai_path(codec, ps)),
            ("latentzip-1", lambda ps: [codec.encode(load_image(str(p))) for p in ps]),
            ("latentzip-batched", batched(codec)),
            ("latentzip-batched-bf16", batched(fast))]
    times, streams_of = {name: [] for name, _ in runs}, {}
    codec.encode_batch(loaded[:1])  # warm-up: oneDNN kernels, integer prior tables
    fast.encode_batch(loaded[:1])
    for repeat in range(repeats):
        for name, run in runs:
            seconds, streams_of[name] = _timed(run, paths)
            times[name].append(seconds)
            if progress:
                progress(f"bench encode: repeat {repeat + 1}/{repeats}: {name}: {len(paths) / seconds[0]:.2f} "
                         f"images/s, {seconds[1] / len(paths):.3f} CPU s/image")
    results = []
    for name, _ in runs:
        results.append(_result(name, times[name], streams_of[name], len(paths), pixels))
        if name.startswith("latentzip"):
            results[-1].psnr_db = _psnr(codec, streams_of[name], paths)
    profiles = []
    if profile:
        from latentzip.pipeline.bench.encode_profile import profile_encode

        for precision, which in (("fp32", codec), ("bf16", fast)):
            expected = streams_of["latentzip-batched" if precision == "fp32" else "latentzip-batched-bf16"]
            profiles.append(profile_encode(which, paths, work / f"profile-{precision}.zarr", model_ref, precision,
                                           expected=expected))
            if progress:
                progress(profiles[-1].table())

    streams, sizes = streams_of["latentzip-batched"], [(im.height, im.width) for im in loaded]
    names = [p.name for p in paths]
    if overhead_images > len(paths):  # more (distinct, real) streams: the per-archive costs amortise as in use
        extra = generate_images(work / "overhead-images", overhead_images - len(paths), seed=1)
        for start in range(0, len(extra), 64):
            batch = [load_image(str(p)) for p in extra[start : start + 64]]
            streams = streams + codec.encode_batch(batch)
            sizes += [(im.height, im.width) for im in batch]
            if progress:
                progress(f"bench encode: overhead archive {len(streams)}/{overhead_images} images")
        names += [f"extra/{p.name}" for p in extra]
    archive_path = work / "bench.zarr"
    writer = ArchiveWriter.open_or_create(archive_path, codec.card, model_ref)
    writer.start_job("bench", {})
    items = [Item(name, s, h, w, "bench") for name, s, (h, w) in zip(names, streams, sizes)]
    for start in range(0, len(items), 256):  # segments of 256 images: the encode job's default unit
        writer.append(items[start : start + 256], unit=f"bench-{start}")
    writer.finish_job({})
    files = [p for p in archive_path.rglob("*") if p.is_file()]
    archive_bytes = sum(p.stat().st_size for p in files)
    metadata_bytes = sum(p.stat().st_size for p in files if p.name == "zarr.json")
    # The lookup archive's size, not its model, matters: a tiny codec (N=16, M=24) keeps building it quick.
    tiny = load_codec(fixed_seed_codec(work / "tiny-codec", N=16, M=24, gain=20.0), max_batch=64)
    lookup = _lookup(tiny, str(work / "tiny-codec"), work, lookup_images, progress) if lookup_images else {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return EncodeBenchmark(model_ref, threads, len(paths), pixels, results, archive_bytes,
                           sum(len(s) for s in streams), peak, lookup, repeats, profiles, len(streams),
                           metadata_bytes)


def _lookup(codec, model_ref: str, work: Path, count: int, progress) -> dict:
    """Encode ``count`` generated 64x64 images into an archive, then time open + one lookup, cold objects."""
    started = time.perf_counter()
    rng = np.random.default_rng(0)
    [source] = generate_images(work / "small-src", 1, sizes=((512, 512),))
    base = np.asarray(Image.open(source).convert("RGB"))
    path = work / "lookup.zarr"
    writer = ArchiveWriter.open_or_create(path, codec.card, model_ref)
    writer.start_job("lookup", {})
    for start in range(0, count, 256):
        images = []
        for _ in range(min(256, count - start)):
            top, left = rng.integers(0, base.shape[0] - 64, 2)
            images.append(Image.fromarray(base[top : top + 64, left : left + 64]))
        streams = codec.encode_batch(images)
        writer.append([Item(f"small/{start + i:05d}.png", s, 64, 64, f"gen-{start}") for i, s in enumerate(streams)],
                      unit=f"gen-{start}")
        if progress and start % 2560 == 0:
            progress(f"bench encode: lookup archive {start + len(images)}/{count} images")
    writer.finish_job({})
    build_s = time.perf_counter() - started
    times = []
    for item_id in random.Random(1).sample(range(count), 20):
        t0 = time.perf_counter()
        open_archive(path).item(f"small/{item_id:05d}.png")
        times.append((time.perf_counter() - t0) * 1000)
    return {"images": count, "files": sum(1 for p in path.rglob("*") if p.is_file()), "trials": len(times),
            "median_ms": statistics.median(times), "max_ms": max(times), "build_s": build_s}


def write_result(result: EncodeBenchmark, out: Path) -> Path:
    import json

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result.to_dict(), indent=2) + "\n" if out.suffix == ".json" else result.table() + "\n")
    return out
