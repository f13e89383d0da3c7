"""``latentzip verify ARCHIVE``: check every item of an archive and report problems per id.

Reads every segment: each item's bytes against its CRC-32C (and zarr's crc32c of every chunk), its
bitstream header (model id, size) against its row, the id -> row index against the items, and the counts
against the group attributes. ``--decode-sample N`` also decodes N ids chosen at random (seeded).

Exit status: 0 no problem; 1 problems (each printed as ``ID: what is wrong``); 2 not an archive.
"""

from __future__ import annotations

import argparse
import sys

from latentzip.jobs.arguments import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip verify", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="archive written by `latentzip encode`: a folder or an fsspec URL (s3://...)")
    parser.add_argument("--decode-sample", type=int, default=0, metavar="N",
                        help="also decode N ids picked at random with the archive's own model (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decode sample (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.verify import verify_archive

    try:
        report = verify_archive(args.archive, decode_sample=args.decode_sample, seed=args.seed)
    except ArchiveError as exc:
        print(f"latentzip verify: error: {exc}", file=sys.stderr)
        return 2
    print(report.describe())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
