"""Starting or joining Ray: the one place that calls ``ray.init``.

With no address an embedded local cluster starts in this process (what `make demo` uses). With an
address (``auto``, ``ray://…`` or ``host:port``) the job joins that cluster instead.

An embedded cluster is pinned: its GCS port is chosen before it starts and ``RAY_ADDRESS`` names it in the
environment its raylet, workers and actors inherit (and in this process's, for its children). Ray's own
code that looks a cluster up without an address (Ray Train's placement-group cleaner asks the state API
whether the controller lives) then finds this cluster, not the latest one started on the machine: two jobs
on one host cannot touch each other's placement groups. A ``RAY_ADDRESS`` set by such a pin (marked in
``LATENTZIP_EMBEDDED_RAY``) is not a user's choice, so a child latentzip command starts its own cluster.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass

#: Set beside RAY_ADDRESS by an embedded start: the address it pinned (so it is not read as the user's).
PINNED = "LATENTZIP_EMBEDDED_RAY"


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray unless it already is. ``num_cpus`` only applies to a new embedded cluster."""
    import ray  # here, not at the top: importing ray costs seconds that commands without Ray need not pay

    if ray.is_initialized():
        return
    quiet_ray()
    chosen = os.environ.get("RAY_ADDRESS")
    if chosen and chosen == os.environ.get(PINNED):
        chosen = None  # pinned by an embedded start (this process's or a parent's), not by the user
    address = address or chosen or None
    # The dashboard (on 127.0.0.1) stays on: Ray Train's controller queries its state API.
    kwargs = {"log_to_driver": True, "logging_level": logging.INFO if verbose() else logging.WARNING}
    if address is None:
        if num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        start_pinned(**kwargs)
    else:
        ray.init(address=address, **kwargs)


def verbose() -> bool:
    """``latentzip --verbose`` (or LATENTZIP_VERBOSE=1): Ray's own progress and known-harmless warnings shown."""
    return os.environ.get("LATENTZIP_VERBOSE", "") not in ("", "0")


#: Loggers whose messages are known-harmless on every run (the token-auth notice of a local cluster).
HARMLESS = ("ray._private.authentication.authentication_token_setup",)


def quiet_ray() -> None:
    """Before Ray starts: no ANSI colour codes when the output is not a terminal, and unless verbose()
    neither Ray Data's progress logs and notices (latentzip prints its own per-unit progress) nor the
    known-harmless token-auth notice of a local cluster. Errors still raise as exceptions. (The C++ core
    worker's "constructor arguments in the object store and max_restarts > 0" line of every Ray Data actor
    pool stays: hiding it takes RAY_BACKEND_LOG_LEVEL, which prints a line of its own from every process.)"""
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")
        # Ray colours "[repeated Nx]" regardless of the terminal: strip colour codes from the process's own
        # streams (once; not from streams someone else replaced, such as a test runner's capture).
        if sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__:
            import colorama

            colorama.init(strip=True, convert=False)
    if verbose():
        return
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # Ray Data sets its logger's level from this (console and file)
    for name in HARMLESS:
        logging.getLogger(name).setLevel(logging.ERROR)


def start_pinned(**init_kwargs) -> str:
    """Start a new embedded cluster pinned as the module doc says; returns its address."""
    import ray

    saved = {name: os.environ.get(name) for name in ("RAY_GCS_SERVER_PORT", "RAY_ADDRESS", PINNED)}
    port = _free_port()
    address = f"{ray.util.get_node_ip_address()}:{port}"
    os.environ.update({"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": address, PINNED: address})
    try:
        # "local": always a new embedded cluster, never one that `ray start` left running on this machine
        # (ray.init() with no address would join that one); --address auto joins it on purpose.
        ray.init(address="local", **init_kwargs)
    except BaseException:
        _restore(saved)
        raise
    _restore({"RAY_GCS_SERVER_PORT": saved["RAY_GCS_SERVER_PORT"]})  # a child's cluster picks its own port
    os.environ["RAY_ADDRESS"] = os.environ[PINNED] = address = ray.get_runtime_context().gcs_address
    return address


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def _restore(values: dict) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


@dataclass(frozen=True)
class ActorPlan:
    """How a Ray Data stage's actor pool is sized: ``actors`` in the pool, torch ``threads`` in each, one
    GPU each when ``gpus`` (then ``device`` is ``"cuda"``)."""

    actors: int
    threads: int
    gpus: int
    device: str


def actor_plan(units: int | None = None, concurrency: int | None = None, use_gpus: bool = True) -> ActorPlan:
    """The one sizing rule of the stages that load a model once per actor (encode, decode, score): one
    actor per GPU, else one per CPU but one (Ray Data's own read and split tasks need a CPU: a pool holding
    every CPU starves them), never more than the ``units`` of work; the CPUs are shared out as torch
    threads. ``concurrency`` overrides the pool size."""
    gpus = cluster_gpus() if use_gpus else 0
    cpus = cluster_cpus()
    actors = max(1, gpus or cpus - 1)
    if units is not None:
        actors = max(1, min(units, actors))
    actors = concurrency or actors
    return ActorPlan(actors, 1 if gpus else max(1, cpus // actors), 1 if gpus else 0, "cuda" if gpus else "cpu")
