"""``latentzip submit [--address URL] COMMAND [ARGS...]``: run any latentzip job on a Ray cluster.

Submits ``python -m latentzip.jobs.COMMAND ARGS`` through Ray's Job Submission API (the dashboard's HTTP
API; default $RAY_API_SERVER_ADDRESS, else http://127.0.0.1:8265, the end of `ray dashboard
ray_cluster.yaml`'s tunnel), with the project shipped as a wheel built from this source tree (cached by
source hash) in the job's runtime_env py_modules. Then it streams the job's logs until the job ends.
Paths in ARGS are read on the cluster: use absolute paths the cluster sees, or object storage URLs. ARGS
are checked here first, with the command's own parser, and relative paths are refused.

The token for Ray's token authentication comes from --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or
~/.ray/auth_token, in that order; it is sent in the Authorization header and never printed.

Exit status: 0 the job succeeded; 1 it failed (its last logs and Ray's message are printed); 2 bad
arguments or the wheel could not be built; 3 the job was stopped; 4 no Ray dashboard answers at the
address; 5 the cluster needs a token and none was found, or it refused the token; 130 interrupted
(the job keeps running: `latentzip jobs stop ID`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip submit", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, else "
                                          "http://127.0.0.1:8265)")
    parser.add_argument("--token-file", type=Path, help="file holding the cluster's token (see above)")
    parser.add_argument("--wheel", type=Path, help="ship this latentzip wheel instead of building one")
    parser.add_argument("--pip", action="append", default=[], metavar="REQUIREMENT",
                        help="extra pip requirement for the job's environment (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the job (repeatable)")
    parser.add_argument("--no-wait", action="store_true", help="print the job's id and return at once")
    parser.add_argument("command", help="latentzip subcommand to run on the cluster (train, encode, ...)")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments, as on the command line")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from latentzip.jobs.cli import COMMANDS
    from latentzip.jobs import submission

    if args.command not in COMMANDS or args.command in ("submit", "jobs"):
        parser.error(f"cannot submit {args.command!r}: not a latentzip job")
    problem = check_job_arguments(args.command, args.args)
    if problem:
        parser.error(problem)
    env = {}
    for pair in args.env:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            parser.error(f"--env wants NAME=VALUE, got {pair!r}")
        env[name] = value
    try:
        cluster = submission.Cluster(args.address, submission.load_token(args.token_file))
        wheel = args.wheel or submission.build_wheel()
        if not wheel.is_file() or wheel.suffix != ".whl":
            raise submission.SubmitError(f"{wheel} is not a wheel file")
        job_id = cluster.submit(submission.make_entrypoint(args.command, args.args),
                                submission.make_runtime_env(wheel, args.pip, env),
                                submission.new_submission_id(args.command),
                                {"latentzip_command": args.command, "wheel": wheel.name})
        print(f"latentzip submit: submitted {job_id} to {cluster.address}", file=sys.stderr, flush=True)
        if args.no_wait:
            print(job_id)
            return 0
        try:
            status = cluster.follow(job_id)
        except KeyboardInterrupt:
            print(f"\nlatentzip submit: stopped following; {job_id} keeps running "
                  f"(`latentzip jobs stop {job_id}`)", file=sys.stderr)
            return 130
        return report(cluster, job_id, status)
    except submission.SubmitError as exc:
        print(f"latentzip submit: error: {exc}", file=sys.stderr)
        return exc.exit_code


#: Arguments of the jobs that name files or folders (besides those parsed as Path).
LOCATIONS = {"inputs", "input", "archive", "out", "data", "val", "images", "model", "init_from", "reference",
             "calibration", "codecs", "codec", "a", "b", "folder", "normal", "config", "workdir", "zoo_dir"}


def check_job_arguments(command: str, argv: list[str]) -> str | None:
    """Parse ``argv`` with the job's own parser (bad options exit here, with its usage) and return why they
    cannot be submitted (a relative path, which the cluster would resolve against the job's own working
    folder), or None."""
    import importlib

    from latentzip.codecs.registry import is_remote, list_codecs

    job = importlib.import_module(f"latentzip.jobs.{command}").build_parser()
    namespace = job.parse_args(argv)
    names = set(list_codecs())
    relative = []
    for action in job._actions:
        value = getattr(namespace, action.dest, None)
        if action.dest not in LOCATIONS and action.type is not Path or value is None or value == action.default:
            continue  # defaults are the job's own business
        for item in value if isinstance(value, (list, tuple)) else [value]:
            for text in str(item).split(",") if action.dest in ("model", "codecs") else [str(item)]:
                if text and text not in names and not is_remote(text) and not text.startswith("file://") \
                        and not Path(text).expanduser().is_absolute():
                    relative.append(text)
    if relative:
        return (f"relative path(s) {', '.join(map(repr, relative))} in the job's arguments: the job reads paths "
                f"on the cluster, so give absolute paths the cluster sees (e.g. {Path(relative[0]).resolve()}) "
                "or URLs (s3://...)")
    return None


def report(cluster, job_id: str, status: str) -> int:
    """Say how the job ended (Ray's message on failure) and return the exit code for its status."""
    from latentzip.jobs.submission import exit_code

    if status == "SUCCEEDED":
        print(f"latentzip submit: {job_id} succeeded", file=sys.stderr)
    else:
        message = (cluster.info(job_id).message or "").strip()
        print(f"latentzip submit: {job_id} {status.lower()}: {message.splitlines()[0] if message else ''}",
              file=sys.stderr)
    return exit_code(status)


if __name__ == "__main__":
    raise SystemExit(main())
