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
halfway towards its range limit, measured in another pass, for up to :data:`~latentzip.pipeline.report.sweeps.MAX_EXTEND_ROUNDS` rounds; the
report lists which codecs cover the range and which stop at their quality limit.

Distortion is measured against the original after :func:`~latentzip.codecs.images.load_image` (the same
conversion policy every codec sees): ``psnr_db`` over RGB with peak 255 and ``ms_ssim`` (NaN for images
with a side under 161 px). The work is :class:`~latentzip.pipeline.report.measure.MeasureStage` over the
originals' Ray Data dataset (one image per batch, a pool of actors that load each model once) when Ray is
initialised and the pass has at least :data:`RAY_MIN_MEASUREMENTS` measurements (``use_ray=True``: always),
else the same stage in-process.

Outputs in ``out_dir``: ``rows.parquet`` (one row per image, codec and quality: id, kind, codec, quality,
num_bytes, bpp, psnr_db, ms_ssim, encode_s, decode_s, width, height), ``summary.parquet`` (means per codec
and quality), ``bd.parquet`` / ``bd.json`` (BD-rate and BD-PSNR / BD-MS-SSIM of every learned series
against every classical codec, :mod:`latentzip.pipeline.report.bdrate`), ``rd_psnr.png`` and, when any MS-SSIM
is defined, ``rd_msssim.png``, ``report.md`` and a self-contained ``report.html``
(:mod:`latentzip.pipeline.report.html`). Optional reference series (JSON,
:func:`~latentzip.pipeline.report.outputs.load_reference`) are drawn on the plots.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import ray

import latentzip
from latentzip.pipeline.report import html as report_html
from latentzip.pipeline.decoding import open_archive
from latentzip.pipeline.report.bdrate import METRICS, MIN_RATE_POINTS, bd_records, bd_table
from latentzip.pipeline.cluster import actor_plan
from latentzip.pipeline.report.outputs import (fmt, load_reference, plot_rd, reference_points, write_json,
                                               write_markdown, write_table)
from latentzip.pipeline.report.sweeps import MAX_EXTEND_ROUNDS, coverage_notes, extend_plan, learned_range
from latentzip.pipeline import storage
from latentzip.pipeline import sources
from latentzip.pipeline.report.measure import (ALL_CLASSICAL, ROW_SCHEMA, MeasureStage, assign_series, classical_plan,
                                               learned_spec, model_spec)
from latentzip.pipeline.report.summary import BD_SCHEMA, SUMMARY_SCHEMA, curves, summarize


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


def original_ids(location: str | Path) -> list[str]:
    """The ids of the originals (a path or a URL): shard ``id`` column, or the image entries of a folder
    (pipeline/sources.py: paths relative to it, notes beside the photos left out)."""
    source = sources.resolve(location, "originals")
    if source.kind == "images" and storage.is_file(source.location):
        raise ValueError(f"originals {source.location} is a file: give the folder of images or the ingest output")
    return sources.ids(source)


