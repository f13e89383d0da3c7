"""``latentzip decode ARCHIVE --id ID -o out.png`` or ``latentzip decode ARCHIVE --all -o DIR``.

One id with ``-o FILE.png`` decodes in this process and reads only that item. Several ids, or ``--all``,
decode in parallel on Ray into ``DIR/<id>.png``; a rerun skips PNGs already written. The model is the one
named in the archive's provenance, checked against the model id the archive records.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentzip decode", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", type=Path, help="archive written by `latentzip encode`")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", dest="ids", action="append", metavar="ID",
                       help="id to decode (repeatable); ids are the paths relative to the ingested folder")
    which.add_argument("--all", action="store_true", help="decode every image in the archive")
    which.add_argument("--list", action="store_true", help="print the archive's ids and stop")
    parser.add_argument("-o", "--out", type=Path,
                        help="output: a .png file for a single --id, else a folder (default ./decoded)")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.bitstream import BitstreamError
    from latentzip.pipeline.archive import ArchiveError, ItemNotFoundError, open_archive
    from latentzip.pipeline.decoding import decode_archive, decode_to_file, output_path

    try:
        archive = open_archive(args.archive)
        if args.list:
            print("\n".join(archive.ids))
            return 0
        if args.ids and len(args.ids) == 1 and (args.out is None or args.out.suffix.lower() == ".png"):
            target = args.out or output_path(Path("."), args.ids[0])
            print(f"decoded {args.ids[0]} to {decode_to_file(archive, args.ids[0], target)}")
            return 0
        from latentzip.pipeline.raycluster import ensure_ray

        ensure_ray(address=args.address)
        summary = decode_archive(args.archive, args.out or Path("decoded"), ids=None if args.all else args.ids)
    except (ArchiveError, ItemNotFoundError, BitstreamError, FileNotFoundError, ValueError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) else exc
        print(f"latentzip decode: error: {message}", file=sys.stderr)
        return 2
    print(summary.describe())
    for item_id, error in summary.failures.items():
        print(f"  failed {item_id}: {error}", file=sys.stderr)
    return 1 if summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
