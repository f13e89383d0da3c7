"""``latentzip zoo``: the codecs shipped in the package, one per line, name first.

``latentzip zoo`` lists them; ``latentzip zoo show NAME`` prints a model card; ``latentzip zoo add CODEC_DIR
--name NAME --val DIR`` (for maintainers) copies a trained codec into the package's zoo with its validation
rate–distortion measured on DIR.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser, fail


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip zoo", description=__doc__.split("\n\n", 1)[1])
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    show = actions.add_parser("show", help="print a zoo model's card",
                              description="Print a zoo model's card: data, steps, runs, wall time, hardware, "
                                          "recipe and validation rate-distortion.")
    show.add_argument("name")
    add = actions.add_parser("add", help="copy a trained codec into the zoo, with its validation RD",
                             description="Copy a trained codec into the zoo with its validation rate-distortion "
                                         "measured on --val, and the integer prior's plan derived afresh.")
    add.add_argument("codec", type=Path, help="codec directory written by training")
    add.add_argument("--name", required=True, help="zoo name, e.g. mean-scale-q3")
    add.add_argument("--val", required=True, type=Path, help="folder of validation images")
    add.add_argument("--zoo-dir", type=Path, help="zoo folder (default: the package's codecs/zoo)")
    add.add_argument("--history", help="how it was trained, for the card, where its runs were not recorded "
                                       "(codecs trained before training kept a record of its runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.codecs.card import read_card
    from latentzip.codecs.registry import ZOO_DIR, zoo_models
    from latentzip.pipeline import zoo

    if args.action is None:
        lines = zoo.listing()
        print("\n".join(lines) if lines else "(the zoo is empty)")
        return 0
    if args.action == "show":
        models = zoo_models()
        if args.name not in models:
            from latentzip.jobs.arguments import suggestion

            print(f"latentzip zoo: error: no zoo model {args.name!r}{suggestion(args.name, models)}; have "
                  f"{', '.join(models) or 'none'}", file=sys.stderr)
            return 2
        try:
            print(zoo.model_card(args.name, read_card(models[args.name])), end="")
        except (KeyError, TypeError, ValueError) as exc:  # a damaged card: CheckpointError is a ValueError
            print(f"latentzip zoo: error: {args.name}: unreadable codec folder: {exc}", file=sys.stderr)
            return 2
        return 0
    from latentzip.pipeline.bench.rd import load_images

    try:
        images = load_images(args.val)
        target = zoo.add(args.codec, args.name, images, str(args.val), args.zoo_dir or ZOO_DIR, args.history)
    except (ValueError, FileNotFoundError) as exc:
        return fail("zoo", exc)
    print(zoo.summary_line(args.name, read_card(target)))
    print(f"added to {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
