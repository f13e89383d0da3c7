"""``latentzip serve ARCHIVE [--host 127.0.0.1] [--port 8000] [--replicas N] ...``: an archive's images over
HTTP, decoded on demand and batched across concurrent requests (Ray Serve).

GET /images/{id} answers the id's PNG, byte for byte what `latentzip decode ARCHIVE --id ID -o x.png`
writes (?format=webp|jpeg&quality=Q re-encodes), with an ETag from the item's checksum and an immutable
Cache-Control (If-None-Match answers 304); GET /ids?offset=&limit=, /info, /stats and /healthz. Unknown id:
404; an item that cannot be decoded: 500 with the error and the id; bad parameters: 400. Ids are
URL-encoded in the path. With --token-file every route but /healthz needs `Authorization: Bearer TOKEN`.

Decodes of concurrent requests are batched (--max-batch-size ids, waiting at most --batch-wait-ms for a
batch to fill; --max-batch-size 1 turns batching off). It listens on 127.0.0.1 unless --host says otherwise,
on an embedded local Ray unless --address (or RAY_ADDRESS) names a cluster, and runs until interrupted
(Ctrl-C or SIGTERM), then stops Serve.

Exit status: 0 stopped cleanly; 2 bad arguments, an archive that cannot be opened or a model that cannot
be loaded (checked before Ray starts).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser, add_model_options


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip serve", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archive", help="archive written by `latentzip encode`: a folder or an fsspec URL (s3://...)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--replicas", type=int, default=1, help="decoding replicas (default 1)")
    parser.add_argument("--max-batch-size", type=int, default=16,
                        help="most ids decoded in one batch (default 16; 1 turns batching off)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="longest wait for a batch to fill after its first request (default 5)")
    parser.add_argument("--token-file", type=Path, help="file holding a bearer token the clients must send")
    parser.add_argument("--num-gpus", type=float, default=0,
                        help="GPUs per replica (default 0: decode on CPU); the codec then runs on CUDA")
    parser.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    add_model_options(parser)
    return parser


def check(args) -> str | None:
    """Everything checkable before Ray starts; returns the token (or None). Raises ValueError / OSError."""
    from latentzip.pipeline.decoding import open_archive
    from latentzip.pipeline.decoding import archive_codec
    from latentzip.pipeline.serving import read_token_file

    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {args.port}")
    if args.replicas < 1 or args.max_batch_size < 1 or args.batch_wait_ms < 0:
        raise ValueError("--replicas and --max-batch-size must be at least 1, --batch-wait-ms at least 0")
    token = read_token_file(args.token_file) if args.token_file else None
    archive_codec(open_archive(args.archive, model=args.model, allow_model_urls=args.allow_model_url), "<serve>")
    return token


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.pipeline.archive import ArchiveError
    from latentzip.pipeline.decoding import DecodeError

    try:
        token = check(args)
    except (ArchiveError, DecodeError, OSError, ValueError) as exc:
        print(f"latentzip serve: error: {exc}", file=sys.stderr)
        return 2
    import signal
    import threading

    from latentzip.pipeline.cluster import ensure_ray
    from latentzip.pipeline.serving import start_server, stop_server

    stop = threading.Event()
    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, lambda *_: stop.set())
    ensure_ray(address=args.address)
    try:
        url = start_server(args.archive, host=args.host, port=args.port, replicas=args.replicas,
                           max_batch_size=args.max_batch_size, batch_wait_ms=args.batch_wait_ms, token=token,
                           num_gpus=args.num_gpus, model=args.model, allow_model_urls=args.allow_model_url)
        print(f"serving {args.archive} on {url} (GET /images/ID, /ids, /info, /stats, /healthz); Ctrl-C stops",
              flush=True)
        stop.wait()
    finally:
        print("stopping", flush=True)
        stop_server()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
