"""``python -m latentzip.jobs.train DATA --out DIR``: train a learned codec on Ray Train.

DATA is a folder of images or ingest's Parquet shards. Settings come from the TrainConfig defaults, then
--config FILE.toml (flat keys named like the TrainConfig fields, e.g. steps = 5000, min_scale = 0.5), then
the flags given here. Rerunning with the same --out resumes from the last checkpoint; raise --steps to
train further. --sweep L1,L2,... trains one codec per lambda concurrently (OUT/lambda-<L>/codec), sharing
the cluster's CPUs and GPUs between the trials.
"""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

from latentzip.codecs.registry import ARCHITECTURES
from latentzip.jobs.arguments import Parser, fail, train_options

def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="latentzip train", description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", nargs="+",
                        help="folder of images (searched recursively), or a folder of Parquet shards: a path or an "
                             "fsspec URL (s3://bucket/photos); several folders train on all of them")
    parser.add_argument("--out", required=True,
                        help="output folder: checkpoints in OUT/ray, the codec in OUT/codec, OUT/metrics.jsonl; a "
                             "path or a URL (s3://bucket/runs/q3: checkpoints go to object storage too)")
    parser.add_argument("--config", type=Path, metavar="FILE.toml",
                        help="TOML file of TrainConfig fields; flags given on the command line win")
    parser.add_argument("--arch", choices=list(ARCHITECTURES),
                        help="architecture (default scale-hyperprior; gaussian-vae: the textbook VAE, flags below)")
    parser.add_argument("--N", type=int, help="hidden and hyper-latent channels (default 128)")
    parser.add_argument("--M", type=int, help="latent channels (default 192)")
    parser.add_argument("--lmbda", type=float,
                        help="rate-distortion trade-off: loss = lmbda * 255^2 * MSE + bpp (default 0.013)")
    parser.add_argument("--steps", type=int, help="total optimiser steps, counting resumed ones (default 10000)")
    parser.add_argument("--batch-size", type=int, help="patches per step per worker (default 8)")
    parser.add_argument("--patch-size", type=int, help="training patch side, a multiple of 64 (default 256)")
    parser.add_argument("--workers", type=int, help="Ray Train workers, one DDP process each (default 2)")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="one GPU per worker (default: use GPUs if the Ray cluster has any)")
    parser.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 1000)")
    parser.add_argument("--lr", type=float, help="Adam learning rate of the network (default 1e-4)")
    parser.add_argument("--precision", choices=("fp32", "bf16"),
                        help="bf16: the analysis and synthesis convolutions under bf16 autocast, GDN, the hyperprior "
                             "and the rate in fp32 (default fp32)")
    parser.add_argument("--lr-decay-at", type=_fractions, metavar="F1,F2",
                        help="fractions of --steps where the learning rates drop 10x (default 0.8,0.95)")
    parser.add_argument("--lr-rsqrt-from", type=int, metavar="STEP",
                        help="past this step the learning rate also falls as sqrt(STEP/step), so resuming a long-"
                             "trained model does not restart at the top learning rate (default 0: off)")
    parser.add_argument("--seed", type=int, help="seed of the initial weights and the patch sampling (default 0)")
    parser.add_argument("--val", help="validation images (folder or shards), evaluated whole on rank 0")
    parser.add_argument("--validate-every", type=int, help="steps between validations (default 0: never)")
    parser.add_argument("--init-from", metavar="CODEC",
                        help="start from a trained codec's weights (a zoo name, a codec directory or its URL); its "
                             "steps count towards --steps. With --sweep: one per lambda, comma-separated")
    vae = parser.add_argument_group("gaussian-vae (a generative VAE: whole images resized to --image-size, "
                                    "loss -ELBO with beta on the KL term)")
    vae.add_argument("--latent-dims", type=int, help="latent dimensions (default 16)")
    vae.add_argument("--width", type=int, help="channels of the first convolution, doubled at each next (default 32)")
    vae.add_argument("--hidden", type=int, help="width of the linear layer before the latent (default 256)")
    vae.add_argument("--image-size", type=int, help="side the images are resized to, in pixels (default 16)")
    vae.add_argument("--decoder", choices=("bernoulli", "gaussian"), help="likelihood p(x|z) (default bernoulli)")
    vae.add_argument("--beta", type=float, help="weight of the KL term (default 1: the ELBO)")
    vae.add_argument("--kl-warmup", type=int, metavar="STEPS", help="ramp beta up from 0 over these steps (default 0)")
    vae.add_argument("--prior", choices=("normal", "two-stage"),
                     help="where samples' latents come from: normal, z ~ N(0, I) (default), or two-stage, a second "
                          "VAE over the latents trained beside the first (Dai & Wipf 2019), whose decoder maps "
                          "u ~ N(0, I) to z; samples then avoid the holes between the data's latents")
    vae.add_argument("--prior-hidden", type=int, help="units in each hidden layer of the two-stage prior (default 256)")
    vae.add_argument("--prior-from", type=float, metavar="FRACTION",
                     help="the two-stage prior's second stage trains from this fraction of --steps on, on the "
                          "first stage's settled latents (default 0.5)")
    parser.add_argument("--max-failures", type=int,
                        help="worker-group restarts from the last checkpoint after a failure (default 0)")
    parser.add_argument("--sweep", metavar="L1,L2,...",
                        help="train one codec per lambda, concurrently, into OUT/lambda-<L> (ignores --lmbda)")
    parser.add_argument("--max-concurrent", type=int, help="with --sweep: at most this many trials at a time")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--follow-symlinks", action="store_true",
                        help="read links in image folders that point outside them (default: skipped, and said; "
                             "FIFOs, devices and other non-regular files are always skipped)")
    return parser


