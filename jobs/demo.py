"""``latentzip demo``: the whole pipeline on the bundled sample photos, on an embedded local Ray.

ingest -> encode into a Zarr archive with the zoo's default codec (or, with --train, a small codec
trained here first: 2 Ray Train workers, a few minutes on CPU) -> decode every image -> rate-distortion
report beside JPEG, WebP, JPEG 2000, AVIF and JPEG XL. Rerunning resumes or skips finished stages.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from latentzip.jobs.arguments import Parser


def sample_folder() -> Path:
    return Path(str(resources.files("latentzip.jobs") / "samples"))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip demo", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("latentzip-demo"),
                        help="output folder (default ./latentzip-demo)")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of images to use instead of the bundled samples")
    parser.add_argument("--model", default=None,
                        help="codec to use: a zoo name or a codec directory (default: the zoo's default model)")
    parser.add_argument("--train", action="store_true",
                        help="train a small codec on the images first and use it (the whole pipeline)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps (default 2000: about 4 minutes on 2 cores)")
    parser.add_argument("--workers", type=int, default=2, help="Ray Train workers (default 2)")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs of the embedded Ray (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.decoding import decode_archive
    from latentzip.pipeline.encoding import encode
    from latentzip.pipeline.raycluster import ensure_ray
    from latentzip.pipeline.report import report
    from latentzip.pipeline.shards import ingest
    from latentzip.codecs.registry import DEFAULT_ZOO_MODEL, zoo_models
    from latentzip.pipeline.training import TrainConfig, train

    started = time.perf_counter()
    out = args.out.resolve()
    images = args.images or sample_folder()

    def stage(name: str) -> None:
        print(f"\n== {name} ({time.perf_counter() - started:.0f} s) ==", flush=True)

    ensure_ray(num_cpus=args.num_cpus)
    stage(f"ingest {images}")
    # The bundled samples are the package's own files: links into the source tree in an editable install.
    shards = ingest(images, out / "shards", images_per_shard=4, follow_symlinks=args.images is None)
    model = args.model
    if args.train or (model is None and DEFAULT_ZOO_MODEL not in zoo_models()):
        stage(f"train a small codec with {args.workers} Ray Train workers")
        config = TrainConfig(N=64, M=96, lmbda=0.025, batch_size=4, patch_size=128, steps=args.steps,
                             checkpoint_every=max(1, args.steps // 4), num_workers=args.workers,
                             max_side=512, lr=5e-4, aux_lr=1e-2, log_every=100)
        model = str(train(shards.out_dir, out / "demo-codec", config).codec_dir)
    model = model or DEFAULT_ZOO_MODEL
    stage(f"encode into a Zarr archive on Ray Data with {model}")
    summary = encode(shards.out_dir, out / "archive.zarr", model, batch_size=4)
    print(summary.describe())
    stage("decode every image on Ray")
    decoded = decode_archive(out / "archive.zarr", out / "decoded")
    print(decoded.describe())
    stage("rate-distortion report")
    result = report(out / "archive.zarr", shards.out_dir, out / "report")
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(f"  codec:          {model}")
    print(f"  archive:        {out / 'archive.zarr'}  ({summary.images + summary.skipped} images)")
    print(f"  decoded images: {out / 'decoded'}")
    print(f"  report:         {result.markdown}")
    print(f"  RD plot:        {result.rd_psnr}")
    return 0 if not decoded.failures else 1


if __name__ == "__main__":
    raise SystemExit(main())
