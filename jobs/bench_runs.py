"""What each ``latentzip bench`` subcommand runs once its options are parsed (jobs/bench.py): checks, the
benchmark (pipeline/bench/), the result file and the printed table. Imports stay inside each function."""

from __future__ import annotations

from latentzip.jobs.arguments import fail


#: ``bench train``'s recipe: the zoo's model and patches, one worker per run (the DDP run sets its own).
BENCH_TRAIN_RECIPE = {"arch": "mean-scale-hyperprior", "N": 64, "M": 96, "batch_size": 4, "patch_size": 128,
                      "lr": 1e-4, "checkpoint_every": 500, "num_workers": 1}


def bench_config(args):
    """The TrainConfig of the timed runs, made as ``latentzip train`` makes its own (training.config)."""
    from latentzip.jobs.arguments import train_options
    from latentzip.pipeline.training.config import build_config

    return build_config(train_options(args, exclude=("steps", "workers")), args.config, BENCH_TRAIN_RECIPE)


def serve_read(args) -> int:
    if args.out.suffix not in (".json", ".md"):
        return fail(f"bench {args.benchmark}", "--out must end in .json or .md")
    if args.benchmark == "read":
        from latentzip.pipeline.bench.read import bench_read, markdown, write_result

        result = bench_read(args.archive, model=args.model, count=args.count, size=args.size,
                            batch_size=args.batch_size, workers=args.workers, epochs=args.epochs,
                            jpeg_quality=args.jpeg_quality, workdir=args.workdir)
    else:
        from latentzip.pipeline.bench.serve import bench_serve, markdown, write_result
        from latentzip.pipeline.cluster import ensure_ray

        ensure_ray()
        result = bench_serve(args.archive, model=args.model, count=args.count, size=args.size, clients=args.clients,
                             seconds=args.seconds, repeats=args.repeats, max_batch_size=args.max_batch_size,
                             batch_wait_ms=args.batch_wait_ms, workdir=args.workdir)
    print(markdown(result), end="")
    print(f"written to {write_result(result, args.out)}")
    return 0


def train_variants(args) -> int:
    import json

    from latentzip.pipeline.bench import train_variants as bench

    variants = bench.check_variants([name.strip() for name in args.variants.split(",") if name.strip()])
    threads = [int(value) for value in args.threads.split(",")]
    if args.ab_steps and args.val is None:
        raise ValueError("--ab-steps needs --val (the images the variants are validated on)")
    init, codec_config, lmbda = bench.init_weights(args.init_from)
    config = bench.config_for(bench_config(args), codec_config, lmbda, args.ab_steps)
    result = bench.bench_variants(args.data, config, variants, steps=args.steps, threads=threads,
                                  repeats=args.repeats, concurrent=args.concurrent, ab_steps=args.ab_steps,
                                  val=args.val, init=init, init_name=args.init_from)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n" if args.out.suffix == ".json"
                        else "# Training step variants\n\n" + bench.markdown(result))
    print(bench.markdown(result), end="")
    print(f"written to {args.out}")
    return 0


def train(args) -> int:
    import json

    if args.variants:
        return train_variants(args)
    from latentzip.pipeline.bench.train import bench_train, markdown
    from latentzip.pipeline.cluster import ensure_ray

    config = bench_config(args)
    ensure_ray()
    result = bench_train(args.data, config, steps=args.steps, threads=int(args.threads), workers=args.workers,
                         repeats=args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n" if args.out.suffix == ".json"
                        else "# Ray Train vs a plain loop\n\n" + markdown(result))
    print(markdown(result), end="")
    print(f"written to {args.out}")
    return 0


