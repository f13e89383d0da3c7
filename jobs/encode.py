"""``latentzip encode INPUTS --model MODEL --archive ARCHIVE``: compress images into a Zarr archive.

INPUTS is the Parquet shards written by `latentzip ingest` (their folder, or one shard file), or a folder
of image files, encoded directly (no ingest step): its files, in sorted order, form units of work of
--files-per-unit files each; an id is the file's path relative to the folder.

Runs on Ray Data: an actor pool of encoders (one GPU each when the cluster has GPUs, else one CPU each,
with one CPU left for Ray Data's own tasks), the driver writing each shard to the archive once, then its
completion marker. Images that cannot be decoded or encoded are recorded in the archive's errors table,
not fatal, as are entries of an image folder that are not read (only regular files, links only to files
inside the folder unless --follow-symlinks, at most --max-file-bytes, names in UTF-8). Rerunning the same command skips units already written (and says so when nothing is new).

Exit status: 0 every image encoded; 3 the job completed but some images failed (the summary counts them
by reason; `latentzip verify ARCHIVE` lists each); 2 the job could not run.
"""

from __future__ import annotations

import argparse

from latentzip.jobs.arguments import Parser, add_input_options, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip encode", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs",
                        help="ingest output folder (Parquet shards), one shard file, or a folder of images: a "
                             "path or an fsspec URL (s3://bucket/photos)")
    parser.add_argument("--model", required=True,
                        help="learned codec: a zoo name, or a codec directory written by `latentzip train` (a "
                             "path or a URL)")
    parser.add_argument("--archive", required=True,
                        help="Zarr archive to create or append to: a folder or an fsspec URL (s3://bucket/a.zarr; "
                             "must have been written by the same model)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per encoder call (default 16)")
    parser.add_argument("--concurrency", type=int,
                        help="encoder actors (default: one per GPU, else one per CPU but one)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="arithmetic of the analysis transform g_a (bf16: faster on CPUs with AVX-512-BF16, "
                             "slightly different rate; entropy parameters stay exact either way)")
    parser.add_argument("--refine-steps", type=int, default=0, metavar="N",
                        help="refine each image's latents for N gradient steps before coding (latent refinement, "
                             "Yang et al. 2020): fewer bits at equal quality for the same decoder and format, at "
                             "many times the encode time; 0 is the plain encoder (default)")
    parser.add_argument("--files-per-unit", type=int, default=256,
                        help="image folders only: files per unit of work (default 256); keep it the same "
                             "when rerunning a command, or the units differ and the rerun only skips by id")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    add_input_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.encoding import encode

    try:  # every argument is checked before Ray starts, and Ray starts only if there is work
        summary = encode(args.inputs, args.archive, args.model, batch_size=args.batch_size,
                         concurrency=args.concurrency, precision=args.precision,
                         files_per_unit=args.files_per_unit, refine_steps=args.refine_steps, address=args.address,
                         max_file_bytes=args.max_file_bytes, follow_symlinks=args.follow_symlinks)
    except (ArchiveError, FileNotFoundError, ValueError) as exc:
        return fail("encode", exc)
    print(summary.describe())
    return 3 if summary.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
