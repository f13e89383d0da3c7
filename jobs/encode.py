"""``latentzip encode SHARDS --model MODEL --archive ARCHIVE``: compress shards into a Zarr archive.

Runs on Ray Data: an actor pool of encoders (one GPU each when the cluster has GPUs, else one CPU each,
with one CPU left for reading), the driver appending results to the archive. Images that cannot be
decoded or encoded are recorded in the archive's failures, not fatal. Rerunning the same command skips
ids already in the archive.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentzip encode", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("shards", type=Path, help="ingest output folder (Parquet shards) or one shard file")
    parser.add_argument("--model", required=True,
                        help="learned codec: a codec directory written by `latentzip train`, or a zoo name")
    parser.add_argument("--archive", required=True, type=Path,
                        help="Zarr archive to create or append to (must have been written by the same model)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encoder call (default 16)")
    parser.add_argument("--concurrency", type=int,
                        help="encoder actors (default: one per GPU, else one per CPU but one)")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.encoding import encode
    from latentzip.pipeline.raycluster import ensure_ray

    try:
        ensure_ray(address=args.address)
        summary = encode(args.shards, args.archive, args.model, batch_size=args.batch_size,
                         concurrency=args.concurrency)
    except (ArchiveError, FileNotFoundError, ValueError) as exc:
        print(f"latentzip encode: error: {exc}", file=sys.stderr)
        return 2
    print(summary.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