def rd(args) -> int:
    from latentzip.codecs.classical import FORMATS
    from latentzip.codecs.registry import codec_directory, zoo_models
    from latentzip.pipeline.bench.rd import rd_benchmark, write_rd

    if args.out.suffix not in (".json", ".md"):
        raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
    against = [] if args.against == "none" else [c.strip() for c in args.against.split(",") if c.strip()]
    unknown = [c for c in against if c not in FORMATS]
    if unknown:
        raise ValueError(f"unknown classical codec(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    from latentzip.codecs.registry import refuse_generative

    names = args.codecs or list(zoo_models("codec"))
    if not names:
        raise ValueError("no models given and the zoo is empty")
    for name in names:
        refuse_generative(name, "bench rd")
    directories = [codec_directory(name) for name in names]
    if not args.images.is_dir():
        raise FileNotFoundError(f"no image folder at {args.images} (give one with --images)")
    classical = None
    if against:
        from latentzip.pipeline.cluster import ensure_ray
        from latentzip.pipeline.report.run import report

        ensure_ray()
        classical = report([], args.images, args.out.with_name(args.out.stem + "-report"), classical=against,
                           models=[str(d) for d in directories], refine_steps=args.refine_steps)
    result = rd_benchmark(directories, args.images, max_side=args.max_side, max_batch=args.max_batch,
                          repeats=args.repeats)
    path = write_rd(result, args.out, classical)
    print(result.table())
    if classical is not None:
        print(f"classical report: {classical.markdown} (HTML {classical.html})")
    print(f"written to {path}")
    return 0


def encode(args) -> int:
    from latentzip.pipeline.bench.encode import bench_encode, write_result

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        if args.repeat < 1:
            raise ValueError("--repeat must be at least 1")
        result = bench_encode(args.model, args.images, count=args.count, threads=args.threads,
                              max_batch=args.max_batch, lookup_images=args.lookup_images,
                              repeats=args.repeat, profile=args.profile, overhead_images=args.overhead_images)
        path = write_result(result, args.out)
    except (ValueError, FileNotFoundError) as exc:
        return fail("bench encode", exc)
    print(result.table())
    print(f"written to {path}")
    return 0


def anomaly(args) -> int:
    from latentzip.codecs.registry import UnknownCodecError, is_generative
    from latentzip.pipeline.bench.anomaly import anomaly_benchmark, write_anomaly

    if is_generative(args.model):
        return vae_anomaly(args)
    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        result = anomaly_benchmark(args.model, args.normal, max_side=args.max_side, recall=args.recall)
        path = write_anomaly(result, args.out)
    except (UnknownCodecError, ValueError, FileNotFoundError) as exc:
        return fail("bench anomaly", exc)
    print(result.table())
    print(f"written to {path}")
    return 0


def vae_anomaly(args) -> int:
    from latentzip.pipeline.bench.anomaly import write_result
    from latentzip.pipeline.bench.digits import vae_anomaly_benchmark

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        result = vae_anomaly_benchmark(args.model, recall=args.recall, seed=args.seed)
        path = write_result(result, args.out, "Anomaly benchmark (gaussian-vae, digits)")
    except (ValueError, FileNotFoundError) as exc:
        return fail("bench anomaly", exc)
    print(result.table())
    print(f"written to {path}")
    return 0


def digits(args) -> int:
    from latentzip.pipeline.bench.anomaly import write_result
    from latentzip.pipeline.bench.digits import digits_benchmark

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        if args.samples < 1:
            raise ValueError(f"-n must be at least 1, got {args.samples}")
        result = digits_benchmark(args.model, samples=args.samples, temperature=args.temperature, seed=args.seed,
                                  threshold=args.threshold, kind=args.classifier)
        path = write_result(result, args.out, "Digits benchmark: are the samples digits?")
    except (ValueError, FileNotFoundError) as exc:
        return fail("bench digits", exc)
    print(result.table())
    print(f"written to {path}")
    return 0


def decode(args) -> int:
    from latentzip.pipeline.bench.decode import bench_decode, write_result

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        if args.batch_images:
            from latentzip.pipeline.cluster import ensure_ray

            ensure_ray()
        result = bench_decode(args.archive, count=args.count, trials=args.trials, batch_images=args.batch_images,
                              threads=args.threads, model=args.model, images=args.images, workdir=args.workdir)
        path = write_result(result, args.out)
    except (ValueError, FileNotFoundError) as exc:
        return fail("bench decode", exc)
    print(result.table())
    print(f"written to {path}")
    return 0


def archive_commit(args) -> int:
    from latentzip.pipeline.bench.archive_commit import bench_archive_commit, table, write_result

    try:
        if args.out.suffix not in (".json", ".md"):
            raise ValueError(f"--out must end in .json or .md, got {args.out.name}")
        units = [int(n) for n in args.units.split(",")]
        versions = [int(v) for v in args.versions.split(",")]
        if min(units) < 1 or not set(versions) <= {2, 3, 4}:
            raise ValueError("--units must be positive counts, --versions among 2, 3, 4")
        results = bench_archive_commit(units, versions, workdir=args.workdir)
    except ValueError as exc:
        return fail("bench archive-commit", exc)
    print(table(results))
    print(f"written to {write_result(results, args.out)}")
    return 0
