"""``latentzip sample --model MODEL -n 16 --out DIR``: draw new images from a learned codec's prior.

Ancestral sampling: hyper-latents from the factorized prior (the entropy bottleneck's quantized tables),
latents from the conditional Gaussian the hyperprior predicts from them, images from the synthesis
transform. Writes ``sample-NN.png`` and ``grid.png``. The same seed gives the same files; ``--temperature``
scales the prior's spread (0: its mode, the same image for every seed). A compression prior models local
statistics: expect textures and colour fields, not objects.

A generative VAE (architecture gaussian-vae, e.g. the zoo's digits-vae) draws u ~ N(0, T^2 I), takes
z = u (or, with the two-stage prior, z = its second stage's decoding of u) and decodes it: new handwritten
digits. Its images have the model's own size (--scale enlarges them, nearest neighbour);
--manifold K, for a model with a 2-D latent (digits-vae-2d), also writes manifold.png, the K x K grid of
images decoded from z at the N(0, 1) quantiles of each axis.
"""

from __future__ import annotations

import argparse
import sys
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
    parser.add_argument("--size", type=parse_size, metavar="HxW",
                        help="sample size in pixels (default 256x256; other than multiples of 64 are cropped); "
                             "not for a gaussian-vae, whose samples have its own size")
    parser.add_argument("--scale", type=int, default=4,
                        help="gaussian-vae: enlarge samples this many times, nearest neighbour (default 4)")
    parser.add_argument("--manifold", type=int, metavar="K",
                        help="gaussian-vae with a 2-D latent: also write manifold.png, K x K decoded grid points")
    parser.add_argument("--columns", type=int, help="grid columns (default: about the square root of -n)")
    parser.add_argument("--out", required=True, type=Path, help="folder for sample-NN.png and grid.png")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.generative import image_grid, sample_prior
    from latentzip.codecs.registry import UnknownCodecError, is_generative, load_learned_codec

    if is_generative(args.model):
        return _sample_vae(args)
    if args.manifold is not None:
        print("latentzip sample: error: --manifold needs a gaussian-vae with a 2-D latent", file=sys.stderr)
        return 2
    args.size = args.size or (256, 256)
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


def _sample_vae(args) -> int:
    from latentzip.codecs.registry import load_generative
    from latentzip.codecs.vae_generative import image_grid, manifold_grid, sample_images

    try:
        if args.size is not None:
            raise ValueError("--size does not apply to a gaussian-vae: its samples have the model's size (--scale)")
        if args.count < 1 or args.scale < 1:
            raise ValueError(f"-n and --scale must be at least 1, got {args.count} and {args.scale}")
        model, card = load_generative(args.model, "sampling")
        model = model.to(args.device)
        images = sample_images(model, args.count, seed=args.seed, temperature=args.temperature, scale=args.scale)
        manifold = manifold_grid(model, args.manifold, args.scale, gap=2) if args.manifold is not None else None
    except ValueError as exc:  # UnknownCodecError and CheckpointError are ValueErrors
        print(f"latentzip sample: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for index, image in enumerate(images):
        image.save(args.out / f"sample-{index:02d}.png")
    columns = args.columns or math.ceil(math.sqrt(len(images)))
    image_grid(images, columns).save(args.out / "grid.png")
    if manifold is not None:
        manifold.save(args.out / "manifold.png")
    side = model.config.image_size
    print(f"{len(images)} samples of {side}x{side} (shown {args.scale}x: {images[0].width}x{images[0].height}, seed "
          f"{args.seed}, temperature {args.temperature:g}) from {args.model} written to {args.out} (grid.png"
          f"{', manifold.png' if manifold is not None else ''})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
