"""Score: every image's rate under a learned codec as an anomaly score, as a Ray Data job.

A hyperprior's rate is the negative log-likelihood of the image's latents under its learned prior, so bits
per pixel measure how unusual an image is *to that model*. For each image of an ingest folder (Parquet
shards) or a plain image folder, an actor pool of :class:`ScoreStage` computes (codecs/generative.py):

- ``bpp``: bits per pixel of the bitstream container, the very bytes ``LearnedCodec.encode`` (and so the
  encode job) writes, ``num_bytes * 8 / (height * width)``. This is the anomaly score.
- ``bpp_y``, ``bpp_z``: the real byte counts of the latent and hyper-latent strings (the rest of the
  container is its fixed header).
- ``est_bpp_y``, ``est_bpp_z``, ``est_bpp_g0`` … : *estimates*, the ideal code lengths under the coder's
  integer tables, for the latents split into channel groups (``g0`` is the first M/groups channels …).
  They sum to within a few bytes of the real strings.
- a rate map (estimated bpp of each 16 x 16 block), kept by the driver for the ``top_k`` highest-bpp
  images and written as ``heatmaps/NN-<id>.png`` (the image beside its map).

An image is ``flagged`` when its bpp exceeds a threshold calibrated on a reference set (another folder or
ingest output, or an archive) by a percentile or a robust z-score (median + z * 1.4826 * MAD); without a
reference the input itself is the reference. The driver writes ``rows.parquet`` (one row per input file,
failures with their ``error``) and ``calibration.json`` (method, reference, threshold, model id).

An archive written by ``latentzip encode`` is screened without re-encoding: :func:`score_archive` reads
each item's stored bytes (``Item.bpp``), the same number this job computes for the same image.
"""

from __future__ import annotations

import heapq
import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from latentzip.codecs.generative import analyse
from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.codecs.registry import load_codec, load_learned_codec
from latentzip.pipeline.cluster import actor_plan
from latentzip.pipeline import storage
from latentzip.pipeline.shards import read_originals
from latentzip.pipeline import sources


METHODS = ("percentile", "robust-z")
#: MAD of a normal distribution times this is its standard deviation.
MAD_TO_SIGMA = 1.4826
ROWS_FILE = "rows.parquet"
CALIBRATION_FILE = "calibration.json"
HEATMAP_DIR = "heatmaps"


