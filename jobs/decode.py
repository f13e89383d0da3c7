"""``latentzip decode ARCHIVE --id ID [-o out.png]``, several ``--id``, ``--range START:STOP`` or ``--all``.

One id as PNG decodes in this process and reads only that item. Several ids, a range of archive
positions (the archive's ids in commit order, as `--list` prints them; Python slice rules, e.g. 0:100,
100:, -10:) or --all decode in this process when they are a handful (24 or fewer left to do), else in
parallel on Ray: into DIR/<id>.png (a rerun skips PNGs already written),
or with --format parquet into one Parquet file of PNG bytes (columns id, png, width, height). The model is
the one named in the archive's provenance, checked against the model id the archive records, unless
--model names another copy of it (the model id must match); a remote model location (http://, s3://,
...) named by the archive is never fetched unless asked for: --model URL, or --allow-model-url PREFIX.

Exit status: 0 when every id decoded; 3 when some ids (or damaged segments of the archive) could not be
decoded in a batch: each is listed with its reason, every other id is decoded, and the counts are printed
(ids that cannot name a file inside the output folder, such as ../x, an absolute path, x//y.jpg, an empty
or non-UTF-8 id, or one too long for a file name, are failures of that id); 2 when nothing could start:
a missing id, a model that is not available, a corrupt item or a stream that does not decode (single id),
or bad arguments. Errors name the id. --list exits 3 too when segments or rows of the archive cannot be
listed (each printed with its reason; the ids that can be are printed).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser, add_model_options, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip decode", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="archive written by `latentzip encode`: a folder or an fsspec URL (s3://...)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="id to decode (repeatable); ids are the paths relative to the ingested folder")
    which.add_argument("--range", metavar="START:STOP",
                       help="archive positions to decode (ids in commit order, as --list prints them)")
    which.add_argument("--all", action="store_true", help="decode every image in the archive")
    which.add_argument("--list", action="store_true", help="print the archive's ids and stop")
    parser.add_argument("--format", choices=("png", "parquet"), default="png",
                        help="png: one PNG file per id (default); parquet: one Parquet file of PNG bytes")
    parser.add_argument("-o", "--out", type=Path,
                        help="output: a .png file for a single --id, else a folder (default ./decoded), or the "
                             ".parquet file with --format parquet (default ./decoded.parquet)")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    add_model_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.bitstream import BitstreamError
    from latentzip.pipeline.archive import ArchiveError, ItemNotFoundError, is_utf8
    from latentzip.pipeline.decoding import DecodeError, decode_to_file, open_archive, output_path
    from latentzip.pipeline.decoding_job import decode_archive, parse_range

    try:
        archive = open_archive(args.archive, model=args.model, allow_model_urls=args.allow_model_url)
        if args.list:
            listed, problems = archive.listing()
            for item_id in listed:
                print(item_id if is_utf8(item_id) else ascii(item_id))
            for where, problem in problems.items():
                print(f"  cannot list {where!r}: {problem}", file=sys.stderr)
            return 3 if problems else 0
        positions = parse_range(args.range) if args.range else None
        single = args.ids and len(args.ids) == 1 and args.format == "png"
        if single and (args.out is None or args.out.suffix.lower() == ".png"):
            target = args.out or output_path(Path("."), args.ids[0])
            print(f"decoded {args.ids[0]} to {decode_to_file(archive, args.ids[0], target)}")
            return 0
        default = Path("decoded.parquet" if args.format == "parquet" else "decoded")
        summary = decode_archive(archive, args.out or default, ids=args.ids, positions=positions,
                                 format=args.format, address=args.address)
    except (ArchiveError, ItemNotFoundError, BitstreamError, DecodeError, OSError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else exc
        return fail("decode", message)
    print(summary.describe())
    for item_id, error in summary.failures.items():
        print(f"  failed {item_id!r}: {error}", file=sys.stderr)
    return 3 if summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
