"""The argument parser every ``latentzip`` command uses: argparse, plus "did you mean" for mistyped options
and subcommands.

Plain argparse checks required options before it reports unknown ones, so ``encode --modle X`` says
"the following arguments are required: --model"; this parser names the unknown option first, with the
closest known ones.
"""

from __future__ import annotations

import argparse
import re

from latentzip.codecs.registry import did_you_mean as suggestion


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` that names mistyped long options and subcommands with suggestions."""

    def parse_known_args(self, args=None, namespace=None):
        if args is not None:
            self._check_options(list(args))
        return super().parse_known_args(args, namespace)

    def _check_options(self, args: list[str]) -> None:
        commands = {name for action in self._actions if isinstance(action, argparse._SubParsersAction)
                    for name in action.choices}
        takes_rest = any(action.nargs in (argparse.REMAINDER, argparse.PARSER) for action in self._actions
                         if not action.option_strings)
        known = [option for option in self._option_string_actions if option.startswith("--")]
        for token in args:
            if token == "--" or token in commands or (takes_rest and not token.startswith("-")):
                return  # the rest belongs to a subcommand (or is passed through)
            if not token.startswith("--"):
                continue
            name = token.split("=", 1)[0]
            if not any(option.startswith(name) for option in known):  # argparse accepts unique prefixes
                self.error(f"unrecognized option {name}{suggestion(name, known)}")

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if choice:
            message += suggestion(choice.group(1), re.findall(r"'([^']*)'", choice.group(2)))
        super().error(message)


def add_input_options(parser: argparse.ArgumentParser) -> None:
    """The input-file policy's flags (pipeline/inputs.py), for the jobs that read image folders."""
    from latentzip.pipeline.inputs import DEFAULT_MAX_FILE_BYTES

    parser.add_argument("--max-file-bytes", type=int, default=DEFAULT_MAX_FILE_BYTES, metavar="BYTES",
                        help=f"files larger than this are not read but recorded as failures with the reason "
                             f"(default {DEFAULT_MAX_FILE_BYTES}, {DEFAULT_MAX_FILE_BYTES // 2**20} MiB)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="read symbolic links that point outside the input folder (default: recorded as "
                             "failures; links to files inside it are always read)")


def add_model_options(parser: argparse.ArgumentParser, use: str = "decode") -> None:
    """``--model`` and ``--allow-model-url``: which model opens an archive (pipeline/decoding.open_archive),
    for the jobs that decode one (decode, verify, serve). ``use`` says what the model is for in the help."""
    parser.add_argument("--model", help=f"{use} with this codec (zoo name, directory or URL) instead of the one "
                                        "the archive names; it must have the archive's model id")
    parser.add_argument("--allow-model-url", action="append", default=[], metavar="PREFIX",
                        help="fetch the archive's own remote model_ref if it lies under this URL prefix (repeatable; "
                             "by default a model URL named by an archive is never fetched)")


#: ``latentzip train``'s flag destinations -> TrainConfig fields (the flags that set the config).
TRAIN_FLAGS = {
    "arch": "arch", "N": "N", "M": "M", "lmbda": "lmbda", "steps": "steps", "batch_size": "batch_size",
    "patch_size": "patch_size", "workers": "num_workers", "gpu": "use_gpu", "checkpoint_every": "checkpoint_every",
    "lr": "lr", "seed": "seed", "validate_every": "validate_every", "max_failures": "max_failures",
    "precision": "precision", "lr_rsqrt_from": "lr_rsqrt_from", "lr_decay_at": "lr_decay_at",
    "latent_dims": "latent_dims", "width": "width", "hidden": "hidden", "image_size": "image_size",
    "decoder": "decoder", "beta": "beta", "kl_warmup": "kl_warmup", "prior": "prior", "prior_hidden": "prior_hidden",
    "prior_from": "prior_from",
}


def train_options(args: argparse.Namespace, exclude: tuple[str, ...] = ()) -> dict:
    """The TrainConfig fields the parsed flags set (for ``training.config.build_config``); ``exclude``
    names flags a command uses with another meaning (``bench train``'s timed ``--steps``)."""
    return {field: getattr(args, dest) for dest, field in TRAIN_FLAGS.items()
            if dest not in exclude and getattr(args, dest, None) is not None}


def fail(command: str, error) -> int:
    """The one way a command ends on bad input: ``latentzip COMMAND: error: …`` on stderr, exit code 2."""
    import sys

    print(f"latentzip {command}: error: {error}", file=sys.stderr)
    return 2
