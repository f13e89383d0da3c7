"""``latentzip sample --model MODEL -n 16 --out DIR``: draw new images from a learned codec's prior.

Ancestral sampling: hyper-latents from the factorized prior (the entropy bottleneck's quantized tables),
latents from the conditional Gaussian the hyperprior predicts from them, images from the synthesis
transform. Writes ``sample-NN.png`` and ``grid.png``. The same seed gives the same files; ``--temperature``
scales the prior's spread (0: its mode, the same image for every seed). A compression prior models local
statistics: expect textures and colour fields, not objects.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from latentzip.jobs.arguments import Parser, fail


def parse_size(text: str) -> tuple[int, int]:
    """``"HxW"`` (or one number for a square) -> (height, width)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH in pixels, e.g. 256x384, got {text!r}")
    return parts[0], parts[1]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip sample", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="learned codec: a codec directory or a zoo name")
    parser.add_argument("-n", "--count", type=int, default=16, help="number of samples (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="scale of the prior's spread: 1 the model's prior, 0 its mode (default 1)")
    parser.add_argument("--size", type=parse_size, default=(256, 256), metavar="HxW",
                        help="sample size in pixels (default 256x256; other than multiples of 64 are cropped)")
    parser.add_argument("--columns", type=int, help="grid columns (default: about the square root of -n)")
    parser.add_argument("--out", required=True, type=Path, help="folder for sample-NN.png and grid.png")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.generative import image_grid, sample_prior
    from latentzip.codecs.registry import UnknownCodecError, load_learned_codec

    try:
        codec = load_learned_codec(args.model, "sampling", device=args.device)
        if args.count < 1:
            raise ValueError(f"-n must be at least 1, got {args.count}")
        height, width = args.size
        images = sample_prior(codec, args.count, height, width, seed=args.seed, temperature=args.temperature)
    except (UnknownCodecError, ValueError) as exc:
        return fail("sample", exc)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(args.out / f"sample-{index:02d}.png")
    columns = args.columns or math.ceil(math.sqrt(len(images)))
    image_grid(images, columns).save(args.out / "grid.png")
    print(f"{len(images)} samples of {height}x{width} (seed {args.seed}, temperature {args.temperature:g}) "
          f"from {codec.name} written to {args.out} (grid.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
