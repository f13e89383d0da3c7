"""``latentzip report ARCHIVE [ARCHIVE ...] ORIGINALS --out DIR`` or ``latentzip report --images DIR --model CODEC[,CODEC...] --out DIR``.

Rate-distortion report of learned codecs against classical codecs (JPEG 4:2:0 and 4:4:4, WebP, JPEG 2000,
AVIF, JPEG XL) swept over their qualities, extended until they cover the learned bpp range. Learned models
come from archives (bpp from the bytes they store, their decoded images measured; only images found in
ORIGINALS and in every archive) and/or from --model codecs that encode the images on the fly. Models of
one architecture with distinct training lambdas form one RD curve, for BD-rate and BD-PSNR / BD-MS-SSIM
against every classical codec (needs >= 4 rate points per curve).

Writes DIR/report.html (self-contained: plots embedded), DIR/report.md, DIR/rows.parquet (per image, codec
and quality), DIR/summary.parquet, DIR/bd.parquet and DIR/bd.json, and the RD plots DIR/rd_psnr.png (and
DIR/rd_msssim.png for images of at least 161 px). Measured on Ray (a Ray Data stage, one image per batch)
when a pass is large enough to pay for it, else in this process; --no-ray: always in this process.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from latentzip.codecs.classical import FORMATS

from latentzip.jobs.arguments import Parser, fail


def parse_codecs(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in FORMATS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown codec(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    return names


def parse_qualities(text: str) -> dict[str, list[float]]:
    """``jpeg=20,50,80;webp=30,60`` -> ``{"jpeg": [20, 50, 80], "webp": [30, 60]}``."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep or name not in FORMATS:
            raise argparse.ArgumentTypeError(f"expected CODEC=Q1,Q2,... with CODEC one of {', '.join(FORMATS)}, got {part!r}")
        try:
            numbers = [float(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"qualities of {name} must be numbers, got {values!r}") from None
        if not numbers:
            raise argparse.ArgumentTypeError(f"no qualities given for {name}")
        out[name] = [int(q) if q.is_integer() else q for q in numbers]
    return out


def bd_lines(bd) -> list[str]:
    """One printed line per BD entry: ``BD <learned> vs <anchor> [metric]: rate +x %, quality +y``."""
    out = []
    for row in bd:
        if row.note and "needs" in row.note:
            out.append(f"BD {row.learned} vs {row.anchor} [{row.metric}]: n/a ({row.note})")
            continue
        rate = "n/a" if math.isnan(row.bd_rate_pct) else f"{row.bd_rate_pct:+.1f} %"
        quality = "n/a" if math.isnan(row.bd_quality) else f"{row.bd_quality:+.4f}"
        out.append(f"BD {row.learned} vs {row.anchor} [{row.metric}]: BD-rate {rate}, BD-quality {quality}"
                   + (f" ({row.note})" if row.note else ""))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="latentzip report", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", metavar="ARCHIVE ... ORIGINALS",
                        help="latentzip archives (.zarr folders written by the encode job), then the original images: "
                             "ingest's folder of Parquet shards, one shard, or the folder of images that was "
                             "ingested (ids are paths relative to it)")
    parser.add_argument("--images", metavar="DIR",
                        help="a folder of images (or ingest shards) to encode on the fly with --model, instead of "
                             "positional ORIGINALS")
    parser.add_argument("--model", dest="models", action="append", default=[], metavar="CODEC[,CODEC...]",
                        help="learned codec (trained codec directory or zoo name) that encodes the images on the fly; "
                             "repeatable, or comma-separated")
    parser.add_argument("--series", metavar="NAME",
                        help="name every learned model as points of one RD curve NAME (default: models sharing an "
                             "architecture with distinct lambdas form one curve named after it)")
    parser.add_argument("--reference", dest="references", action="append", default=[], type=Path, metavar="FILE.json",
                        help="labelled reference RD series drawn on the plots (CompressAI results JSON or "
                             "{label, source, bpp, psnr_db, ms_ssim}); repeatable")
    parser.add_argument("--min-points", type=int, default=4, metavar="N",
                        help="fewest rate points per curve for a BD delta (default 4; fewer gives an indicative "
                             "number, flagged in the report)")
    parser.add_argument("--no-extend", action="store_true",
                        help="keep the quality sweeps as given even if they do not cover the learned bpp range")
    parser.add_argument("--out", required=True, type=Path, help="output folder for report.md, Parquet tables and plots")
    parser.add_argument("--codecs", type=parse_codecs, default=list(FORMATS), metavar="jpeg,webp,...",
                        help=f"classical codecs to compare against (default: all of {','.join(FORMATS)})")
    parser.add_argument("--qualities", type=parse_qualities, metavar="'jpeg=20,50,80;webp=30,60'",
                        help="override the quality sweep of some codecs (default: each codec's built-in sweep)")
    parser.add_argument("--refine-steps", type=_steps_list, default=[0], metavar="N[,N...]",
                        help="with --model: refine each image's latents for N steps before coding (codecs/refine.py); "
                             "several values give one series each, e.g. 0,200 (default 0: the plain encoder)")
    parser.add_argument("--no-ray", action="store_true", help="measure in this process, never on Ray")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def _steps_list(text: str) -> list[int]:
    try:
        values = [int(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative step counts, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.cluster import ensure_ray
    from latentzip.pipeline.report.run import report

    models = [m.strip() for text in args.models for m in text.split(",") if m.strip()]
    if args.images is not None:
        if args.inputs:
            print("latentzip report: error: give either --images DIR or positional ARCHIVE ... ORIGINALS, not both",
                  file=sys.stderr)
            return 2
        archives, originals = [], args.images
    elif len(args.inputs) >= 2 or (args.inputs and models):
        archives, originals = args.inputs[:-1], args.inputs[-1]
    else:
        print("latentzip report: error: expected ARCHIVE ... ORIGINALS, or ORIGINALS / --images DIR with --model",
              file=sys.stderr)
        return 2
    try:
        if not args.no_ray:
            ensure_ray(address=args.address)
        result = report(archives, originals, args.out, classical=args.codecs, qualities=args.qualities,
                        use_ray=False if args.no_ray else None, models=models, series=args.series, references=args.references,
                        extend_sweeps=not args.no_extend, min_points=args.min_points,
                        refine_steps=args.refine_steps)
    except (ValueError, FileNotFoundError) as exc:  # unknown codecs and bad archives are ValueErrors
        return fail("report", exc)
    print(f"measured {result.images} images: {result.rows} rows, {len(result.errors)} failures")
    for note in result.coverage:
        print(f"sweep: {note.replace('**', '')}")
    for line in bd_lines(result.bd):
        print(line)
    print(f"report: {result.html}")
    print(f"        {result.markdown}")
    print(f"plots:  {', '.join(str(p) for p in (result.rd_psnr, result.rd_msssim) if p)}")
    print(f"tables: {result.rows_parquet}, {result.summary_parquet}, {result.bd_parquet}, {result.bd_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
