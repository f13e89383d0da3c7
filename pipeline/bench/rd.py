"""Benchmarks of learned codecs, measured in this process (no Ray, so timings are of the codec alone).

``rd``: the integer and float entropy parameters of the same weights (docs/determinism.md). For every codec
directory (typically several lambda points of one architecture) both modes encode and decode every image;
bpp comes from the bytes written, PSNR from the decoded 8-bit images, seconds from the wall clock. With four
or more rate points of one architecture the modes are compared by Bjontegaard deltas (BD-rate, BD-PSNR,
Akima interpolation); with fewer, model by model (rate and PSNR difference of the same weights, which
decode to nearly the same images, so the rate difference is at almost equal distortion).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from PIL import Image

from latentzip.codecs.bitstream import unpack
from latentzip.codecs.images import load_image
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.metrics import psnr_db
from latentzip.pipeline.sources import local_images

MODES = ("integer", "float")
#: Rate points needed for Bjontegaard deltas with Akima interpolation.
BD_MIN_POINTS = 4


@dataclass
class ModeResult:
    """One codec in one entropy-parameter mode over all images; bpp and PSNR are means over images."""
    model: str
    arch: str
    mode: str
    model_id: str
    lmbda: float
    images: int
    num_bytes: int
    bpp: float
    psnr_db: float
    encode_s: float
    decode_s: float
    prior_s: float = math.nan  # the entropy-parameter computation alone (h_s from the z symbols), all images
    per_image: list[dict] = field(default_factory=list, repr=False)


@dataclass
class RDBenchmark:
    images: list[str]
    results: list[ModeResult]
    comparison: dict

    def to_dict(self) -> dict:
        return {"benchmark": "rd", "images": self.images, "results": [asdict(r) for r in self.results],
                "comparison": self.comparison}

    def table(self) -> str:
        """Markdown table of the results, then the comparison."""
        lines = ["| model | mode | λ | bpp | PSNR (dB) | encode (s) | decode (s) | bytes |",
                 "|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            lines.append(f"| {r.model} | {r.mode} | {_fmt(r.lmbda, 4)} | {r.bpp:.5f} | {r.psnr_db:.4f} | "
                         f"{r.encode_s:.3f} | {r.decode_s:.3f} | {r.num_bytes} |")
        lines.append("")
        c = self.comparison
        if c.get("bd_rate_pct") is not None:
            left_out = f"; left out, below the curve: {', '.join(c['bd_dropped'])}" if c.get("bd_dropped") else ""
            lines.append(f"BD-rate of integer vs float ({len(c['bd_models'])} rate points, Akima): "
                         f"{c['bd_rate_pct']:+.4f} %; BD-PSNR {c['bd_psnr_db']:+.5f} dB{left_out}")
        elif c.get("bd_error"):
            lines.append(f"BD deltas not computed: {c['bd_error']}")
        lines.append("")
        lines.append("| model | Δbpp integer vs float | ΔPSNR (dB) | encode time ratio | decode time ratio "
                     "| prior s (integer / float) | identical streams |")
        lines.append("|---|---|---|---|---|---|---|")
        for m in c["per_model"]:
            prior = m.get("prior_s", {})
            lines.append(f"| {m['model']} | {m['rate_diff_pct']:+.4f} % | {m['psnr_diff_db']:+.5f} | "
                         f"{m['encode_time_ratio']:.3f} | {m['decode_time_ratio']:.3f} | "
                         f"{prior.get('integer', math.nan):.3f} / {prior.get('float', math.nan):.3f} | "
                         f"{m['identical_streams']}/{m['images']} |")
        return "\n".join(lines)


def load_images(folder: str | Path, max_side: int | None = None) -> list[tuple[str, Image.Image]]:
    """Every readable image below ``folder`` (id = relative path), shrunk to ``max_side`` if given."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no image folder at {folder}")
    images = []
    for path in local_images(folder):
        try:
            image = load_image(path.read_bytes())
        except Exception:  # noqa: BLE001 - not an image: benchmarks skip it
            continue
        if max_side:
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        images.append((path.relative_to(folder).as_posix(), image))
    if not images:
        raise ValueError(f"no readable images in {folder}")
    return images


def rd_benchmark(codec_dirs: list[str | Path], folder: str | Path, max_side: int | None = None,
                 max_batch: int = 16, repeats: int = 3, progress=print) -> RDBenchmark:
    """Measure every codec directory in both modes on the images of ``folder``; times are the best of
    ``repeats`` runs (other processes only ever add time)."""
    named = load_images(folder, max_side)
    names, images = [n for n, _ in named], [im for _, im in named]
    results = []
    for directory in codec_dirs:
        streams_by_mode = {}
        for mode in MODES:
            codec = LearnedCodec.from_path(directory, entropy_params=mode, max_batch=max_batch)
            result, streams = _measure(codec, Path(directory), names, images, repeats)
            results.append(result)
            streams_by_mode[mode] = streams
            progress(f"{result.model} [{mode}]: {result.bpp:.4f} bpp, {result.psnr_db:.3f} dB, "
                     f"encode {result.encode_s:.2f} s, decode {result.decode_s:.2f} s")
        _count_identical(results[-2:], streams_by_mode)
    return RDBenchmark(names, results, compare(results))


