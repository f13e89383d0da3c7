"""Starting or joining Ray: the one place that calls ``ray.init``.

With no address an embedded local cluster starts in this process (what `make demo` uses). With an
address (``auto``, ``ray://…`` or ``host:port``) the job joins that cluster instead.
"""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Initialise Ray unless it already is. ``num_cpus`` only applies to a new embedded cluster."""
    import ray  # here, not at the top: importing ray costs seconds that commands without Ray need not pay

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    # The dashboard (on 127.0.0.1) stays on: Ray Train's controller queries its state API.
    kwargs = {"log_to_driver": True}
    if address is None and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    # "local": always a new embedded cluster, never one that `ray start` left running on this machine
    # (ray.init() with no address would join that one); --address auto joins it on purpose.
    ray.init(address=address or "local", **kwargs)


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))
