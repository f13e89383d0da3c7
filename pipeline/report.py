"""Report: rate-distortion of learned codecs against classical codecs on the same images.

Inputs are the originals (an ingest folder of Parquet shards, a single shard, or a plain folder of images
whose paths relative to the folder are the ids, as ingest names them) and learned models given either as
**archives** (their stored bytes are measured) or as **codecs encoding on the fly** (``models``: a trained
codec directory or a zoo name). For every image in the originals (and in every archive given), one unit of
work measures:

- each learned model: ``num_bytes`` is the length of the whole bitstream container, either **stored in the
  archive** or just produced by ``codec.encode`` (then ``encode_s`` is measured; for archives it is NaN,
  because encoding happened in the encode job). Never a likelihood estimate; ``bpp = num_bytes * 8 /
  (height * width)``. ``quality`` is the training lambda from the codec card (NaN when not recorded).
- each classical codec at each quality of its sweep (:data:`latentzip.codecs.classical.FORMATS`, or the
  ``qualities`` override): encode and decode of the standard file, whose whole length is ``num_bytes``.

**Series.** Several learned models of one architecture with distinct lambdas form one RD curve (the
``codec`` column is the series name, ``quality`` the lambda): named ``series`` when given, else
``<arch>-N<N>-M<M>``; a single model keeps its own name (its run folder). Models without a distinct lambda
stay separate points.

**Sweeps cover the learned range.** Unless ``extend_sweeps=False``, after the first pass each classical
codec whose mean bpp does not reach below the lowest (above the highest) learned mean bpp gets a quality
halfway towards its range limit, measured in another pass, for up to :data:`~latentzip.pipeline.report_sweeps.MAX_EXTEND_ROUNDS` rounds; the
report lists which codecs cover the range and which stop at their quality limit.

Distortion is measured against the original after :func:`~latentzip.codecs.images.load_image` (the same
conversion policy every codec sees): ``psnr_db`` over RGB with peak 255 and ``ms_ssim`` (NaN for images
with a side under 161 px). Work runs as one Ray task per image when Ray is initialised, else in-process.

Outputs in ``out_dir``: ``rows.parquet`` (one row per image, codec and quality: id, kind, codec, quality,
num_bytes, bpp, psnr_db, ms_ssim, encode_s, decode_s, width, height), ``summary.parquet`` (means per codec
and quality), ``bd.parquet`` / ``bd.json`` (BD-rate and BD-PSNR / BD-MS-SSIM of every learned series
against every classical codec, :mod:`latentzip.pipeline.bdrate`), ``rd_psnr.png`` and, when any MS-SSIM
is defined, ``rd_msssim.png``, ``report.md`` and a self-contained ``report.html``
(:mod:`latentzip.pipeline.report_html`). Optional reference series (JSON,
:func:`~latentzip.pipeline.report_outputs.load_reference`) are drawn on the plots.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import ray

import latentzip
from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.images import load_image
from latentzip.codecs.metrics import ms_ssim, psnr_db
from latentzip.codecs.registry import load_codec, zoo_models
from latentzip.pipeline import report_html
from latentzip.pipeline.archive import Item
from latentzip.pipeline.bdrate import METRICS, MIN_RATE_POINTS, bd_records, bd_table
from latentzip.pipeline.decoding import open_archive
from latentzip.pipeline.raycluster import cluster_cpus
from latentzip.pipeline.report_outputs import (fmt, load_reference, plot_rd, reference_points, write_json,
                                               write_markdown, write_table)
from latentzip.pipeline.report_sweeps import MAX_EXTEND_ROUNDS, coverage_notes, extend_plan, learned_range
from latentzip.pipeline import storage
from latentzip.pipeline.shards import is_shards, shard_paths

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
BD_SCHEMA = pa.schema([
    ("learned", pa.string()), ("anchor", pa.string()), ("metric", pa.string()), ("bd_rate_pct", pa.float64()),
    ("bd_quality", pa.float64()), ("learned_points", pa.int64()), ("anchor_points", pa.int64()),
    ("rate_overlap", pa.float64()), ("quality_overlap", pa.float64()), ("note", pa.string()),
])


@dataclass(frozen=True)
class LearnedSpec:
    """What a task needs to run one learned model: its reference and id, and its labels.

    ``name`` is the series (the rows' ``codec``), ``model`` the model's own name, ``config`` its
    architecture label (models sharing it may form one series).
    """
    name: str
    ref: str
    model_id: str
    lmbda: float
    entropy_params: str = "integer"
    model: str = ""
    config: str = ""
    refine_steps: int = 0  # encoder-side latent refinement when encoding on the fly (codecs/refine.py)


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
    bd_parquet: Path | None = None
    bd_json: Path | None = None
    html: Path | None = None
    bd: list = field(default_factory=list)
    coverage: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- inputs

def original_ids(location: str | Path) -> list[str]:
    """The ids of the originals (a path or a URL): shard ``id`` column, or paths relative to a plain folder
    of images."""
    location = storage.normalise(location)
    if not storage.exists(location):
        raise FileNotFoundError(f"originals {location} do not exist")
    if is_shards(location):
        return [i for p in shard_paths(location) for i in storage.read_table(p, columns=["id"]).column("id").to_pylist()]
    if storage.is_file(location):
        raise ValueError(f"originals {location} is a file: give the folder of images or the ingest output")
    return [name for name in storage.list_files(location) if not _is_notes(name)]


#: Files that sit beside photos in a folder (its SOURCES.md, a manifest) and are not measured as images.
NOTE_SUFFIXES = (".md", ".txt", ".tsv", ".csv", ".json", ".py", ".sh", ".html")


def _is_notes(name: str) -> bool:
    return name.lower().endswith(NOTE_SUFFIXES)


def iter_originals(location: str | Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(id, original bytes) for ``wanted`` ids, one shard (or file) in memory at a time."""
    location = storage.normalise(location)
    if is_shards(location):
        for path in shard_paths(location):
            table = storage.read_table(path, columns=["id", "image"])
            for item_id, data in zip(table.column("id").to_pylist(), table.column("image").to_pylist()):
                if item_id in wanted:
                    yield item_id, data
    else:
        for item_id in storage.list_files(location):
            if item_id in wanted and not _is_notes(item_id):
                yield item_id, storage.read_bytes(storage.join(location, item_id))


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


def _model_name(ref: str) -> tuple[str, str]:
    """(name, resolvable ref) of a model reference: a zoo name, or a codec directory (resolved)."""
    if ref in zoo_models():
        name = ref
    else:
        path = Path(ref).expanduser()
        ref = str(path.resolve()) if path.is_dir() else ref  # tasks may run in another working directory
        # training writes OUT/codec: the run folder names the model better than "codec"
        name = path.resolve().parent.name if path.name == "codec" else path.name
    return (f"learned-{name}" if name in FORMATS else name), ref


def _spec(codec, ref: str) -> LearnedSpec:
    name, ref = _model_name(ref)
    config = codec.config
    label = f"{config.arch}-N{config.N}-M{config.M}" + ("" if config.entropy_params == "integer" else "-float")
    return LearnedSpec(name, ref, codec.model_id.hex(), _card_lmbda(codec.card), config.entropy_params, name, label)


def learned_spec(archive) -> LearnedSpec:
    """Name, resolvable reference, id and lambda of the model that wrote ``archive``."""
    return _spec(archive.codec(), str(archive.meta["model_ref"]))  # codec() verifies the archive's model id


def model_spec(ref: str) -> LearnedSpec:
    """The same for a model that encodes on the fly: a codec directory or a zoo name."""
    codec = load_codec(ref)
    if getattr(codec, "kind", "") == "classical":
        raise ValueError(f"{ref!r} is a classical codec; give it in the classical codecs, not as a learned model")
    return _spec(codec, ref)


def assign_series(specs: list[LearnedSpec], series: str | None = None) -> list[LearnedSpec]:
    """Group learned models into RD curves (module doc, "Series"); raises on ambiguous input."""
    seen = {}
    for spec in specs:
        if spec.model_id in seen:
            raise ValueError(f"model {spec.model_id} is given twice ({seen[spec.model_id]} and {spec.ref})")
        seen[spec.model_id] = spec.ref
    if series:
        lmbdas = [s.lmbda for s in specs]
        if len(specs) > 1 and (not all(math.isfinite(v) for v in lmbdas) or len(set(lmbdas)) < len(lmbdas)):
            raise ValueError(f"series {series!r} needs a distinct lambda per model in the codec cards, got "
                             + ", ".join(f"{s.model}: {fmt(s.lmbda, 4)}" for s in specs))
        return [replace(s, name=series) for s in specs]
    groups = defaultdict(list)
    for spec in specs:
        groups[spec.config].append(spec)
    out = []
    for spec in specs:
        members = groups[spec.config]
        lmbdas = [m.lmbda for m in members]
        if len(members) > 1 and all(math.isfinite(v) for v in lmbdas) and len(set(lmbdas)) == len(lmbdas):
            spec = replace(spec, name=spec.config)
        out.append(spec)
    names = [(s.name, s.lmbda if math.isfinite(s.lmbda) else None) for s in out]
    return [replace(s, name=f"{s.name}-{s.model_id[:8]}") if names.count(key) > 1 else s
            for s, key in zip(out, names)]


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


def _measure_learned(item_id: str, image, spec: LearnedSpec, stored: Item | None) -> dict:
    codec = _learned_codec(spec)
    encode_s = math.nan
    if stored is None:  # encode on the fly
        started = time.perf_counter()
        data = codec.encode(image, refine_steps=spec.refine_steps)
        encode_s = time.perf_counter() - started
    else:
        if (stored.height, stored.width) != (image.height, image.width):
            raise ValueError(f"archive records {stored.width}x{stored.height}, original is {image.width}x{image.height}")
        data = stored.data  # num_bytes is what the archive stores for this id: bpp never from likelihoods
    started = time.perf_counter()
    decoded = codec.decode(data)
    decode_s = time.perf_counter() - started
    return _row(item_id, "learned", spec.name, spec.lmbda, len(data), image, decoded, encode_s, decode_s)


def measure_image(item_id: str, original: bytes, learned: list[tuple[LearnedSpec, Item | None]],
                  plan: list[tuple[str, float]]) -> tuple[list[dict], list[dict]]:
    """Every row of one image: each learned model (its archive's stored bytes, or ``None`` to encode on the
    fly), then each classical (codec, quality).

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
    for spec, stored in learned:
        try:
            rows.append(_measure_learned(item_id, image, spec, stored))
        except Exception as exc:  # noqa: BLE001
            fail(spec.name, spec.lmbda, exc)
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


# ----------------------------------------------------------------------------------------------- entry

def _measure(jobs, total: int, use_ray: bool, progress, what: str) -> tuple[list[dict], list[dict]]:
    rows, errors = [], []
    for done, (image_rows, image_errors) in enumerate(_run(jobs, use_ray), 1):
        rows += image_rows
        errors += image_errors
        if progress and (done % 10 == 0 or done == total):
            progress(f"report: {what}: {done}/{total} images measured ({'Ray' if use_ray else 'in-process'}), "
                     f"{len(errors)} failures")
    return rows, errors


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def report(archives, originals: str | Path, out_dir: str | Path, classical=ALL_CLASSICAL,
           qualities: dict[str, list] | None = None, use_ray: bool = True, progress=print, *, models=(),
           series: str | None = None, references=(), extend_sweeps: bool = True,
           min_points: int = MIN_RATE_POINTS, refine_steps=(0,)) -> ReportResult:
    """Measure learned models (``archives``: one path or several; ``models``: codecs encoding on the fly)
    and ``classical`` codecs on the images of ``originals`` (and of every archive); write the report.

    ``refine_steps``: for the models encoded on the fly, one series per setting (0: the plain encoder;
    N > 0: latent refinement of N steps, series ``<name>+refine<N>``).

    ``min_points`` (default 4) is the fewest rate points per curve for a BD delta; lower it only for an
    indicative number, which the tables then flag."""
    if min_points < 2:
        raise ValueError(f"a BD delta needs at least 2 rate points per curve, got min_points={min_points}")
    started = time.perf_counter()
    plan = classical_plan(tuple(classical), qualities)
    archives, models = _as_list(archives), _as_list(models)
    reference_series = [series for path in _as_list(references) for series in load_reference(path)]
    readers = [open_archive(a) for a in archives]
    specs = assign_series([learned_spec(r) for r in readers] + [model_spec(str(m)) for m in models], series)
    settings = list(dict.fromkeys(int(n) for n in ([refine_steps] if isinstance(refine_steps, int)
                                                   else list(refine_steps)) or [0]))
    if any(n < 0 for n in settings):
        raise ValueError(f"refine steps must not be negative, got {settings}")
    on_the_fly = specs[len(readers):]
    specs = specs[:len(readers)] + [replace(s, name=s.name if n == 0 else f"{s.name}+refine{n}", refine_steps=n)
                                    for n in settings for s in on_the_fly]
    if not specs and not plan:
        raise ValueError("nothing to measure: give a learned model (archive or model) or a classical codec")
    in_originals = original_ids(originals)
    wanted = [i for i in in_originals if all(i in r for r in readers)]
    if not wanted:
        raise ValueError(f"no image of {originals} is in every archive ({', '.join(map(str, archives))})"
                         if readers else f"no images in {originals}")
    if progress and len(wanted) < len(in_originals):
        progress(f"report: {len(in_originals) - len(wanted)} originals are missing from an archive and are left "
                 f"out, so every codec is measured on the same images")
    use_ray = use_ray and ray.is_initialized()
    sources = list(zip(specs, readers + [None] * (len(specs) - len(readers))))
    jobs = ((item_id, data, [(spec, None if r is None else r.item(item_id)) for spec, r in sources], plan)
            for item_id, data in iter_originals(originals, set(wanted)))
    rows, errors = _measure(jobs, len(wanted), use_ray, progress, "first pass")

    bpp_range = learned_range(summarize(rows))
    for round_ in range(MAX_EXTEND_ROUNDS if extend_sweeps and bpp_range else 0):
        extra = extend_plan(summarize(rows), plan, bpp_range)
        if not extra:
            break
        if progress:
            progress(f"report: sweep round {round_ + 1}: adding {', '.join(f'{n} q{q:g}' for n, q in extra)} "
                     f"to cover {bpp_range[0]:.3f}–{bpp_range[1]:.3f} bpp")
        plan += extra
        jobs = ((item_id, data, [], extra) for item_id, data in iter_originals(originals, set(wanted)))
        more_rows, more_errors = _measure(jobs, len(wanted), use_ray, progress, f"sweep round {round_ + 1}")
        rows, errors = rows + more_rows, errors + more_errors

    position = {item_id: i for i, item_id in enumerate(wanted)}
    codec_order = {name: i for i, name in enumerate(dict.fromkeys([s.name for s in specs] + [n for n, _ in plan]))}
    rows.sort(key=lambda r: (position[r["id"]], codec_order[r["codec"]], r["quality"]))
    header = {
        "archives": ", ".join(f"`{a}` ({len(r)} items)" for a, r in zip(archives, readers)) or "none",
        "learned models": "; ".join(f"{s.model} → series {s.name} (λ {fmt(s.lmbda, 4)}, id `{s.model_id}`, "
                                    f"{'archive' if r else 'encoded on the fly'}"
                                    f"{f', latents refined {s.refine_steps} steps' if s.refine_steps else ''})"
                                    for s, r in sources) or "none",
        "originals": f"`{Path(originals)}`",
        "images": f"{len(wanted)} measured ({len(in_originals) - len(wanted)} originals not in every archive)",
        "classical codecs": ", ".join(dict.fromkeys(n for n, _ in plan)) or "none",
    }
    if min_points != MIN_RATE_POINTS:
        header["BD rate points"] = (f"at least {min_points} per curve (below the usual {MIN_RATE_POINTS}: "
                                    "indicative only)")
    return _write_outputs(Path(out_dir), rows, errors, header, plan, bpp_range, reference_series, len(wanted),
                          started, min_points)


def _write_outputs(out_dir: Path, rows, errors, header, plan, bpp_range, references, images, started,
                   min_points: int) -> ReportResult:
    summary = summarize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows_path = write_table(rows, ROW_SCHEMA, out_dir / "rows.parquet")
    summary_path = write_table(summary, SUMMARY_SCHEMA, out_dir / "summary.parquet")
    by_metric = {metric: curves(summary, metric) for metric in METRICS}
    bd = bd_table(by_metric, min_points)
    bd_parquet = write_table(bd_records(bd), BD_SCHEMA, out_dir / "bd.parquet")
    bd_json = write_json(bd_records(bd), out_dir / "bd.json")
    learned = list(dict.fromkeys(r["codec"] for r in summary if r["kind"] == "learned"))
    title = f"{', '.join(learned) or 'classical codecs'}{' vs classical codecs' if learned else ''}, {images} images"
    plots = [plot_rd(by_metric["mean_psnr_db"], "PSNR (dB, RGB)", out_dir / "rd_psnr.png", title,
                     reference_points(references, "psnr_db"))]
    msssim_path = None
    if any(row["ms_ssim_images"] for row in summary):
        msssim_path = plot_rd(by_metric["mean_ms_ssim"], "MS-SSIM (RGB)", out_dir / "rd_msssim.png", title,
                              reference_points(references, "ms_ssim"))
        plots.append(msssim_path)
    coverage = coverage_notes(summary, plan, bpp_range)
    header = {**header, "generated": f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by "
                                     f"latentzip {latentzip.__version__} in {time.perf_counter() - started:.1f} s"}
    markdown = write_markdown(summary, header, errors, plots, out_dir / "report.md", bd, coverage, references)
    html = report_html.write_html(out_dir / "report.html", header, summary, bd, plots, rows, errors, coverage,
                                  references)
    return ReportResult(out_dir, rows_path, summary_path, markdown, plots[0], msssim_path, len(rows), images,
                        errors, bd_parquet, bd_json, html, bd, coverage)
