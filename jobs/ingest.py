"""``latentzip ingest FOLDER --out SHARDS``: a folder of images -> Parquet shards.

Every file below FOLDER is decoded once; readable images go into ``shard-NNNNN.parquet`` (id = path
relative to FOLDER, the original bytes, width, height, source), unreadable ones into ``errors.parquet`` with
the reason. Only regular files are read (FIFOs, devices and sockets are listed as unreadable), links only
to files inside FOLDER (unless --follow-symlinks), files of at most --max-file-bytes. Rerunning rewrites
the same shards. FOLDER and SHARDS may be fsspec URLs (s3://...).
"""

from __future__ import annotations

import argparse

from latentzip.jobs.arguments import Parser, add_input_options, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip ingest", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="folder of images, searched recursively (hidden files skipped); a path or "
                                       "an fsspec URL (s3://bucket/photos)")
    parser.add_argument("--out", required=True, help="output folder for the shards: a path or an fsspec URL")
    parser.add_argument("--images-per-shard", type=int, default=256,
                        help="rows per shard: the unit of work of later jobs (default 256)")
    parser.add_argument("--threads", type=int, default=4, help="threads decoding images (default 4)")
    add_input_options(parser)
    return parser



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline import storage
    from latentzip.pipeline.shards import ingest

    try:
        result = ingest(args.folder, args.out, images_per_shard=args.images_per_shard, workers=args.threads,
                        max_file_bytes=args.max_file_bytes, follow_symlinks=args.follow_symlinks)
    except (FileNotFoundError, ValueError) as exc:
        return fail("ingest", exc)
    print(f"ingested {result.images} images into {len(result.shards)} shards in {result.out_dir}; "
          f"{result.errors} unreadable files listed in {storage.join(result.out_dir, 'errors.parquet')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