def _measure(codec: LearnedCodec, directory: Path, names: list[str], images: list[Image.Image], repeats: int):
    codec.decode(codec.encode(images[0]))  # first-call costs (allocations, tables) stay out of the timings
    encode_s = decode_s = math.inf
    for _ in range(max(1, repeats)):
        started = time.perf_counter()
        streams = codec.encode_batch(images)
        encode_s = min(encode_s, time.perf_counter() - started)
        started = time.perf_counter()
        decoded = codec.decode_batch(streams)
        decode_s = min(decode_s, time.perf_counter() - started)
    prior_s = _time_prior(codec, images, repeats)
    per_image = [{"id": name, "num_bytes": len(data), "bpp": len(data) * 8 / (im.width * im.height),
                  "psnr_db": psnr_db(im, out)} for name, im, data, out in zip(names, images, streams, decoded)]
    model = directory.resolve().parent.name if directory.name == "codec" else directory.name
    result = ModeResult(
        model=model, arch=codec.config.arch, mode=codec.config.entropy_params, model_id=codec.model_id.hex(),
        lmbda=_lmbda(codec.card), images=len(images), num_bytes=sum(len(s) for s in streams),
        bpp=_mean([r["bpp"] for r in per_image]), psnr_db=_mean([r["psnr_db"] for r in per_image]),
        encode_s=encode_s, decode_s=decode_s, prior_s=prior_s, per_image=per_image)
    return result, streams


def _time_prior(codec: LearnedCodec, images: list[Image.Image], repeats: int) -> float:
    """Best-of-``repeats`` seconds of ``entropy_parameters`` over every image's z symbols: the one step in
    which the two modes differ, timed without the transforms and the range coder around it."""
    import torch

    from latentzip.codecs.images import pad_to_multiple, to_rgb8, to_tensor

    model = codec.model
    with torch.no_grad():
        symbols = [model.analyse(pad_to_multiple(to_tensor(to_rgb8(image))[None], model.stride).to(codec.device)).z_symbols
                   for image in images]
        model.entropy_parameters(symbols[0])  # derivation and first-call costs stay out
        best = math.inf
        for _ in range(max(1, repeats)):
            started = time.perf_counter()
            for z_symbols in symbols:
                model.entropy_parameters(z_symbols)
            best = min(best, time.perf_counter() - started)
    return best


def _count_identical(pair: list[ModeResult], streams_by_mode: dict) -> None:
    """Mark, per image, whether both modes wrote the same entropy-coded strings (the container differs
    anyway: it carries the model id)."""
    for i, (a, b) in enumerate(zip(streams_by_mode["integer"], streams_by_mode["float"])):
        same = unpack(a).strings == unpack(b).strings
        for result in pair:
            result.per_image[i]["identical_strings"] = same


def compare(results: list[ModeResult]) -> dict:
    """Integer vs float: per model, and by Bjontegaard deltas when there are enough rate points."""
    by_model = {}
    for r in results:
        by_model.setdefault(r.model, {})[r.mode] = r
    per_model = []
    for model, modes in by_model.items():
        integer, floating = modes["integer"], modes["float"]
        per_model.append({
            "model": model, "lmbda": integer.lmbda, "images": integer.images,
            "rate_diff_pct": 100.0 * (integer.bpp / floating.bpp - 1.0) if floating.bpp else math.nan,
            "psnr_diff_db": integer.psnr_db - floating.psnr_db,
            "encode_time_ratio": integer.encode_s / floating.encode_s if floating.encode_s else math.nan,
            "decode_time_ratio": integer.decode_s / floating.decode_s if floating.decode_s else math.nan,
            "prior_s": {"integer": integer.prior_s, "float": floating.prior_s},
            "identical_streams": sum(bool(p.get("identical_strings")) for p in integer.per_image),
        })
    comparison = {"per_model": per_model, "points": len(by_model), "bd_rate_pct": None, "bd_psnr_db": None}
    archs = {r.arch for r in results}
    if len(by_model) < BD_MIN_POINTS:
        comparison["bd_error"] = f"{len(by_model)} rate point(s); Bjontegaard deltas need {BD_MIN_POINTS}"
    elif len(archs) > 1:
        comparison["bd_error"] = f"rate points of several architectures ({', '.join(sorted(archs))})"
    else:
        comparison.update(_bd(by_model))
    return comparison


