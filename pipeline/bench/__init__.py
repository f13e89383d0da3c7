"""Benchmarks: one module per `latentzip bench` subcommand; each writes its results to a file."""
