"""``latentzip interpolate --model MODEL A B -n 8 --out DIR``: walk the latent space from one image to another.

Both images are encoded, their latents and hyper-latents blended linearly, and each point quantized and
decoded as the codec would: the first frame is the decode of A, the last the decode of B. Size policy: both
are brought to ``--size`` if given, else to A's size (A is then used as it is): each is scaled, keeping its
aspect ratio, to cover that size and centre-cropped. Writes ``frame-NN.png``, ``strip.png`` (the frames in a
row) and, with ``--gif``, ``path.gif``.

A generative VAE (gaussian-vae, e.g. digits-vae) morphs through its latent space instead: the posterior
means of A and B joined by a straight line (--mode linear) or a great circle (--mode spherical, the default:
it keeps the path at the radii the prior puts its mass on), each point decoded; --mode both writes a strip of
two rows, linear above spherical. Frames have the model's size, enlarged --scale times.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser, fail


def build_parser() -> argparse.ArgumentParser:
    from latentzip.jobs.sample import parse_size

    parser = Parser(prog="latentzip interpolate", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path, metavar="A", help="first image file")
    parser.add_argument("b", type=Path, metavar="B", help="last image file")
    parser.add_argument("--model", required=True, help="learned codec: a codec directory or a zoo name")
    parser.add_argument("-n", "--frames", type=int, default=8, help="frames including both ends (default 8)")
    parser.add_argument("--size", type=parse_size, metavar="HxW", help="common size (default: A's size)")
    parser.add_argument("--gif", action="store_true", help="also write path.gif (there and back)")
    parser.add_argument("--out", required=True, type=Path, help="folder for frame-NN.png and strip.png")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--mode", choices=("linear", "spherical", "both"),
                        help="gaussian-vae: path through the latent space (default spherical); a hyperprior "
                             "codec blends linearly")
    parser.add_argument("--scale", type=int, default=4, help="gaussian-vae: enlarge frames (default 4)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.generative import image_grid, interpolate
    from latentzip.codecs.images import UnsupportedImageError, load_image
    from latentzip.codecs.registry import UnknownCodecError, is_generative, load_learned_codec

    if is_generative(args.model):
        return _interpolate_vae(args)
    if args.mode not in (None, "linear"):
        print(f"latentzip interpolate: error: --mode {args.mode} is for a gaussian-vae; a hyperprior codec blends "
              f"its latents linearly", file=sys.stderr)
        return 2
    try:
        codec = load_learned_codec(args.model, "interpolation", device=args.device)
        image_a, image_b = load_image(str(args.a)), load_image(str(args.b))
        size = (args.size[1], args.size[0]) if args.size else None
        frames = interpolate(codec, image_a, image_b, steps=args.frames, size=size)
    except (UnknownCodecError, UnsupportedImageError, FileNotFoundError, ValueError) as exc:
        return fail("interpolate", exc)
    args.out.mkdir(parents=True, exist_ok=True)
    for index, frame in enumerate(frames):
        frame.save(args.out / f"frame-{index:02d}.png")
    image_grid(frames, len(frames)).save(args.out / "strip.png")
    if args.gif:
        loop = frames + frames[-2:0:-1]
        loop[0].save(args.out / "path.gif", save_all=True, append_images=loop[1:], duration=120, loop=0)
    width, height = frames[0].size
    print(f"{len(frames)} frames of {height}x{width} from {args.a.name} to {args.b.name} written to {args.out} "
          f"(strip.png{', path.gif' if args.gif else ''})")
    return 0


def _interpolate_vae(args) -> int:
    from latentzip.codecs.images import UnsupportedImageError, load_image
    from latentzip.codecs.registry import load_generative
    from latentzip.codecs.vae_generative import image_grid, interpolate_images

    modes = ("linear", "spherical") if args.mode == "both" else (args.mode or "spherical",)
    try:
        if args.size is not None or args.gif:
            raise ValueError("--size and --gif are for hyperprior codecs; a gaussian-vae's frames have its size")
        if args.scale < 1:
            raise ValueError(f"--scale must be at least 1, got {args.scale}")
        model, _ = load_generative(args.model, "interpolation")
        image_a, image_b = load_image(str(args.a)), load_image(str(args.b))
        paths = {mode: interpolate_images(model.to(args.device), image_a, image_b, args.frames, mode, args.scale)
                 for mode in modes}
    except (UnsupportedImageError, FileNotFoundError, ValueError) as exc:
        print(f"latentzip interpolate: error: {exc}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for mode, frames in paths.items():
        for index, frame in enumerate(frames):
            frame.save(args.out / (f"frame-{index:02d}.png" if len(modes) == 1 else f"{mode}-{index:02d}.png"))
    image_grid([frame for frames in paths.values() for frame in frames], args.frames).save(args.out / "strip.png")
    print(f"{args.frames} frames ({' and '.join(modes)}) from {args.a.name} to {args.b.name} written to {args.out} "
          f"(strip.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