# -- the stage ---------------------------------------------------------------------------------------------
class ScoreStage:
    """Ray Data callable class: a batch of (``id``, ``source`` and, from shards, ``image`` bytes) -> rates.

    Without an ``image`` column the bytes are read from the ``source`` path. Runs without Ray too:
    ``ScoreStage(model)({"id": ..., "source": ...})``.
    """

    def __init__(self, model_ref: str, groups: int = 4, device: str = "cpu", threads: int | None = None,
                 refine_steps: int = 0):
        if threads:
            torch.set_num_threads(threads)
        self.codec = load_learned_codec(model_ref, "scoring", device=device)
        self.groups, self.refine_steps = groups, refine_steps

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [self.score_one(str(item_id), str(source), None if "image" not in batch else batch["image"][i])
                for i, (item_id, source) in enumerate(zip(batch["id"], batch["source"]))]
        return {key: np.array([row[key] for row in rows], dtype=object if key in _OBJECT_KEYS else None)
                for key in rows[0]}

    def score_one(self, item_id: str, source: str, data: bytes | None = None) -> dict:
        row = {"id": item_id, "source": source, "height": 0, "width": 0, "num_bytes": 0, "bpp": math.nan,
               "bpp_y": math.nan, "bpp_z": math.nan, "est_bpp_y": math.nan, "est_bpp_z": math.nan,
               **{f"est_bpp_g{k}": math.nan for k in range(self.groups)},
               "max_block_bpp": math.nan, "rate_map": b"", "rate_map_rows": 0, "rate_map_cols": 0, "error": ""}
        try:
            image = load_image(bytes(data) if data is not None else storage.read_bytes(source))
            rates = analyse(self.codec, image, self.refine_steps)
        except (UnsupportedImageError, OSError) as exc:
            return {**row, "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - one bad image must not sink the job
            return {**row, "error": f"scoring failed: {type(exc).__name__}: {exc}"}
        rate_map = rates.rate_map()
        pixels = rates.pixels
        return {**row, "height": rates.height, "width": rates.width, "num_bytes": len(rates.data),
                "bpp": rates.bpp, "bpp_y": rates.y_string_bytes * 8 / pixels,
                "bpp_z": rates.z_string_bytes * 8 / pixels, "est_bpp_y": float(rates.y_bits.sum()) / pixels,
                "est_bpp_z": float(rates.z_bits.sum()) / pixels,
                **{f"est_bpp_g{k}": v for k, v in enumerate(rates.group_bpp(self.groups))},
                "max_block_bpp": float(rate_map.max()), "rate_map": rate_map.tobytes(),
                "rate_map_rows": rate_map.shape[0], "rate_map_cols": rate_map.shape[1]}


_OBJECT_KEYS = ("id", "source", "rate_map", "error")
_MAP_KEYS = ("rate_map", "rate_map_rows", "rate_map_cols")


# -- calibration -------------------------------------------------------------------------------------------
@dataclass
class Calibration:
    """A threshold on bpp from a reference set. ``robust_z`` of a bpp is (bpp - median) / (1.4826 MAD)."""

    method: str
    threshold: float
    reference: str
    count: int
    median: float
    mad: float
    percentile: float | None = None
    z: float | None = None
    model_id: str | None = None
    score: str = "bpp"

    @classmethod
    def fit(cls, bpps, method: str = "percentile", percentile: float = 99.0, z: float = 3.5,
            reference: str = "", model_id: str | None = None) -> "Calibration":
        values = np.asarray([v for v in bpps if math.isfinite(v)], dtype=np.float64)
        if values.size == 0:
            raise ValueError(f"no scored images in the reference set {reference!r} to calibrate on")
        if method not in METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median)))
        if method == "percentile":
            threshold, z = float(np.percentile(values, percentile)), None
        else:
            threshold, percentile = median + z * MAD_TO_SIGMA * mad, None
        return cls(method, threshold, str(reference), int(values.size), median, mad, percentile, z, model_id)

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        document = json.loads(Path(path).read_text())
        return cls(**{k: document[k] for k in cls.__dataclass_fields__ if k in document})

    def robust_z(self, bpp: float) -> float:
        spread = MAD_TO_SIGMA * self.mad
        return (bpp - self.median) / spread if spread > 0 else math.copysign(math.inf, bpp - self.median)

    def flag(self, bpp: float) -> bool:
        return math.isfinite(bpp) and bpp > self.threshold


# -- the job -----------------------------------------------------------------------------------------------
@dataclass
class ScoreSummary:
    out_dir: str
    images: int
    failures: int
    flagged: int
    calibration: Calibration
    seconds: float
    heatmaps: list[str] = field(default_factory=list)

    def describe(self) -> str:
        c = self.calibration
        rule = f"p{c.percentile:g}" if c.method == "percentile" else f"median + {c.z:g} x 1.4826 MAD"
        return (f"scored {self.images} images ({self.failures} failed) into {self.out_dir}: {self.flagged} flagged "
                f"above {c.threshold:.4f} bpp ({rule} of {c.count} reference images), "
                f"{len(self.heatmaps)} heat maps, {self.seconds:.1f} s")


