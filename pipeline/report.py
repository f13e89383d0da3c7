"""Report: rate-distortion of an archive's learned codec against classical codecs on the same images.

For every image that is both in the archive and in the originals (an ingest folder of Parquet shards, a
single shard, or a plain folder of images whose paths relative to the folder are the ids, as ingest names
them), one unit of work measures:

- the learned codec: ``num_bytes`` is the length of the bytes **stored in the archive** (the whole
  bitstream container, header included), never a likelihood estimate, and ``bpp = num_bytes * 8 / (height
  * width)``. The stored bytes are decoded by the archive's own model (``decode_s``); ``encode_s`` is NaN
  because encoding happened in the encode job and re-encoding here would time a different run.
  ``quality`` is the training lambda from the codec card, or NaN when the card does not record one.
- each classical codec at each quality of its sweep (:data:`latentzip.codecs.classical.FORMATS`, or the
  ``qualities`` override): encode (``encode_s``) and decode (``decode_s``) of the standard file, whose
  whole length is ``num_bytes``.

Distortion is measured against the original after :func:`~latentzip.codecs.images.load_image` (the same
conversion policy every codec sees): ``psnr_db`` over RGB with peak 255 and ``ms_ssim`` (NaN for images
with a side under 161 px). Work runs as one Ray task per image when Ray is initialised, else in-process.

Outputs in ``out_dir``: ``rows.parquet`` (one row per image, codec and quality), ``summary.parquet`` and
``report.md`` (means per codec and quality), ``rd_psnr.png`` and, when any MS-SSIM is defined,
``rd_msssim.png``. Aggregation (:func:`summarize`, :func:`curves`) is kept apart from plotting so that a
BD-rate table can be computed from the same curves later.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq
import ray

import latentzip
from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.images import load_image
from latentzip.codecs.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr_db
from latentzip.codecs.registry import load_codec, zoo_models
from latentzip.pipeline.archive import Item, open_archive
from latentzip.pipeline.raycluster import cluster_cpus
from latentzip.pipeline.shards import list_files, shard_paths

ALL_CLASSICAL = tuple(FORMATS)

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("codec", pa.string()), ("quality", pa.float64()),
    ("num_bytes", pa.int64()), ("bpp", pa.float64()), ("psnr_db", pa.float64()), ("ms_ssim", pa.float64()),
    ("encode_s", pa.float64()), ("decode_s", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
])
SUMMARY_SCHEMA = pa.schema([
    ("kind", pa.string()), ("codec", pa.string()), ("quality", pa.float64()), ("images", pa.int64()),
    ("mean_bpp", pa.float64()), ("mean_psnr_db", pa.float64()), ("mean_ms_ssim", pa.float64()),
    ("ms_ssim_images", pa.int64()), ("mean_encode_s", pa.float64()), ("mean_decode_s", pa.float64()),
])


@dataclass(frozen=True)
class LearnedSpec:
    """What a task needs to decode an archive's items: the model's reference and id, and its labels."""
    name: str
    ref: str
    model_id: str
    lmbda: float
    entropy_params: str = "integer"


@dataclass
class ReportResult:
    """Where the report's files are; ``rd_msssim`` is None when no image is large enough for MS-SSIM."""
    out_dir: Path
    rows_parquet: Path
    summary_parquet: Path
    markdown: Path
    rd_psnr: Path
    rd_msssim: Path | None
    rows: int
    images: int
    errors: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- inputs

def _is_shards(location: Path) -> bool:
    if location.is_file():
        return True
    return any(p.name != "errors.parquet" for p in location.glob("*.parquet"))


def original_ids(location: str | Path) -> list[str]:
    """The ids of the originals: shard ``id`` column, or paths relative to a plain folder of images."""
    location = Path(location)
    if not location.exists():
        raise FileNotFoundError(f"originals {location} do not exist")
    if _is_shards(location):
        return [i for p in shard_paths(location) for i in pq.read_table(p, columns=["id"]).column("id").to_pylist()]
    return [p.relative_to(location).as_posix() for p in list_files(location)]


