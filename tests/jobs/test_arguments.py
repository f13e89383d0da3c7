"""The command line's parsing: "did you mean", one program name, a description everywhere, and options
accepted after subcommands (jobs/arguments.py, jobs/cli.py, jobs/jobs.py)."""

from __future__ import annotations

import argparse
import importlib

import pytest

from latentzip.jobs import cli, jobs
from latentzip.jobs.arguments import Parser, suggestion


def _parsers():
    """Every command's parser and every sub-parser under it, as (parser, where)."""
    for name in cli.COMMANDS:
        stack = [(importlib.import_module(f"latentzip.jobs.{name}").build_parser(), name)]
        while stack:
            parser, where = stack.pop()
            yield parser, where
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    stack += [(sub, f"{where} {key}") for key, sub in action.choices.items()]


def test_unknown_command_suggests_the_closest(capsys):
    assert cli.main(["encdoe"]) == 2
    assert "unknown command 'encdoe' (did you mean encode?)" in capsys.readouterr().err


def test_mistyped_option_is_named_before_missing_required_ones(capsys):
    from latentzip.jobs import encode

    with pytest.raises(SystemExit) as exit_info:
        encode.build_parser().parse_args(["shards/", "--modle", "mean-scale-q3", "--archive", "a.zarr"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized option --modle (did you mean --model?)" in err and "required" not in err


def test_unique_prefixes_and_option_values_are_still_accepted():
    parser = Parser(prog="latentzip x")
    parser.add_argument("--model")
    parser.add_argument("--out")
    assert parser.parse_args(["--mod", "m"]).model == "m"  # argparse's unique prefixes
    assert parser.parse_args(["--out=--model-like"]).out == "--model-like"


def test_mistyped_subcommand_suggests_the_closest(capsys):
    with pytest.raises(SystemExit):
        jobs.build_parser().parse_args(["lsit"])
    assert "did you mean list?" in capsys.readouterr().err
    assert suggestion("zzz", ["list"]) == ""


def test_jobs_options_are_accepted_after_the_action():
    parser = jobs.build_parser()
    after = parser.parse_args(["list", "--address", "http://h:8265", "--token-file", "t"])
    before = parser.parse_args(["--address", "http://h:8265", "list"])
    assert after.address == before.address == "http://h:8265" and str(after.token_file) == "t"
    assert parser.parse_args(["status", "job-1", "--address", "http://h:1"]).address == "http://h:1"
    assert parser.parse_args(["list"]).address is None


def test_jobs_list_with_the_address_after_it_reaches_that_address(capsys):
    import socket

    with socket.socket() as sock:  # a port where nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert jobs.main(["list", "--address", f"http://127.0.0.1:{port}"]) == 4
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


def test_every_help_has_one_program_name_and_a_description():
    seen = []
    for parser, where in _parsers():
        seen.append(where)
        assert parser.prog == f"latentzip {where}", where
        assert isinstance(parser, Parser), where
        assert parser.description and "See latentzip" not in parser.description, where
        assert parser.format_usage().startswith(f"usage: latentzip {where}"), where
    assert {"bench decode", "bench startup", "jobs list", "zoo show"} <= set(seen)