def _fractions(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(value) for value in text.split(",") if value.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions, got {text!r}") from None


def resolve_config(args: argparse.Namespace, gpus_available: bool):
    """TrainConfig from defaults < TOML file < flags; ``use_gpu`` left unset means: if the cluster has GPUs."""
    from latentzip.pipeline.training.config import build_config

    return build_config(train_options(args), args.config, recipe={"use_gpu": gpus_available})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.cluster import cluster_gpus, ensure_ray
    from latentzip.pipeline.training.data import check_readable, resolve_data
    from latentzip.pipeline.training.trainer import check_output_dir, train

    try:
        # The output and the data are checked before Ray starts: an unwritable --out or data of only
        # unreadable files is a one-line error, not a traceback from a worker.
        check_output_dir(args.out)
        check_readable(resolve_data(args.data, args.follow_symlinks))
        ensure_ray(address=args.address)
        config = resolve_config(args, cluster_gpus() > 0)
        if args.sweep:
            return _sweep(args, config)
        result = train(args.data, args.out, config, val=args.val, init_from=_codec_dir(args.init_from),
                       follow_symlinks=args.follow_symlinks)
    except (ValueError, FileNotFoundError, tomllib.TOMLDecodeError) as exc:
        return fail("train", exc)
    metrics = result.metrics
    if "neg_elbo_bpp" in metrics:
        print(f"trained {result.steps} steps (resumed from {result.start_step}) in {result.wall_s:.0f} s: "
              f"loss {metrics['loss']:.2f} nats, -ELBO {metrics['neg_elbo_bpp']:.4f} bpp (training batches)")
        print(f"model written to {result.codec_dir} (model id {result.model_id})")
        return 0
    print(f"trained {result.steps} steps (resumed from {result.start_step}) in {result.wall_s:.0f} s: "
          f"loss {metrics.get('loss', float('nan')):.4f}, estimated bpp {metrics.get('bpp_estimate', float('nan')):.3f}, "
          f"PSNR {metrics.get('psnr_db', float('nan')):.2f} dB")
    print(f"codec written to {result.codec_dir} (model id {result.model_id})")
    return 0


def _codec_dir(name: str | None):
    if name is None:
        return None
    from latentzip.codecs.registry import codec_directory

    return codec_directory(name)


def _sweep(args: argparse.Namespace, config) -> int:
    from latentzip.pipeline.training.sweep import train_sweep

    if ARCHITECTURES.get(config.arch) == "generative":
        raise ValueError(f"--sweep trains one codec per rate-distortion lambda; {config.arch} has no lambda")

    try:
        lambdas = [float(value) for value in args.sweep.split(",") if value.strip()]
    except ValueError:
        raise ValueError(f"--sweep expects comma-separated numbers, got {args.sweep!r}") from None
    init_from = None
    if args.init_from:
        names = [name.strip() for name in args.init_from.split(",")]
        if len(names) != len(lambdas):
            raise ValueError(f"--init-from names {len(names)} codecs for {len(lambdas)} lambdas in --sweep")
        init_from = [_codec_dir(name) for name in names]
    results = train_sweep(args.data, args.out, config, lambdas, val=args.val, max_concurrent=args.max_concurrent,
                          follow_symlinks=args.follow_symlinks,
                          init_from=init_from)
    print("lambda  steps  bpp~    PSNR dB  codec")
    for lmbda, result in zip(lambdas, results):
        metrics = result.metrics
        print(f"{lmbda:<7g} {result.steps:<6d} {metrics.get('bpp_estimate', float('nan')):<7.3f} "
              f"{metrics.get('psnr_db', float('nan')):<8.2f} {result.codec_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