def iter_originals(location: str | Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(id, original bytes) for ``wanted`` ids, one shard (or file) in memory at a time."""
    location = Path(location)
    if _is_shards(location):
        for path in shard_paths(location):
            table = pq.read_table(path, columns=["id", "image"])
            for item_id, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
                if item_id in wanted:
                    yield item_id, data
    else:
        for path in list_files(location):
            item_id = path.relative_to(location).as_posix()
            if item_id in wanted:
                yield item_id, path.read_bytes()


def classical_plan(classical=ALL_CLASSICAL, qualities: dict[str, list] | None = None) -> list[tuple[str, float]]:
    """(codec, quality) pairs to measure, validated up front so a typo fails before any work."""
    qualities = dict(qualities or {})
    unknown = [name for name in classical if name not in FORMATS]
    if unknown:
        raise ValueError(f"unknown classical codec(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    extra = [name for name in qualities if name not in classical]
    if extra:
        raise ValueError(f"qualities given for {', '.join(extra)}, which are not among the report's codecs")
    plan = []
    for name in classical:
        for quality in qualities.get(name, FORMATS[name].sweep):
            ClassicalCodec(name, quality)  # range check
            plan.append((name, quality))
    return plan


def learned_spec(archive) -> LearnedSpec:
    """Name, resolvable reference, id and lambda of the model that wrote ``archive``."""
    codec = archive.codec()  # verifies the model id against the archive
    ref = str(archive.meta["model_ref"])
    if ref in zoo_models():
        name = ref
    else:
        path = Path(ref).expanduser()
        ref = str(path.resolve()) if path.is_dir() else ref  # tasks may run in another working directory
        # training writes OUT/codec: the run folder names the model better than "codec"
        name = path.resolve().parent.name if path.name == "codec" else path.name
    if name in FORMATS:
        name = f"learned-{name}"
    return LearnedSpec(name, ref, archive.model_id, _card_lmbda(codec.card), codec.config.entropy_params)


def _card_lmbda(document: dict) -> float:
    card = document.get("card") or {}
    for source in (card.get("training"), card.get("config"), card, document.get("config")):
        if isinstance(source, dict) and isinstance(source.get("lmbda"), (int, float)):
            return float(source["lmbda"])
    return math.nan


# ------------------------------------------------------------------------------------------------ work

_CODECS: dict[tuple[str, str], object] = {}


def _learned_codec(spec: LearnedSpec):
    key = (spec.ref, spec.model_id)
    if key not in _CODECS:  # once per process: Ray reuses workers, so the model loads once per worker
        codec = load_codec(spec.ref, entropy_params=spec.entropy_params)
        if codec.model_id.hex() != spec.model_id:
            raise ValueError(f"model {spec.ref!r} has id {codec.model_id.hex()}, the archive needs {spec.model_id}")
        _CODECS[key] = codec
    return _CODECS[key]


def _row(item_id, kind, codec, quality, num_bytes, image, decoded, encode_s, decode_s) -> dict:
    if decoded.size != image.size:
        raise ValueError(f"decoded size {decoded.size} differs from the original's {image.size}")
    return {"id": item_id, "kind": kind, "codec": codec, "quality": float(quality), "num_bytes": num_bytes,
            "bpp": num_bytes * 8 / (image.width * image.height), "psnr_db": psnr_db(image, decoded),
            "ms_ssim": ms_ssim(image, decoded), "encode_s": encode_s, "decode_s": decode_s,
            "width": image.width, "height": image.height}


def measure_image(item_id: str, original: bytes, stored: Item | None, learned: LearnedSpec | None,
                  plan: list[tuple[str, float]]) -> tuple[list[dict], list[dict]]:
    """Every row of one image: the archive's stored bytes (if given), then each classical (codec, quality).

    Returns ``(rows, errors)``; a failing codec costs only its own rows, recorded as ``{id, codec,
    quality, reason}``.
    """
    rows, errors = [], []

    def fail(codec, quality, exc):
        errors.append({"id": item_id, "codec": codec, "quality": float(quality),
                       "reason": f"{type(exc).__name__}: {exc}"})

    try:
        image = load_image(original)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal for the other images
        fail("original", math.nan, exc)
        return rows, errors
    if stored is not None and learned is not None:
        try:
            if (stored.height, stored.width) != (image.height, image.width):
                raise ValueError(f"archive records {stored.width}x{stored.height}, original is {image.width}x{image.height}")
            codec = _learned_codec(learned)
            started = time.perf_counter()
            decoded = codec.decode(stored.data)
            decode_s = time.perf_counter() - started
            # num_bytes is what the archive stores for this id: bpp never comes from likelihoods
            rows.append(_row(item_id, "learned", learned.name, learned.lmbda, len(stored.data), image, decoded,
                             math.nan, decode_s))
        except Exception as exc:  # noqa: BLE001
            fail(learned.name, learned.lmbda, exc)
    for name, quality in plan:
        try:
            codec = ClassicalCodec(name, quality)
            started = time.perf_counter()
            data = codec.encode(image)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            decoded = codec.decode(data)
            decode_s = time.perf_counter() - started
            rows.append(_row(item_id, "classical", name, quality, len(data), image, decoded, encode_s, decode_s))
        except Exception as exc:  # noqa: BLE001
            fail(name, quality, exc)
    return rows, errors


_measure_remote = ray.remote(num_cpus=1)(measure_image)


def _run(jobs: Iterator[tuple], use_ray: bool) -> Iterator[tuple[list[dict], list[dict]]]:
    """Results of ``measure_image(*job)``; on Ray with a bounded number of tasks in flight."""
    if not use_ray:
        for job in jobs:
            yield measure_image(*job)
        return
    window, pending = max(2, 2 * cluster_cpus()), []
    for job in jobs:
        pending.append(_measure_remote.remote(*job))
        while len(pending) >= window:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        yield ray.get(done[0])


# ----------------------------------------------------------------------------------------- aggregation

def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _quality_key(quality: float):
    return None if math.isnan(quality) else quality


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (codec, quality), learned codecs first, then codecs in first-seen order, quality ascending.

    PSNR is averaged per image (the CompressAI convention), MS-SSIM over the images where it is defined.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["codec"], _quality_key(row["quality"]))].append(row)
    order = {codec: i for i, codec in enumerate(dict.fromkeys(r["codec"] for r in rows))}
    keys = sorted(groups, key=lambda k: (k[0] != "learned", order[k[1]], -math.inf if k[2] is None else k[2]))
    out = []
    for kind, codec, quality in keys:
        group = groups[(kind, codec, quality)]
        out.append({
            "kind": kind, "codec": codec, "quality": math.nan if quality is None else quality, "images": len(group),
            "mean_bpp": _mean(r["bpp"] for r in group), "mean_psnr_db": _mean(r["psnr_db"] for r in group),
            "mean_ms_ssim": _mean(r["ms_ssim"] for r in group),
            "ms_ssim_images": sum(not math.isnan(r["ms_ssim"]) for r in group),
            "mean_encode_s": _mean(r["encode_s"] for r in group), "mean_decode_s": _mean(r["decode_s"] for r in group),
        })
    return out


def curves(summary: list[dict], metric: str = "mean_psnr_db") -> dict[str, dict]:
    """Per codec: its kind and its (bpp, metric) points sorted by bpp, non-finite points left out.

    The input a BD-rate computation needs (one curve per codec, anchor = the learned or a classical one).
    """
    out: dict[str, dict] = {}
    for row in summary:
        bpp, value = row["mean_bpp"], row[metric]
        if not (math.isfinite(bpp) and math.isfinite(value)):
            continue
        curve = out.setdefault(row["codec"], {"kind": row["kind"], "points": []})
        curve["points"].append((bpp, value, row["quality"]))
    for curve in out.values():
        curve["points"].sort()
    return out


# -------------------------------------------------------------------------------------------- outputs

def write_table(records: list[dict], schema: pa.Schema, path: Path) -> Path:
    pq.write_table(pa.Table.from_pylist(records, schema=schema), path)
    return path


def plot_rd(summary: list[dict], metric: str, ylabel: str, path: Path, title: str) -> Path:
    """bpp vs ``metric``: a line per classical codec through its qualities, learned models highlighted."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    for codec, curve in curves(summary, metric).items():
        bpp = [p[0] for p in curve["points"]]
        values = [p[1] for p in curve["points"]]
        if curve["kind"] == "learned":
            axes.plot(bpp, values, "*-", color="crimson", markersize=16, markeredgecolor="black", linewidth=2.5,
                      label=f"{codec} (learned)", zorder=5)
            for x, y, lmbda in curve["points"]:
                if math.isfinite(lmbda):
                    axes.annotate(f"λ={lmbda:g}", (x, y), textcoords="offset points", xytext=(8, -12), fontsize=8)
        else:
            axes.plot(bpp, values, "o-", markersize=4, linewidth=1.2, label=codec, alpha=0.85)
    axes.set_xlabel("bits per pixel (stored bytes)")
    axes.set_ylabel(ylabel)
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _fmt(value: float, digits: int) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def _seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


def write_markdown(summary: list[dict], header: dict, errors: list[dict], plots: list[Path], path: Path) -> Path:
    lines = ["# Rate-distortion report", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += ["", "bpp is computed from the bytes actually stored (the archive's bitstream containers, the "
              "classical codecs' whole files), never from likelihoods. PSNR is over RGB with peak 255, averaged "
              f"per image. MS-SSIM is NaN (n/a) for images with a side under {MS_SSIM_MIN_SIDE} px; its mean "
              "is over the images where it is defined. The learned codec's encode time is not measured here "
              "(encoding happened in the encode job); times are mean seconds per image where it was measured "
              "(one Ray task of one CPU per image, or this process).", ""]
    lines += ["| codec | quality | images | mean bpp | mean PSNR (dB) | mean MS-SSIM | MS-SSIM images | "
              "encode s | decode s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        codec = f"**{row['codec']}** (learned, λ)" if row["kind"] == "learned" else row["codec"]
        quality = _fmt(row["quality"], 4) if row["kind"] == "learned" else f"{row['quality']:g}"
        lines.append(f"| {codec} | {quality} | {row['images']} | {_fmt(row['mean_bpp'], 4)} | "
                     f"{_fmt(row['mean_psnr_db'], 2)} | {_fmt(row['mean_ms_ssim'], 4)} | {row['ms_ssim_images']} | "
                     f"{_seconds(row['mean_encode_s'])} | {_seconds(row['mean_decode_s'])} |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    if errors:
        lines += ["", f"## Failures ({len(errors)})", "", "| id | codec | quality | reason |", "|---|---|---:|---|"]
        lines += [f"| {e['id']} | {e['codec']} | {e['quality']:g} | {e['reason']} |" for e in errors]
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------------------------- entry

def report(archive: str | Path, originals: str | Path, out_dir: str | Path, classical=ALL_CLASSICAL,
           qualities: dict[str, list] | None = None, use_ray: bool = True, progress=print) -> ReportResult:
    """Measure the archive's learned codec and ``classical`` codecs on the images in both inputs; write the report."""
    started = time.perf_counter()
    plan = classical_plan(tuple(classical), qualities)
    reader = open_archive(archive)
    spec = learned_spec(reader)
    in_originals = original_ids(originals)
    in_archive = set(reader.ids)
    wanted = [i for i in in_originals if i in in_archive]
    if not wanted:
        raise ValueError(f"no image of archive {archive} is among the originals {originals}")
    missing_originals = len(in_archive) - len(wanted)
    not_encoded = len(in_originals) - len(wanted)
    if progress and (missing_originals or not_encoded):
        progress(f"report: {missing_originals} archive ids have no original, {not_encoded} originals are not in "
                 f"the archive; both are left out so every codec is measured on the same images")
    use_ray = use_ray and ray.is_initialized()
    jobs = ((item_id, data, reader.item(item_id), spec, plan)
            for item_id, data in iter_originals(originals, set(wanted)))
    rows, errors = [], []
    for done, (image_rows, image_errors) in enumerate(_run(jobs, use_ray), 1):
        rows += image_rows
        errors += image_errors
        if progress and (done % 10 == 0 or done == len(wanted)):
            progress(f"report: {done}/{len(wanted)} images measured ({'Ray' if use_ray else 'in-process'}), "
                     f"{len(errors)} failures")

    position = {item_id: i for i, item_id in enumerate(wanted)}
    codec_order = {name: i for i, name in enumerate([spec.name, *dict.fromkeys(n for n, _ in plan)])}
    rows.sort(key=lambda r: (position[r["id"]], codec_order[r["codec"]], r["quality"]))
    summary = summarize(rows)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = write_table(rows, ROW_SCHEMA, out_dir / "rows.parquet")
    summary_path = write_table(summary, SUMMARY_SCHEMA, out_dir / "summary.parquet")
    title = f"{spec.name} vs classical codecs, {len(wanted)} images"
    plots = [plot_rd(summary, "mean_psnr_db", "PSNR (dB, RGB)", out_dir / "rd_psnr.png", title)]
    msssim_path = None
    if any(row["ms_ssim_images"] for row in summary):
        msssim_path = plot_rd(summary, "mean_ms_ssim", "MS-SSIM (RGB)", out_dir / "rd_msssim.png", title)
        plots.append(msssim_path)
    header = {
        "archive": f"`{Path(archive)}` ({len(in_archive)} items)",
        "model": f"{spec.name} (ref `{reader.meta['model_ref']}`, id `{spec.model_id}`, λ {_fmt(spec.lmbda, 4)})",
        "originals": f"`{Path(originals)}`",
        "images": f"{len(wanted)} measured ({missing_originals} archive ids without original, "
                  f"{not_encoded} originals not in the archive)",
        "classical codecs": ", ".join(dict.fromkeys(n for n, _ in plan)) or "none",
        "generated": f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by latentzip "
                     f"{latentzip.__version__} in {time.perf_counter() - started:.1f} s",
    }
    markdown_path = write_markdown(summary, header, errors, plots, out_dir / "report.md")
    return ReportResult(out_dir, rows_path, summary_path, markdown_path, plots[0], msssim_path, len(rows),
                        len(wanted), errors)
