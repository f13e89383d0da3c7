"""Decode: archived bitstreams -> images, one id on demand or a whole archive as a Ray Data job.

Batch decode writes ``<out>/<id>.png`` (the id's folders recreated, ".png" appended to its name) through a
temporary name and a rename, so a PNG that exists is complete and a rerun skips it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.raycluster import cluster_cpus


def output_path(out_dir: Path, item_id: str) -> Path:
    relative = Path(item_id)
    if relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"id {item_id!r} cannot name a file inside the output folder")
    # The id's own extension is kept ("a.jpg" -> "a.jpg.png") so "a.jpg" and "a.png" cannot collide.
    return out_dir / relative.with_name(relative.name + ".png")


def decode_to_file(archive, item_id: str, out_path: Path) -> Path:
    image = archive.decode(item_id)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, out_path)
    return out_path


class DecodeStage:
    """Ray Data callable class: a batch of ids -> PNG files (one archive and codec opened per actor)."""

    def __init__(self, archive: str, out_dir: str):
        self.archive = open_archive(archive)
        self.out_dir = Path(out_dir)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        paths, errors = [], []
        for item_id in batch["id"]:
            try:
                paths.append(str(decode_to_file(self.archive, str(item_id), output_path(self.out_dir, str(item_id)))))
                errors.append("")
            except Exception as exc:  # noqa: BLE001 - recorded per id, reported by the driver
                paths.append("")
                errors.append(f"{type(exc).__name__}: {exc}")
        return {"id": batch["id"], "path": np.array(paths, dtype=object), "error": np.array(errors, dtype=object)}


@dataclass
class DecodeSummary:
    out_dir: str
    images: int
    skipped: int
    failures: dict[str, str]
    seconds: float

    def describe(self) -> str:
        rate = self.images / self.seconds if self.seconds else float("nan")
        return (f"decoded {self.images} images into {self.out_dir} ({self.skipped} already there, "
                f"{len(self.failures)} failed), {rate:.2f} images/s")


def decode_archive(archive: str | Path, out_dir: str | Path, ids: list[str] | None = None,
                   batch_size: int = 8, concurrency: int | None = None, progress=print) -> DecodeSummary:
    """Regenerate ``ids`` (default: all) of an archive as PNG files in ``out_dir``, in parallel on Ray."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    reader = open_archive(archive)
    wanted = reader.ids if ids is None else list(dict.fromkeys(ids))
    for item_id in wanted:
        reader.position(item_id)  # a missing id fails here, before any work, naming the id
    todo = [i for i in wanted if not output_path(out_dir, i).exists()]
    decoded, failures = 0, {}
    if todo:
        ds = ray.data.from_items([{"id": i} for i in todo], override_num_blocks=max(1, len(todo) // batch_size))
        ds = ds.map_batches(
            DecodeStage,
            fn_constructor_kwargs={"archive": str(archive), "out_dir": str(out_dir)},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=concurrency or max(1, min(cluster_cpus() - 1, len(todo)))),
            num_cpus=1,
        )
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for item_id, error in zip(batch["id"], batch["error"]):
                if error:
                    failures[str(item_id)] = str(error)
                else:
                    decoded += 1
            if progress:
                progress(f"decode: {decoded + len(failures)}/{len(todo)} images, {len(failures)} failed")
    return DecodeSummary(str(out_dir), decoded, len(wanted) - len(todo), failures, time.perf_counter() - started)