def score_rows(location: str | Path, model_ref: str, groups: int = 4, batch_size: int = 8,
               concurrency: int | None = None, keep_maps: int = 0, progress=print,
               refine_steps: int = 0) -> tuple[list[dict], list[dict]]:
    """Score every image of ``location`` on Ray. Returns (rows without rate maps, the ``keep_maps`` rows of
    highest bpp with their rate maps as ``float32`` arrays under ``"rate_map"``)."""
    ds, total = sources.dataset(location)
    plan = actor_plan(concurrency=concurrency)
    ds = ds.map_batches(
        ScoreStage,
        fn_constructor_kwargs={"model_ref": str(model_ref), "groups": groups, "device": plan.device,
                               "threads": plan.threads, "refine_steps": refine_steps},
        batch_size=batch_size, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_gpus=plan.gpus, num_cpus=1,
    )
    rows, top, started = [], [], time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i in range(len(batch["id"])):
            row = {key: _plain(values[i]) for key, values in batch.items()}
            rate_map = np.frombuffer(row.pop("rate_map"), dtype=np.float32).reshape(
                row.pop("rate_map_rows"), row.pop("rate_map_cols"))
            rows.append(row)
            if keep_maps and not row["error"]:
                entry = (row["bpp"], len(rows), {**row, "rate_map": rate_map})
                (heapq.heappush if len(top) < keep_maps else heapq.heappushpop)(top, entry)
        if progress:
            progress(f"score: {len(rows)}/{total} images, {len(rows) / (time.perf_counter() - started):.2f} images/s")
    return rows, [entry[2] for entry in sorted(top, key=lambda e: (-e[0], e[1]))]


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def reference_calibration(reference: str | Path, model_ref: str | None, method: str, percentile: float, z: float,
                          groups: int = 4, batch_size: int = 8, concurrency: int | None = None,
                          progress=print, refine_steps: int = 0) -> Calibration:
    """Calibrate on an archive (its stored bpp) or, with ``model_ref``, on a folder or ingest output."""
    archive = _try_archive(reference)
    if archive is not None:
        bpps, model_id = [archive.item(i).bpp for i in archive.ids], getattr(archive, "model_id", None)
    elif model_ref is None:
        raise ValueError(f"reference {reference} is not an archive: pass --model to score it")
    else:
        rows, _ = score_rows(reference, model_ref, groups, batch_size, concurrency, progress=progress,
                             refine_steps=refine_steps)
        bpps, model_id = [r["bpp"] for r in rows], load_codec(model_ref).model_id.hex()
    return Calibration.fit(bpps, method, percentile, z, reference=str(reference), model_id=model_id)


def _try_archive(path: str | Path):
    from latentzip.pipeline.archive import ArchiveError, open_archive

    try:
        return open_archive(path)
    except (ArchiveError, FileNotFoundError, NotADirectoryError):
        return None


def score(location: str | Path, model_ref: str, out_dir: str | Path, reference: str | Path | None = None,
          calibration: Calibration | None = None, method: str = "percentile", percentile: float = 99.0,
          z: float = 3.5, top_k: int = 8, groups: int = 4, batch_size: int = 8, concurrency: int | None = None,
          progress=print, refine_steps: int = 0) -> ScoreSummary:
    """Score ``location`` with ``model_ref`` and write rows, calibration and heat maps to ``out_dir``.
    ``refine_steps``: score the streams that ``encode --refine-steps`` would write (the reference too)."""
    started = time.perf_counter()
    codec = load_learned_codec(model_ref, "scoring")
    model_id = codec.model_id.hex()
    if calibration is not None:
        _check_model(calibration, model_id)
    rows, top = score_rows(location, model_ref, groups, batch_size, concurrency, keep_maps=top_k, progress=progress,
                           refine_steps=refine_steps)
    if calibration is None and reference is not None:
        calibration = reference_calibration(reference, model_ref, method, percentile, z, groups, batch_size,
                                            concurrency, progress, refine_steps=refine_steps)
    elif calibration is None:
        calibration = Calibration.fit([r["bpp"] for r in rows], method, percentile, z,
                                      reference=f"{location} (the input itself: no reference given)",
                                      model_id=model_id)
    _check_model(calibration, model_id)
    out_dir = Path(out_dir)
    heatmaps = write_heatmaps(top, location, out_dir / HEATMAP_DIR)
    for row in rows:
        row["heatmap"] = heatmaps.get(row["id"], "")
    return _finish(rows, calibration, out_dir, started, list(heatmaps.values()))


