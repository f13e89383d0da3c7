"""``latentzip bench BENCHMARK ...``: measure learned codecs on a folder of images, in this process.

Benchmarks:
  rd    integer vs float entropy parameters of the same weights: bpp (from bytes written), PSNR,
        encode/decode seconds, and BD-rate/BD-PSNR when four or more rate points are given
        (e.g. ``latentzip bench rd runs/q1/codec runs/q2/codec ... photos/val --out rd.md``)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentzip bench", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    rd = benchmarks.add_parser("rd", help="integer vs float entropy parameters of the same weights",
                               description="Encode and decode every image with each codec in integer and in "
                                           "float mode; compare rate, distortion and speed.")
    rd.add_argument("codecs", nargs="+", type=Path, metavar="CODEC_DIR",
                    help="codec directories (several lambda points of one architecture for BD-rate)")
    rd.add_argument("images", type=Path, help="folder of images (searched recursively)")
    rd.add_argument("--out", required=True, type=Path, help="FILE.json (all figures) or FILE.md (tables)")
    rd.add_argument("--max-side", type=int, help="shrink images so their longer side is at most this")
    rd.add_argument("--max-batch", type=int, default=16, help="images per encoder/decoder call (default 16)")
    rd.add_argument("--repeats", type=int, default=3, help="timed runs per codec and mode; the best counts (default 3)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.benchmarks import rd_benchmark, write_rd

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        result = rd_benchmark(args.codecs, args.images, max_side=args.max_side, max_batch=args.max_batch,
                              repeats=args.repeats)
        path = write_rd(result, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"latentzip bench {args.benchmark}: error: {exc}", file=sys.stderr)
        return 2
    print(result.table())
    print(f"written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
