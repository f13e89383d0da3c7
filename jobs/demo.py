"""``latentzip demo``: the whole pipeline on the bundled sample photos, on an embedded local Ray.

ingest -> encode into a Zarr archive with the zoo's default codec (or, with --train, a small codec
trained here first: 2 Ray Train workers, a few minutes on CPU) -> decode every image -> rate-distortion
report beside JPEG, WebP, JPEG 2000, AVIF and JPEG XL, with the zoo's other rate points encoded on the fly so
the BD-rate table is filled, and one sentence on where the learned codec stands against WebP and AVIF on
these images. Rerunning resumes or skips finished stages.
"""

from __future__ import annotations

import argparse
import time
from importlib import resources
from pathlib import Path

from latentzip.jobs.arguments import Parser

#: The small codec the demo trains when asked (--train) or when the zoo is missing: a few minutes on 2 cores.
DEMO_TRAIN_RECIPE = {"N": 64, "M": 96, "lmbda": 0.025, "batch_size": 4, "patch_size": 128, "max_side": 512,
                     "lr": 5e-4, "aux_lr": 1e-2, "log_every": 100}


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
    from latentzip.pipeline.decoding_job import decode_archive
    from latentzip.pipeline.encoding import encode
    from latentzip.pipeline.cluster import ensure_ray
    from latentzip.pipeline.report.run import report
    from latentzip.pipeline.shards import ingest
    from latentzip.codecs.registry import DEFAULT_ZOO_MODEL, zoo_models
    from latentzip.pipeline.training.config import build_config
    from latentzip.pipeline.training.trainer import train

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
        config = build_config({"steps": args.steps, "checkpoint_every": max(1, args.steps // 4),
                               "num_workers": args.workers}, recipe=DEMO_TRAIN_RECIPE)
        model = str(train(shards.out_dir, out / "demo-codec", config).codec_dir)
    model = model or DEFAULT_ZOO_MODEL
    stage(f"encode into a Zarr archive on Ray Data with {model}")
    summary = encode(shards.out_dir, out / "archive.zarr", model, batch_size=4)
    print(summary.describe())
    stage("decode every image on Ray")
    decoded = decode_archive(out / "archive.zarr", out / "decoded")
    print(decoded.describe())
    stage("rate-distortion report")
    # The archive holds one rate point; the zoo's other models of the same architecture complete the curve.
    others = [] if args.train else [name for name in zoo_siblings(model) if name != model]
    result = report(out / "archive.zarr", shards.out_dir, out / "report", models=others)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s")
    print(f"  codec:          {model}")
    print(f"  archive:        {out / 'archive.zarr'}  ({summary.images + summary.skipped} images)")
    print(f"  decoded images: {out / 'decoded'}")
    print(f"  report:         {result.markdown}")
    print(f"  RD plot:        {result.rd_psnr}")
    print(f"  BD-rate table:  {result.out_dir / 'report.md'} (and report.html)")
    print("\n" + standing(result.bd, result.images))
    return 0 if not decoded.failures else 1


def zoo_siblings(model: str) -> list[str]:
    """The zoo models of ``model``'s architecture and widths (its other rate points), or none."""
    from latentzip.codecs.card import read_card
    from latentzip.codecs.registry import zoo_models

    def shape(path) -> tuple:
        config = read_card(path)["config"]
        return config.get("arch"), config.get("N"), config.get("M")

    zoo = zoo_models()
    if model not in zoo:
        return []
    return [name for name, path in zoo.items() if shape(path) == shape(zoo[model])]


def standing(bd: list, images: int) -> str:
    """One sentence: the learned curve's BD-rate at equal PSNR against WebP and AVIF."""
    import math

    rows = {row.anchor: row for row in bd if row.metric == "mean_psnr_db" and math.isfinite(row.bd_rate_pct)}
    if not rows:
        return "No BD-rate could be computed (it needs 4 rate points of each curve over a common range)."
    learned = next(iter(rows.values())).learned
    parts = []
    for anchor, label in (("webp", "WebP"), ("avif", "AVIF (Pillow's default, speed 6, 4:2:0)"),
                          ("avif444", "AVIF (speed 4, 4:4:4)")):
        if anchor in rows:
            value = rows[anchor].bd_rate_pct
            parts.append(f"{abs(value):.1f} % {'fewer' if value < 0 else 'more'} bits than {label}")
    return (f"On these {images} images the learned codec ({learned}) needs " + ", ".join(parts)
            + " at equal PSNR (BD-rate; negative is better for the learned codec).")


if __name__ == "__main__":
    raise SystemExit(main())