def _bd(by_model: dict) -> dict:
    """BD-rate and BD-PSNR of the integer curve against the float curve. Bjontegaard integration needs a
    rate-distortion curve whose PSNR rises with the rate; a briefly trained model can sit below the curve
    of the others (more bits, less PSNR), so models off the float curve's monotone front are left out of
    both curves (and named)."""
    import bjontegaard

    models = sorted(by_model, key=lambda m: by_model[m]["float"].bpp)
    kept, best = [], -math.inf
    for model in models:
        if by_model[model]["float"].psnr_db > best:
            kept.append(model)
            best = by_model[model]["float"].psnr_db
    dropped = [m for m in models if m not in kept]
    result = {"bd_models": kept, "bd_dropped": dropped}
    if len(kept) < BD_MIN_POINTS:
        return {**result, "bd_error": f"only {len(kept)} rate points rise in PSNR with the rate "
                                      f"({', '.join(dropped)} left out); Bjontegaard deltas need {BD_MIN_POINTS}"}
    points = {mode: [(by_model[m][mode].bpp, by_model[m][mode].psnr_db) for m in kept] for mode in MODES}
    anchor, test = points["float"], points["integer"]
    try:
        args = ([r for r, _ in anchor], [d for _, d in anchor], [r for r, _ in test], [d for _, d in test])
        return {**result, "bd_rate_pct": float(bjontegaard.bd_rate(*args, method="akima")),
                "bd_psnr_db": float(bjontegaard.bd_psnr(*args, method="akima"))}
    except (ValueError, ZeroDivisionError) as exc:  # e.g. an integer curve that is not monotonic
        return {**result, "bd_error": f"{type(exc).__name__}: {exc}"}


def write_rd(result: RDBenchmark, out: str | Path, classical=None) -> Path:
    """``out`` ending in .json gets the full figures (per image too), .md the tables. ``classical``: the
    :class:`~latentzip.pipeline.report.run.ReportResult` of the same models against classical codecs, whose BD
    table is included (its plots, rows and HTML stay in the report's folder)."""
    from latentzip.pipeline.report.bdrate import bd_markdown, bd_records

    out = Path(out)
    if out.suffix not in (".json", ".md"):
        raise ValueError(f"--out must end in .json or .md, got {out.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".json":
        document = result.to_dict()
        if classical is not None:
            document["classical"] = {"report": str(classical.out_dir), "bd": bd_records(classical.bd),
                                     "refinement": refinement_table(classical)}
        out.write_text(json.dumps(document, indent=2, allow_nan=True) + "\n")
        return out
    parts = []
    if classical is not None:
        parts += ["# Learned vs classical codecs", "",
                  f"{classical.images} images; BD-rate at equal PSNR / MS-SSIM (negative: the learned model needs "
                  f"fewer bits). Plots, per-image rows and the HTML page: `{classical.out_dir}`.", "",
                  *bd_markdown(classical.bd), "", f"![RD plot]({classical.rd_psnr})", ""]
    refinement = refinement_table(classical) if classical is not None else []
    if refinement:
        parts += ["# Encoder-side latent refinement", "",
                  "Each series refined at encode (codecs/refine.py) against the plain encoder, same models and images: "
                  "BD-rate at equal PSNR (negative: fewer bits), and encode seconds per megapixel (the wall time of "
                  "encode calls in the report's tasks, running side by side, so compare rows, not machines).", "",
                  "| series | refine steps | BD-rate vs plain (PSNR) | encode s/MP |", "|---|---:|---:|---:|",
                  *(f"| {r['series']} | {r['refine_steps']} | {_signed(r['bd_rate_pct'])} | {r['encode_s_per_mp']:.2f} |"
                    for r in refinement), ""]
    parts += ["# Integer vs float entropy parameters", "",
              f"{len(result.images)} images; bpp from the bytes written.", "", result.table()]
    out.write_text("\n".join(parts) + "\n")
    return out


def refinement_table(classical) -> list[dict]:
    """Per learned series of the report: its refine steps, BD-rate against the same models unrefined, and
    encode seconds per megapixel. Empty when the report has no refined series."""
    import pyarrow.parquet as pq

    from latentzip.pipeline.report.bdrate import bd_delta
    from latentzip.pipeline.report.summary import curves, summarize

    rows = [r for r in pq.read_table(classical.rows_parquet).to_pylist() if r["kind"] == "learned"]
    names = list(dict.fromkeys(r["codec"] for r in rows))
    if not any("+refine" in name for name in names):
        return []
    points = curves(summarize(rows))
    out = []
    for name in names:
        base, _, steps = name.partition("+refine")
        mine = [r for r in rows if r["codec"] == name]
        seconds, pixels = sum(r["encode_s"] for r in mine), sum(r["width"] * r["height"] for r in mine)
        bd = (bd_delta([p[:2] for p in points[base]["points"]], [p[:2] for p in points[name]["points"]])[0]
              if base in points and name in points else math.nan)
        out.append({"series": name, "refine_steps": int(steps or 0), "bd_rate_pct": 0.0 if not steps else bd,
                    "encode_s_per_mp": seconds / (pixels / 1e6) if pixels else math.nan})
    return out


def _signed(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:+.1f} %"


def _lmbda(document: dict) -> float:
    card = document.get("card") or {}
    for source in (card.get("training"), card.get("config"), card):
        if isinstance(source, dict) and isinstance(source.get("lmbda"), (int, float)):
            return float(source["lmbda"])
    return math.nan


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _fmt(value: float, digits: int) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}g}"
