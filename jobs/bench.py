"""``latentzip bench BENCHMARK ...``: measure learned codecs on a folder of images, in this process.

Benchmarks:
  rd    the learned models (default: every zoo model) on a folder (default: ../shared/data/photos/val):
        BD-rate against JPEG 4:2:0, WebP, AVIF and JPEG 2000 (a full report beside the output file), and
        the integer vs the float entropy parameters of the same weights (bpp, PSNR, speed, BD-rate)
        (e.g. ``latentzip bench rd --out rd.md`` or ``latentzip bench rd runs/q*/codec --images photos/ --out rd.md``)
  encode  encode throughput vs CompressAI's per-image path, archive overhead, peak memory, and open +
        lookup time of a 10,000-image archive (``latentzip bench encode --out encode.md``)
  train Ray Train images/s against a plain single-process loop of the same step, model and batch
        (e.g. ``latentzip bench train photos/train --out train.md``)
  anomaly  bpp as an anomaly score: AUROC and precision at 90 % recall, normal photos against constructed
        anomalies, beside a PNG-size baseline (``latentzip bench anomaly --model M --out anomaly.md``); with a
        gaussian-vae (``--model digits-vae``): -ELBO, held-out digits against rotated and inverted digits,
        noise and letters, beside PCA-error and PNG baselines
  digits  a gaussian-vae's samples labelled by a classifier of real digits: the fraction labelled with
        probability >= 0.9 and the class histogram (``latentzip bench digits --model digits-vae --out d.md``)
  decode  one-id decode from a 10,000-image archive vs the bare model decode, bytes read per lookup, and
        batch decode images/s on Ray (``latentzip bench decode --out decode.md``)
  serve  `latentzip serve` under a bounded load on 127.0.0.1: requests/s and latency with dynamic batching on
        and off, beside a static server of the same PNGs (``latentzip bench serve --out serve.md``)
  read  images/s a DataLoader gets from an archive vs JPEG and PNG folders, bytes on disk
        (``latentzip bench read --out read.md``)
  archive-commit  what one archive commit costs at 10, 100 and 1,000 units: flat in the number of units
        (``latentzip bench archive-commit --out commit.md``)
  startup  cold start: `latentzip --help`, `zoo`, `zoo show`, a one-id decode of a 768x512 image and
        `import latentzip.api`, each in fresh processes, median of 5 (``latentzip bench startup --out startup.md``)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from latentzip.jobs.arguments import Parser, fail


#: Where the project's validation photos live, relative to a checkout (users pass --images).
DEFAULT_IMAGES = Path("../shared/data/photos/val")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip bench", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmarks = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    rd = benchmarks.add_parser("rd", help="learned models against classical codecs, and integer vs float",
                               description="BD-rate of the learned models against classical codecs (a full "
                                           "report in OUT's folder), and each model with integer and with float "
                                           "entropy parameters: rate, distortion and speed.")
    rd.add_argument("codecs", nargs="*", metavar="MODEL",
                    help="zoo names or codec directories, several lambda points of one architecture for BD-rate "
                         "(default: every zoo model)")
    rd.add_argument("--images", type=Path, default=DEFAULT_IMAGES,
                    help=f"folder of images, searched recursively (default {DEFAULT_IMAGES})")
    rd.add_argument("--out", required=True, type=Path,
                    help="FILE.json (all figures) or FILE.md (tables); the classical report goes to FILE-report/")
    rd.add_argument("--against", default="jpeg,webp,avif,avif444,jpegxl",
                    help="classical codecs for BD-rate, comma-separated, or 'none' (default jpeg,webp,avif,avif444,"
                         "jpegxl: WebP at method 6, AVIF at Pillow's defaults (speed 6, 4:2:0) and at speed 4 "
                         "4:4:4, JPEG XL at its default effort)")
    rd.add_argument("--max-side", type=int, help="shrink images so their longer side is at most this")
    rd.add_argument("--max-batch", type=int, default=16, help="images per encoder/decoder call (default 16)")
    rd.add_argument("--repeats", type=int, default=3, help="timed runs per codec and mode; the best counts (default 3)")
    rd.add_argument("--refine-steps", type=_steps_list, default=[0], metavar="N[,N...]",
                    help="also measure the models with latent refinement of N steps at encode, one series each, "
                         "with encode seconds per megapixel (default 0: the plain encoder only)")

    tr = benchmarks.add_parser("train", help="Ray Train throughput vs a plain training loop",
                               description="Time the same training step in a plain loop and in Ray Train.")
    tr.add_argument("data", type=Path, help="training images (folder) or ingest shards")
    tr.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    tr.add_argument("--config", type=Path, metavar="FILE.toml", help="training settings, as for latentzip train")
    tr.add_argument("--arch", help="default mean-scale-hyperprior (the zoo's)")
    tr.add_argument("--N", type=int, help="default 64")
    tr.add_argument("--M", type=int, help="default 96")
    tr.add_argument("--batch-size", type=int, help="default 4")
    tr.add_argument("--patch-size", type=int, help="default 128")
    tr.add_argument("--lr", type=float, help="learning rate (default 1e-4)")
    tr.add_argument("--steps", type=int, default=500, help="timed steps per run (default 500)")
    tr.add_argument("--checkpoint-every", type=int,
                    help="Ray Train checkpoints (each with a ray.train.report) every this many steps, as a real "
                         "run would (default 500, the zoo's)")
    tr.add_argument("--threads", default="1",
                    help="torch threads per process / CPUs per worker (default 1; with --variants a list, e.g. 1,2)")
    tr.add_argument("--workers", type=int, default=2, help="also time a DDP run with this many workers (default 2)")
    tr.add_argument("--repeats", type=int, default=3, help="alternated runs of each loop; the fastest counts (default 3)")
    tr.add_argument("--variants", metavar="V[,V...]",
                    help="instead: the training step's variants (fp32, bf16, channels-last, bf16+channels-last) "
                         "timed in a plain loop at each --threads (which then takes a list, e.g. 1,2), and "
                         "with --ab-steps trained from the same weights on the same crops and validated")
    tr.add_argument("--ab-steps", type=int, default=0,
                    help="with --variants: train each variant this many steps and compare RD on --val (default 0: no A/B)")
    tr.add_argument("--init-from", metavar="CODEC",
                    help="with --variants: start the A/B from this codec's weights, architecture and lambda")
    tr.add_argument("--val", type=Path, help="with --ab-steps: validation images")
    tr.add_argument("--concurrent", type=int, default=0,
                    help="with --variants: also time this many fp32 loops at once in separate processes")

    encode = benchmarks.add_parser("encode", help="encode images/s vs CompressAI; archive overhead; lookup time",
                                   description="Encode images/s of the learned codec against CompressAI's own per-image path, "
                                               "the archive's overhead in bytes, peak memory, and the open + lookup "
                                               "time of a 10,000-image archive (latentzip.pipeline.bench.encode).")
    encode.add_argument("--model", help="codec directory or zoo name (default: a fixed-seed N=128/M=192 model)")
    encode.add_argument("--images", type=Path, help="folder of images (default: crops of the bundled samples)")
    encode.add_argument("--count", type=int, default=48, help="images to time (default 48)")
    encode.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    encode.add_argument("--max-batch", type=int, default=16, help="images per compress call (default 16)")
    encode.add_argument("--repeat", type=int, default=1,
                        help="time every path this many times, report the median (default 1)")
    encode.add_argument("--overhead-images", type=int, default=0,
                        help="measure archive overhead on this many images (extra crops encoded for it only; "
                             "default: the timed images)")
    encode.add_argument("--profile", action="store_true",
                        help="also time each encode stage per batch (decode, pad, g_a, h_a, z coding, h_s, "
                             "y coding, pack, archive write), for fp32 and bf16 g_a")
    encode.add_argument("--lookup-images", type=int, default=10_000,
                        help="images in the lookup archive (default 10000; 0 skips it)")
    encode.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    anomaly = benchmarks.add_parser("anomaly", help="bpp as an anomaly score: AUROC against a PNG baseline",
                                    description="Normal photos against constructed anomalies (noise, heavy JPEG, "
                                                "text screenshots, saturated, cartoons); see "
                                                "latentzip.pipeline.bench.anomaly.")
    anomaly.add_argument("--model", required=True, help="learned codec: a codec directory or a zoo name")
    anomaly.add_argument("--normal", type=Path, default=Path("/work/shared/data/photos/val"),
                         help="folder of normal photos (default /work/shared/data/photos/val)")
    anomaly.add_argument("--out", required=True, type=Path, help="FILE.json (all figures) or FILE.md (table)")
    anomaly.add_argument("--max-side", type=int, default=384, help="shrink photos to this longer side (default 384)")
    anomaly.add_argument("--recall", type=float, default=0.9, help="recall for the precision figure (default 0.9)")
    anomaly.add_argument("--seed", type=int, default=0, help="gaussian-vae: seed of the noise images (default 0)")
    digits = benchmarks.add_parser("digits", help="are a gaussian-vae's samples digits? a classifier of real digits says",
                                   description="A classifier trained only on the real training digits (held-out "
                                               "accuracy reported) labels samples drawn from the model: the fraction "
                                               "with max probability >= --threshold and the class histogram "
                                               "(latentzip.pipeline.bench.digits).")
    digits.add_argument("--model", required=True, help="a gaussian-vae trained on the digits (e.g. digits-vae)")
    digits.add_argument("-n", "--samples", type=int, default=1000, help="samples to label (default 1000)")
    digits.add_argument("--temperature", type=float, default=1.0, help="scale of the prior (default 1)")
    digits.add_argument("--seed", type=int, default=0, help="seed of the samples (default 0)")
    digits.add_argument("--threshold", type=float, default=0.9, help="confidence threshold (default 0.9)")
    digits.add_argument("--classifier", choices=("logreg", "mlp"), default="mlp",
                        help="scikit-learn one-hidden-layer MLP, or logistic regression (default mlp: logistic regression gives "
                             "only 73 %% of the real held-out digits probability >= 0.9)")
    digits.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    decode = benchmarks.add_parser("decode", help="one-id decode vs bare model decode; bytes per lookup; batch images/s",
                                   description="One-id decode from a 10,000-image archive against the bare model decode "
                                               "(fresh and warm), bytes read per lookup, and batch decode images/s "
                                               "on Ray (latentzip.pipeline.bench.decode).")
    decode.add_argument("--archive", type=Path, help="measure this archive instead of building one")
    decode.add_argument("--count", type=int, default=10_000, help="images in the built archive (default 10000)")
    decode.add_argument("--model", help="codec directory or zoo name to build with (default: tiny fixed-seed N=16/M=24)")
    decode.add_argument("--images", type=Path, help="folder of images to build from (default: 64x64 generated crops)")
    decode.add_argument("--trials", type=int, default=20, help="random ids timed (default 20)")
    decode.add_argument("--batch-images", type=int, default=500,
                        help="ids decoded on Ray for images/s (default 500; 0 skips it)")
    decode.add_argument("--threads", type=int, default=1, help="torch threads in this process (default 1)")
    decode.add_argument("--workdir", type=Path, help="where the archive and batch output go (default: a temp folder)")
    decode.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    commit = benchmarks.add_parser("archive-commit", help="ms per archive commit as the number of units grows",
                                   description="One archive per number of units, one segment committed per unit "
                                               "(synthetic bytes, no model): ms per commit, first and last ten, "
                                               "and the size of zarr.json (latentzip.pipeline.bench.archive_commit).")
    commit.add_argument("--units", default="10,100,1000", help="comma-separated unit counts (default 10,100,1000)")
    commit.add_argument("--versions", default="4",
                        help="archive formats to write, comma-separated (default 4; 3 writes provenance into "
                             "zarr.json as format 3 did)")
    commit.add_argument("--workdir", type=Path, help="where the archives go (default: a temp folder)")
    commit.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    startup = benchmarks.add_parser("startup", help="cold-start seconds of common commands, fresh processes",
                                    description="Wall-clock seconds from a fresh process to the end of `latentzip "
                                                "--help`, `latentzip zoo`, `latentzip zoo show`, a one-id decode of "
                                                "a 768x512 image and `import latentzip.api`; the median of --repeats "
                                                "runs each (latentzip.pipeline.bench.startup).")
    startup.add_argument("--repeats", type=int, default=5, help="fresh processes per command (default 5)")
    startup.add_argument("--workdir", type=Path, help="where the archive goes (default: a temp folder)")
    startup.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    add_serve_read(benchmarks)
    return parser


def add_serve_read(benchmarks) -> None:
    sv = benchmarks.add_parser("serve", help="`latentzip serve` under load: batching on vs off, vs static PNG files",
                               description="A bounded load test on 127.0.0.1: concurrent clients for a fixed time "
                                           "against the Serve app with dynamic batching on and off and a static "
                                           "server of the same images as PNG files (latentzip.pipeline.bench.serve).")
    sv.add_argument("--archive", type=Path, help="measure this archive instead of building one")
    sv.add_argument("--model", default="mean-scale-q3", help="codec to build the archive with (default mean-scale-q3)")
    sv.add_argument("--count", type=int, default=256, help="images in the built archive (default 256)")
    sv.add_argument("--size", type=int, default=64, help="side of the built archive's square crops (default 64)")
    sv.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    sv.add_argument("--seconds", type=float, default=20.0, help="length of each timed run (default 20)")
    sv.add_argument("--repeats", type=int, default=2, help="alternated runs per server; the best counts (default 2)")
    sv.add_argument("--max-batch-size", type=int, default=16, help="batch size with batching on (default 16)")
    sv.add_argument("--batch-wait-ms", type=float, default=5.0, help="batch wait with batching on (default 5)")
    sv.add_argument("--workdir", type=Path, help="where the archive and PNG files go (default: a temp folder)")
    sv.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")
    rd = benchmarks.add_parser("read", help="images/s into a training loop: archive vs JPEG and PNG folders",
                               description="Images/s a PyTorch DataLoader delivers from an archive (ArchiveDataset) "
                                           "against the same images as JPEG and PNG files with the same DataLoader "
                                           "settings, and bytes on disk of each (latentzip.pipeline.bench.read).")
    rd.add_argument("--archive", type=Path, help="measure this archive instead of building one")
    rd.add_argument("--model", default="mean-scale-q3", help="codec to build the archive with (default mean-scale-q3)")
    rd.add_argument("--count", type=int, default=256, help="images in the built archive (default 256)")
    rd.add_argument("--size", type=int, default=128, help="side of the built archive's square crops (default 128)")
    rd.add_argument("--batch-size", type=int, default=16, help="DataLoader batch size (default 16)")
    rd.add_argument("--workers", type=int, default=2, help="DataLoader workers (default 2)")
    rd.add_argument("--epochs", type=int, default=2, help="timed epochs per source; the best counts (default 2)")
    rd.add_argument("--jpeg-quality", type=int, default=90, help="quality of the JPEG files (default 90)")
    rd.add_argument("--workdir", type=Path, help="where the archive and files go (default: a temp folder)")
    rd.add_argument("--out", required=True, type=Path, help="FILE.json or FILE.md")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.jobs import bench_runs as run

    if args.benchmark == "startup":
        from latentzip.pipeline.bench.startup import bench_startup, markdown, write_result

        result = bench_startup(repeats=args.repeats, workdir=args.workdir)
        print(markdown(result), end="")
        print(f"written to {write_result(result, args.out)}")
        return 0
    if args.benchmark in ("serve", "read"):
        return run.serve_read(args)
    if args.benchmark == "decode":
        return run.decode(args)
    if args.benchmark == "archive-commit":
        return run.archive_commit(args)
    if args.benchmark == "anomaly":
        return run.anomaly(args)
    if args.benchmark == "digits":
        return run.digits(args)
    if args.benchmark == "encode":
        return run.encode(args)
    if args.benchmark == "train":
        try:
            return run.train(args)
        except (ValueError, FileNotFoundError) as exc:
            return fail("bench train", exc)
    try:
        return run.rd(args)
    except (ValueError, FileNotFoundError) as exc:
        return fail(f"bench {args.benchmark}", exc)


def _steps_list(text: str) -> list[int]:
    from latentzip.jobs.report import _steps_list as parse

    return parse(text)


if __name__ == "__main__":
    raise SystemExit(main())
