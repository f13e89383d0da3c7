"""``python -m latentzip.jobs.report ARCHIVE ORIGINALS --out DIR``: rate-distortion report of an archive.

Measures the archive's learned codec (bpp from the bytes it stores, PSNR and MS-SSIM of its decoded
images) against classical codecs swept over their qualities, on the images found in both ARCHIVE and
ORIGINALS. Writes DIR/report.md, DIR/rows.parquet, DIR/summary.parquet and the RD plots DIR/rd_psnr.png
(and DIR/rd_msssim.png for images of at least 161 px). One Ray task per image, unless --no-ray.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.codecs.classical import FORMATS


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="latentzip-report", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help="latentzip archive (a .zarr folder written by the encode job)")
    parser.add_argument("originals", type=Path,
                        help="the original images: ingest's folder of Parquet shards, one shard, or the folder of "
                             "images that was ingested (ids are paths relative to it)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for report.md, Parquet tables and plots")
    parser.add_argument("--codecs", type=parse_codecs, default=list(FORMATS), metavar="jpeg,webp,...",
                        help=f"classical codecs to compare against (default: all of {','.join(FORMATS)})")
    parser.add_argument("--qualities", type=parse_qualities, metavar="'jpeg=20,50,80;webp=30,60'",
                        help="override the quality sweep of some codecs (default: each codec's built-in sweep)")
    parser.add_argument("--no-ray", action="store_true", help="measure in this process instead of Ray tasks")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.raycluster import ensure_ray
    from latentzip.pipeline.report import report

    try:
        if not args.no_ray:
            ensure_ray(address=args.address)
        result = report(args.archive, args.originals, args.out, classical=args.codecs,
                        qualities=args.qualities, use_ray=not args.no_ray)
    except (ValueError, FileNotFoundError) as exc:
        print(f"latentzip-report: error: {exc}", file=sys.stderr)
        return 2
    print(f"measured {result.images} images: {result.rows} rows, {len(result.errors)} failures")
    print(f"report: {result.markdown}")
    print(f"plots:  {', '.join(str(p) for p in (result.rd_psnr, result.rd_msssim) if p)}")
    print(f"tables: {result.rows_parquet}, {result.summary_parquet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
