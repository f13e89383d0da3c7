"""RD against training steps: the zoo's learning curve on a set of photos (docs/training.md).

    python docs/learning_curve.py --images ../shared/data/photos/test \\
        --anchors rd-report/summary.parquet --out docs/learning-curve.json \\
        5000=/path/to/zoo-at-5000 20000=/path/to/zoo-at-20000 ...

Each ``STEPS=FOLDER`` holds the four rate points of the zoo (``mean-scale-q2`` ... ``mean-scale-q5``, codec
directories) as they were after STEPS training steps (earlier zoos come out of git history:
``git show <commit>:codecs/zoo/mean-scale-q3/model.safetensors``). Every image is encoded with the public
API (``LearnedCodec.encode``, the plain encoder), bpp from the bytes, PSNR from the decoded image, means
over images as in the report; the anchors (WebP, AVIF, ...) come from a ``bench rd``/``report`` summary of
the same images, so the BD-rates here match the report's table.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pyarrow.parquet as pq

from latentzip.codecs.images import load_image
from latentzip.codecs.learned import LearnedCodec
from latentzip.codecs.metrics import psnr_db
from latentzip.pipeline.report.bdrate import bd_delta

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".ppm", ".bmp", ".tif", ".tiff"}


def measure(folder: Path, images: list) -> list[tuple[float, float]]:
    points = []
    for codec_dir in sorted(p for p in folder.iterdir() if (p / "codec.json").is_file()):
        codec = LearnedCodec.from_path(codec_dir)
        bpps, psnrs = [], []
        for image in images:
            data = codec.encode(image)
            bpps.append(len(data) * 8 / (image.width * image.height))
            psnrs.append(psnr_db(image, codec.decode(data)))
        points.append((sum(bpps) / len(bpps), sum(psnrs) / len(psnrs)))
    return sorted(points)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zoos", nargs="+", metavar="STEPS=FOLDER")
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--anchors", type=Path, required=True, help="summary.parquet of a report on the same images")
    parser.add_argument("--against", default="webp,avif444,avif,jpeg,jpegxl")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    images = [load_image(str(p)) for p in sorted(args.images.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    summary = pq.read_table(args.anchors).to_pylist()
    anchors = {name: sorted((r["mean_bpp"], r["mean_psnr_db"]) for r in summary if r["codec"] == name)
               for name in args.against.split(",")}
    rows = []
    for spec in args.zoos:
        steps, folder = spec.split("=", 1)
        points = measure(Path(folder), images)
        row = {"steps": int(steps), "points": points,
               **{f"bd_vs_{name}": bd_delta(anchor, points)[0] for name, anchor in anchors.items() if anchor}}
        rows.append(row)
        print(f"{steps:>7} steps: " + ", ".join(f"{b:.4f} bpp / {p:.2f} dB" for b, p in points) + " | "
              + ", ".join(f"vs {k[6:]} {v:+.1f} %" for k, v in row.items() if k.startswith("bd_vs_")
                          and not math.isnan(v)), flush=True)
    args.out.write_text(json.dumps({"images": str(args.images), "count": len(images), "curve": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
