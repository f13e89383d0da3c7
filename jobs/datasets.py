"""``latentzip datasets digits OUT``: export a data set that ships with a package to an image folder.

digits: scikit-learn's 1,797 handwritten digits (8x8, 17 grey levels) as grey PNGs, OUT/train/<label>/ and
OUT/test/<label>/ (a stratified split, 1,500 / 297, seeded); train with `latentzip train OUT/train --arch
gaussian-vae ...`. --size enlarges them (bilinear). Fashion-MNIST is not exported (see docs).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser

DATASETS = ("digits",)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip datasets", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=DATASETS, help="data set to export")
    parser.add_argument("out", type=Path, help="folder to write (train/ and test/ below it)")
    parser.add_argument("--size", type=int, default=8, help="side of the PNGs in pixels (default 8, as shipped)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/test split (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.datasets import export_digits

    try:
        summary = export_digits(args.out, size=args.size, seed=args.seed)
    except (ValueError, OSError) as exc:
        print(f"latentzip datasets: error: {exc}", file=sys.stderr)
        return 2
    print(f"digits: {summary['train']} training and {summary['test']} held-out images of {args.size}x{args.size} "
          f"written to {args.out}/train and {args.out}/test")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
