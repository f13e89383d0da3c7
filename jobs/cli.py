"""``latentzip <command> [args]``: one entry point for every job. Each command is ``latentzip.jobs.<name>``."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "ingest": "folder of images -> Parquet shards (unreadable files listed, not fatal)",
    "datasets": "export a packaged data set (scikit-learn's handwritten digits) to an image folder",
    "train": "train a learned codec with Ray Train (DDP over workers; --sweep for several rate points)",
    "zoo": "the trained codecs shipped in the package, one per line, name first (show NAME: its card)",
    "encode": "Parquet shards -> entropy-coded bitstreams in a Zarr archive (Ray Data job)",
    "decode": "archive -> images: one id on demand, or many in parallel on Ray",
    "serve": "an archive's images over HTTP, decoded on demand, batched across requests (Ray Serve)",
    "verify": "check an archive: checksums, index, counts, optionally decode a sample; problems per id",
    "report": "rate-distortion report: learned codec vs JPEG, WebP, JPEG 2000, AVIF, JPEG XL",
    "bench": "benchmarks: rd, encode, decode, train, anomaly, digits, startup, serve, read",
    "sample": "draw new images from a learned codec's prior (ancestral sampling)",
    "interpolate": "decode the latent-space path between two images",
    "score": "bits per pixel as an anomaly score: rows, calibration, heat maps (Ray job or an archive)",
    "submit": "run any of these jobs on a Ray cluster through Ray's Job Submission API (project shipped as a wheel)",
    "jobs": "jobs on a Ray cluster: list, status ID, logs ID, stop ID",
    "demo": "the whole pipeline on bundled sample photos, on an embedded local Ray",
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {text}" for name, text in COMMANDS.items()]
    return ("usage: latentzip [--verbose] <command> [args]   (latentzip <command> --help for its flags)\n\n"
            "--verbose (anywhere on the line, or LATENTZIP_VERBOSE=1): show Ray's own progress and notices\n\n"
            "commands:\n" + "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" in argv:
        import os

        os.environ["LATENTZIP_VERBOSE"] = "1"  # read by latentzip.pipeline.cluster.quiet_ray, here and in children
        argv = [arg for arg in argv if arg != "--verbose"]
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        import latentzip

        print(f"latentzip {latentzip.__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        from latentzip.jobs.arguments import suggestion

        print(f"latentzip: unknown command {command!r}{suggestion(command, COMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    module = importlib.import_module(f"latentzip.jobs.{command}")
    return module.main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
