"""``latentzip score INPUT --model MODEL --out DIR``: bits per pixel as an anomaly score, on Ray.

INPUT is an ingest output folder (Parquet shards) or a folder of images. Every image is encoded (nothing is
stored) and gets its bpp from the bytes of its bitstream, the same bytes ``latentzip encode`` writes, with
the real latent / hyper-latent string rates and estimated rates per channel group. An image is flagged when
its bpp exceeds a threshold calibrated on ``--reference`` (a folder, ingest output or archive of normal
images; default: the input itself) by a percentile or a robust z-score. Writes ``rows.parquet``,
``calibration.json`` and ``heatmaps/`` (the ``--top-k`` highest-bpp images beside their rate maps).

``latentzip score --archive ARCHIVE --out DIR`` screens an encoded archive from its stored bytes alone: no
model, no re-encoding (a ``--reference`` that is not an archive still needs ``--model``).

With a generative VAE (gaussian-vae, e.g. digits-vae) the score is -ELBO in bits per pixel per image
(pipeline/vae_scoring.py), for a folder of images, computed here without Ray; the threshold is calibrated
in the same way.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip score", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", nargs="?", help="ingest output folder, shard file or image folder (a path or an "
                                                   "fsspec URL, s3://...)")
    parser.add_argument("--archive", help="score this archive's stored items instead of INPUT (a path or a URL)")
    parser.add_argument("--model", help="learned codec: a codec directory or a zoo name (needed for INPUT)")
    parser.add_argument("--out", required=True, type=Path, help="folder for rows.parquet, calibration.json, heatmaps/")
    calibration = parser.add_argument_group("calibration")
    calibration.add_argument("--reference", type=Path,
                             help="normal images to calibrate the threshold on: folder, ingest output or archive")
    calibration.add_argument("--calibration", type=Path, metavar="JSON",
                             help="reuse a calibration.json from an earlier run (same model) instead")
    calibration.add_argument("--method", choices=("percentile", "robust-z"), default="percentile",
                             help="threshold: a percentile of the reference bpp, or median + Z x 1.4826 MAD "
                                  "(default percentile)")
    calibration.add_argument("--percentile", type=float, default=99.0, help="for --method percentile (default 99)")
    calibration.add_argument("--z", type=float, default=3.5, help="for --method robust-z (default 3.5)")
    parser.add_argument("--top-k", type=int, default=8, help="heat maps for this many highest-bpp images (default 8)")
    parser.add_argument("--groups", type=int, default=4, help="latent channel groups for est_bpp_gK (default 4)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per scorer call (default 8)")
    parser.add_argument("--refine-steps", type=int, default=0, metavar="N",
                        help="with INPUT: score the streams that `encode --refine-steps N` writes (default 0)")
    parser.add_argument("--concurrency", type=int, help="scorer actors (default: one per GPU, else one per CPU but one)")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.input is None) == (args.archive is None):
        parser.error("give either INPUT (with --model) or --archive")
    if args.input is not None and not args.model:
        parser.error("scoring INPUT needs --model")
    from latentzip.codecs.registry import UnknownCodecError, is_generative

    if args.model and is_generative(args.model):
        return _score_vae(args, parser)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.scoring import Calibration, score, score_archive

    common = {"reference": args.reference, "method": args.method, "percentile": args.percentile, "z": args.z}
    try:
        calibration = Calibration.load(args.calibration) if args.calibration else None
        if args.archive is not None:
            if args.reference is not None and args.model:
                _ensure_ray(args.address)
            summary = score_archive(args.archive, args.out, calibration=calibration, model_ref=args.model, **common)
        else:
            _ensure_ray(args.address)
            summary = score(args.input, args.model, args.out, calibration=calibration, top_k=args.top_k,
                            groups=args.groups, batch_size=args.batch_size, concurrency=args.concurrency,
                            refine_steps=args.refine_steps, **common)
    except (ArchiveError, UnknownCodecError, FileNotFoundError, ValueError) as exc:
        return fail("score", exc)
    print(summary.describe())
    return 0


def _score_vae(args, parser) -> int:
    from latentzip.pipeline.scoring import Calibration
    from latentzip.pipeline.vae_scoring import describe, score_vae

    if args.archive is not None:
        parser.error(f"{args.model} is a gaussian-vae: it writes no bitstreams, so there is no archive of it to "
                     f"score; give a folder of images")
    try:
        calibration = Calibration.load(args.calibration) if args.calibration else None
        result = score_vae(args.input, args.model, args.out, reference=args.reference, calibration=calibration,
                           method=args.method, percentile=args.percentile, z=args.z)
    except (FileNotFoundError, ValueError) as exc:
        print(f"latentzip score: error: {exc}", file=sys.stderr)
        return 2
    print(describe(args.out, *result))
    return 0


def _ensure_ray(address: str | None) -> None:
    from latentzip.pipeline.cluster import ensure_ray

    ensure_ray(address=address)


if __name__ == "__main__":
    raise SystemExit(main())