def iter_originals(location: str | Path, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
    """(id, original bytes) for ``wanted`` ids, one shard (or file) in memory at a time."""
    return sources.iter_originals(sources.resolve(location, "originals"), wanted)


#: A pass of fewer measurements (images x codec settings) than this runs in this process when Ray is not
#: asked for outright (``use_ray=None``): starting a Ray Data pipeline and its actors costs ~15 s on the
#: 2-core development machine, about 50 measurements' worth, and the demo's passes are 6 to 160.
RAY_MIN_MEASUREMENTS = 200


def _measure(originals, wanted: list[str], stage: dict, use_ray: bool | None, progress, what: str) -> tuple[list[dict], list[dict]]:
    """Rows and errors of every ``wanted`` original, measured by :class:`MeasureStage` (``stage``: its
    arguments): over the originals' Ray Data dataset in a pool of actors (:func:`actor_plan`, one image per
    batch: each costs seconds), or in this process (``use_ray`` False, or None for a small pass)."""
    if use_ray is None:
        use_ray = len(wanted) * (len(stage["learned"]) + len(stage["plan"])) >= RAY_MIN_MEASUREMENTS
    stage = {**stage, "wanted": wanted}
    if use_ray:
        dataset, _ = sources.dataset(originals)
        pool = actor_plan(len(wanted), use_gpus=False).actors
        batches = dataset.map_batches(MeasureStage, fn_constructor_kwargs=stage, batch_size=1, batch_format="numpy",
                                      compute=ray.data.ActorPoolStrategy(size=pool), num_cpus=1
                                      ).iter_batches(batch_size=None, batch_format="numpy")
    else:
        local = MeasureStage(**stage)
        batches = (local({"id": np.array([item_id], dtype=object), "image": np.array([data], dtype=object)})
                   for item_id, data in iter_originals(originals, set(wanted)))
    rows, errors, done = [], [], 0
    for batch in batches:
        for image_rows, image_errors in zip(batch["rows"], batch["errors"]):
            rows += json.loads(image_rows)
            errors += json.loads(image_errors)
            done += 1
            if progress and (done % 10 == 0 or done == len(wanted)):
                progress(f"report: {what}: {done}/{len(wanted)} images measured "
                         f"({'Ray' if use_ray else 'in-process'}), {len(errors)} failures")
    return rows, errors


def _as_list(value) -> list:
    return [] if value is None else [value] if isinstance(value, (str, Path)) else list(value)


def report(archives, originals: str | Path, out_dir: str | Path, classical=ALL_CLASSICAL,
           qualities: dict[str, list] | None = None, use_ray: bool | None = None, progress=print, *, models=(),
           series: str | None = None, references=(), extend_sweeps: bool = True,
           min_points: int = MIN_RATE_POINTS, refine_steps=(0,)) -> ReportResult:
    """Measure learned models (``archives``: one path or several; ``models``: codecs encoding on the fly)
    and ``classical`` codecs on the images of ``originals`` (and of every archive); write the report.

    ``refine_steps``: for the models encoded on the fly, one series per setting (0: the plain encoder;
    N > 0: latent refinement of N steps, series ``<name>+refine<N>``).

    ``use_ray``: None (default) measures a pass on Ray when Ray is initialised and the pass is large enough
    (:data:`RAY_MIN_MEASUREMENTS`), True whenever Ray is initialised, False never.

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
    use_ray = use_ray if ray.is_initialized() and use_ray is not False else False
    learned = list(zip(specs, readers + [None] * (len(specs) - len(readers))))
    stage = {"learned": specs, "archives": [str(r.path) for r in readers], "plan": plan}
    rows, errors = _measure(originals, wanted, stage, use_ray, progress, "first pass")

    bpp_range = learned_range(summarize(rows))
    for round_ in range(MAX_EXTEND_ROUNDS if extend_sweeps and bpp_range else 0):
        extra = extend_plan(summarize(rows), plan, bpp_range)
        if not extra:
            break
        if progress:
            progress(f"report: sweep round {round_ + 1}: adding {', '.join(f'{n} q{q:g}' for n, q in extra)} "
                     f"to cover {bpp_range[0]:.3f}–{bpp_range[1]:.3f} bpp")
        plan += extra
        more_rows, more_errors = _measure(originals, wanted, {"learned": [], "archives": [], "plan": extra}, use_ray,
                                          progress, f"sweep round {round_ + 1}")
        rows, errors = rows + more_rows, errors + more_errors

    position = {item_id: i for i, item_id in enumerate(wanted)}
    codec_order = {name: i for i, name in enumerate(dict.fromkeys([s.name for s in specs] + [n for n, _ in plan]))}
    rows.sort(key=lambda r: (position[r["id"]], codec_order[r["codec"]], r["quality"]))
    header = {
        "archives": ", ".join(f"`{a}` ({len(r)} items)" for a, r in zip(archives, readers)) or "none",
        "learned models": "; ".join(f"{s.model} → series {s.name} (λ {fmt(s.lmbda, 4)}, id `{s.model_id}`, "
                                    f"{'archive' if r else 'encoded on the fly'}"
                                    f"{f', latents refined {s.refine_steps} steps' if s.refine_steps else ''})"
                                    for s, r in learned) or "none",
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