def score_archive(archive_path: str | Path, out_dir: str | Path, reference: str | Path | None = None,
                  calibration: Calibration | None = None, model_ref: str | None = None,
                  method: str = "percentile", percentile: float = 99.0, z: float = 3.5,
                  progress=print) -> ScoreSummary:
    """Screen an archive from its stored bytes alone (no model, no re-encoding): ``bpp`` is ``Item.bpp``."""
    from latentzip.pipeline.archive import open_archive

    started = time.perf_counter()
    archive = open_archive(archive_path)
    rows = []
    for item_id in archive.ids:
        item = archive.item(item_id)
        rows.append({"id": item_id, "source": str(getattr(item, "source", "")), "height": item.height,
                     "width": item.width, "num_bytes": len(item.data), "bpp": item.bpp, "error": ""})
    model_id = getattr(archive, "model_id", None)
    if calibration is None and reference is not None:
        calibration = reference_calibration(reference, model_ref, method, percentile, z, progress=progress)
    elif calibration is None:
        calibration = Calibration.fit([r["bpp"] for r in rows], method, percentile, z,
                                      reference=f"{archive_path} (the input itself: no reference given)",
                                      model_id=model_id)
    _check_model(calibration, model_id)
    return _finish(rows, calibration, Path(out_dir), started, [])


def _check_model(calibration: Calibration, model_id: str | None) -> None:
    # A threshold in one model's bits says nothing about another model's.
    if calibration.model_id and model_id and calibration.model_id != model_id:
        raise ValueError(f"calibration was made with model {calibration.model_id}, but the scores come from "
                         f"model {model_id}")


def _finish(rows: list[dict], calibration: Calibration, out_dir: Path, started: float,
            heatmaps: list[str]) -> ScoreSummary:
    for row in rows:
        row["robust_z"] = calibration.robust_z(row["bpp"]) if math.isfinite(row["bpp"]) else math.nan
        row["flagged"] = calibration.flag(row["bpp"])
    out_dir.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows) if rows else pa.table({"id": pa.array([], pa.string())})
    tmp = out_dir / f".{ROWS_FILE}.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, out_dir / ROWS_FILE)
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(asdict(calibration), indent=2) + "\n")
    failures = sum(1 for r in rows if r["error"])
    return ScoreSummary(str(out_dir), len(rows) - failures, failures, sum(r["flagged"] for r in rows), calibration,
                        time.perf_counter() - started, heatmaps)


# -- heat maps ---------------------------------------------------------------------------------------------
def write_heatmaps(top: list[dict], location: str | Path, folder: Path) -> dict[str, str]:
    """``NN-<id>.png`` for each row of ``top`` (highest bpp first): the image beside its rate map, on one
    colour scale shared by all maps (0 to the largest block rate among them). Returns id -> path."""
    if not top:
        return {}
    folder.mkdir(parents=True, exist_ok=True)
    kind, _ = sources.input_rows(location)
    originals = read_originals(location, {r["id"] for r in top}) if kind == "shards" else {}
    vmax = max(float(r["rate_map"].max()) for r in top) or 1.0
    written = {}
    for rank, row in enumerate(top):
        data = originals.get(row["id"]) or storage.read_bytes(row["source"])
        panel = heatmap_panel(load_image(data), row["rate_map"], vmax,
                              f"{row['id']}  {row['bpp']:.3f} bpp  (map: 0-{vmax:.2f} bpp per block)")
        path = folder / f"{rank:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', row['id'])}.png"
        panel.save(path)
        written[row["id"]] = str(path)
    return written


def heatmap_panel(image, rate_map: np.ndarray, vmax: float, caption: str = "", max_side: int = 768):
    """The image and its rate map (each block upsampled to its 16 x 16 pixels, inferno colours) side by
    side, with a caption strip; both shrunk so their longer side is at most ``max_side``."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    block = np.kron(np.clip(rate_map / vmax, 0, 1), np.ones((16, 16), np.float32))[: image.height, : image.width]
    heat = Image.fromarray((colormaps["inferno"](block)[..., :3] * 255).astype(np.uint8), mode="RGB")
    scale = min(1.0, max_side / max(image.size))
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image, heat = image.resize(size, Image.Resampling.LANCZOS), heat.resize(size, Image.Resampling.NEAREST)
    caption_h = 14 if caption else 0
    panel = Image.new("RGB", (image.width * 2 + 4, image.height + caption_h), "white")
    panel.paste(image, (0, caption_h))
    panel.paste(heat, (image.width + 4, caption_h))
    if caption:
        ImageDraw.Draw(panel).text((2, 1), caption, fill="black")
    return panel
