"""``latentzip bench encode --profile``: where the encode time goes, stage by stage, per batch.

The encoder's own path (``LearnedCodec.encode_batch`` -> ``ScaleHyperprior.compress`` ->
``bitstream.pack_batch``, then ``ArchiveWriter.append``) runs with a clock around each stage (the ``clock``
argument of ``encode_batch``, which the model's stages run inside):

``decode``   read the file, decode it and apply the conversion policy (``load_image``), ``to_tensor``;
``pad``      edge-replicate to a multiple of the stride, stack the batch;
``g_a``      the analysis transform (fp32, or bf16 autocast with ``precision="bf16"``);
``h_a``      the hyper-analysis transform;
``z coding`` quantize z, entropy-code it (CompressAI's C++ range coder);
``h_s``      the integer prior: ``h_s`` in fixed point from the z symbols -> scale indexes (and means);
``y coding`` quantize y against the means (and dequantize: ``y_hat``), entropy-code it;
``pack``     the bitstream container of each image (``codecs/bitstream.py``);
``archive``  writing the streams as segments of 256 images (one unit of work each), as the job's driver does.

With ``expected`` the streams are checked against ``encode_batch``'s without a clock: timing changes nothing.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from latentzip.codecs.images import load_image
from latentzip.pipeline.archive import ArchiveWriter, Item

STAGES = ("decode", "pad", "g_a", "h_a", "z coding", "h_s", "y coding", "pack", "archive")


@dataclass
class EncodeProfile:
    precision: str
    images: int
    batches: int
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    #: CPU seconds of this process (all threads) per stage: less disturbed by other jobs on a shared machine
    cpu_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict:
        return {"precision": self.precision, "images": self.images, "batches": self.batches,
                "total_s": self.total_s, "seconds": self.seconds,
                "percent": {k: 100 * v / self.total_s for k, v in self.seconds.items()},
                "cpu_seconds": self.cpu_seconds,
                "cpu_percent": {k: 100 * v / sum(self.cpu_seconds.values()) for k, v in self.cpu_seconds.items()}}

    def table(self) -> str:
        lines = [(f"profile ({self.precision} g_a): {self.images} images in {self.batches} batches, "
                  f"{self.total_s:.2f} s, {self.images / self.total_s:.2f} images/s"),
                 "", "| stage | seconds | % | CPU seconds | % of CPU |", "|---|---|---|---|---|"]
        cpu_total = sum(self.cpu_seconds.values())
        lines += [f"| {k} | {v:.3f} | {100 * v / self.total_s:.1f} | {self.cpu_seconds[k]:.3f} | "
                  f"{100 * self.cpu_seconds[k] / cpu_total:.1f} |" for k, v in self.seconds.items()]
        return "\n".join(lines)


def profile_encode(codec, paths: list[Path], archive: Path, model_ref: str, precision: str = "fp32",
                   expected: list[bytes] | None = None, unit_size: int = 256) -> EncodeProfile:
    """Encode ``paths`` with ``codec`` (whose ``g_a`` is already set to ``precision``) stage by stage into a
    fresh archive; with ``expected`` (``encode_batch``'s streams, same order), check the bytes match."""
    profile = EncodeProfile(precision, len(paths), 0)
    seconds, cpu_seconds = profile.seconds, profile.cpu_seconds

    @contextmanager
    def clock(stage: str):
        if stage == "g_a":
            profile.batches += 1
        started, cpu = time.perf_counter(), time.process_time()
        yield
        seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started
        cpu_seconds[stage] = cpu_seconds.get(stage, 0.0) + time.process_time() - cpu

    with clock("decode"):
        images = [load_image(str(p)) for p in paths]
    streams = codec.encode_batch(images, clock=clock)
    if expected is not None and streams != list(expected):
        raise AssertionError("the profiled encode did not give encode_batch's bytes")

    with clock("archive"):
        writer = ArchiveWriter.open_or_create(archive, codec.card, model_ref)
        writer.start_job(f"profile-{precision}", {})
        items = [Item(p.name, s, image.height, image.width, "profile") for p, s, image in
                 zip(paths, streams, images)]
        for start in range(0, len(items), unit_size):
            writer.append(items[start : start + unit_size], unit=f"profile-{start}")
        writer.finish_job({})
    return profile
