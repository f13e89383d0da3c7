"""``latentzip jobs list|status ID|logs ID|stop ID``: the jobs on a Ray cluster (Ray's Job Submission API).

Same address and token as `latentzip submit`: --address (default $RAY_API_SERVER_ADDRESS, else
http://127.0.0.1:8265) and --token-file, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.

Exit status: 0 done (status: the job succeeded or is still running); 1 status of a failed job; 3 status
of a stopped job; 2 bad arguments; 4 no Ray dashboard at the address; 5 missing or refused token; 6 no
such job.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from latentzip.jobs.arguments import Parser


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="latentzip jobs", description=__doc__.split("\n\n", 1)[1],
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    _connection_options(parser, None)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    # The connection options are accepted after the action too (`jobs list --address URL`).
    each = [actions.add_parser("list", help="every job: id, status, entrypoint",
                               description="Every job on the cluster: id, status, entrypoint."),
            actions.add_parser("status", help="a job's status and Ray's message",
                               description="A job's status and Ray's message about it."),
            actions.add_parser("logs", help="a job's logs so far (--follow: until it ends)",
                               description="A job's logs so far, or with --follow until it ends."),
            actions.add_parser("stop", help="stop a running job", description="Stop a running job.")]
    for action in each:
        if action.prog.split()[-1] != "list":
            action.add_argument("job_id")
        _connection_options(action, argparse.SUPPRESS)
    each[2].add_argument("-f", "--follow", action="store_true", help="stream until the job ends")
    return parser


def _connection_options(parser: argparse.ArgumentParser, default) -> None:
    """--address and --token-file; on the actions with a suppressed default, so that a value given before
    the action is kept when none is given after it."""
    parser.add_argument("--address", default=default, help="Ray dashboard URL (default: $RAY_API_SERVER_ADDRESS, "
                                                           "else http://127.0.0.1:8265)")
    parser.add_argument("--token-file", type=Path, default=default, help="file holding the cluster's token")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from latentzip.jobs import submission

    try:
        cluster = submission.Cluster(args.address, submission.load_token(args.token_file))
        if args.action == "list":
            for job in sorted(cluster.list(), key=lambda job: job.start_time or 0):
                print(f"{job.submission_id or job.job_id}\t{job.status.value}\t{job.entrypoint}")
            return 0
        if args.action == "status":
            info = cluster.info(args.job_id)
            status = info.status.value
            print(f"{args.job_id}\t{status}\t{(info.message or '').strip().splitlines()[0] if info.message else ''}")
            return submission.exit_code(status) if status in submission.TERMINAL else 0
        if args.action == "logs":
            if args.follow:
                return submission.exit_code(cluster.follow(args.job_id))
            sys.stdout.write(cluster.logs(args.job_id))
            return 0
        stopped = cluster.stop(args.job_id)
        print(f"{args.job_id}: {'stop requested' if stopped else 'not running'}")
        return 0
    except submission.SubmitError as exc:
        print(f"latentzip jobs: error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
