"""``latentzip verify ARCHIVE``: check every item of an archive and report problems per id.

Reads every segment: each item's bytes against its CRC-32C (and zarr's crc32c of every chunk), its
bitstream header (model id, size) against its row, the id -> row index against the items, and the counts
against the group attributes, and that the archive's model loads and is the one that wrote it (a remote
model is not fetched unless --model or --allow-model-url asks for it). ``--decode-sample N`` also decodes
N ids chosen at random (seeded). A damaged archive never stops the check: whatever cannot be read is
reported (per id, ``<segment N>``, ``<index>``, ``<items>`` ...) and the rest is still checked. Format 2
archives checksum each item's bytes but not its id (a note says so); format 3 binds them.

Exit status: 0 no problem; 1 problems (each printed as ``ID: what is wrong``); 2 not an archive (or a
format version this release does not read).
"""

from __future__ import annotations

import argparse

from latentzip.jobs.arguments import Parser, add_model_options, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip verify", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="archive written by `latentzip encode`: a folder or an fsspec URL (s3://...)")
    parser.add_argument("--decode-sample", type=int, default=0, metavar="N",
                        help="also decode N ids picked at random with the archive's own model (default 0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the decode sample (default 0)")
    add_model_options(parser, "check and decode")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.decoding import verify_with_model

    try:
        report = verify_with_model(args.archive, decode_sample=args.decode_sample, seed=args.seed, model=args.model,
                                   allow_model_urls=args.allow_model_url)
    except ArchiveError as exc:
        return fail("verify", exc)
    except Exception as exc:  # noqa: BLE001 - a check that itself failed is a finding, never a traceback
        print(f"<verify>: the check stopped: {type(exc).__name__}: {exc}\nverify {args.archive}: PROBLEMS")
        return 1
    print(report.describe())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
