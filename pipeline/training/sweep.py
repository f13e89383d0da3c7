"""A λ sweep in one command: several rate points trained concurrently, one codec each.

Each λ is a trial: a Ray task (holding no resources itself) that runs :func:`~latentzip.pipeline.training.trainer.train`
into ``<out_dir>/lambda-<λ>``, so each trial is an ordinary Ray Train run with its own ``TorchTrainer``,
checkpoints, resume-by-rerun and exported codec. The cluster is shared out before anything starts: each
trial's workers get ``CPUs // (concurrent trials x workers)`` CPUs (at least one) and, with GPUs, an equal
fraction of them; trials beyond what fits run as earlier ones finish. Rerunning the same sweep resumes
every unfinished trial and leaves finished ones alone (their ``train`` returns at once).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from latentzip.pipeline import storage
from latentzip.pipeline.cluster import cluster_cpus, cluster_gpus, ensure_ray
from latentzip.pipeline.training.config import TrainConfig, TrainResult
from latentzip.pipeline.training.data import check_readable, resolve_data
from latentzip.pipeline.training.trainer import check_output_dir, train


def trial_dir(out_dir: str | Path, lmbda: float) -> Path | str:
    return storage.join(out_dir, f"lambda-{lmbda:g}")


def plan(config: TrainConfig, lambdas: list[float], cpus: int, gpus: int,
         max_concurrent: int | None = None) -> tuple[int, list[TrainConfig]]:
    """(concurrent trials, one config per λ) for a cluster of ``cpus`` CPUs and ``gpus`` GPUs."""
    if not lambdas:
        raise ValueError("a sweep needs at least one lambda")
    if len(set(lambdas)) != len(lambdas) or any(not (l > 0 and math.isfinite(l)) for l in lambdas):
        raise ValueError(f"lambdas must be distinct positive numbers, got {lambdas}")
    fitting = max(1, cpus // config.num_workers)  # trials whose workers get a CPU each
    concurrent = min(len(lambdas), max_concurrent or len(lambdas), fitting)
    cpus_per_worker = max(1, cpus // (concurrent * config.num_workers))
    share = {"cpus_per_worker": cpus_per_worker}
    if config.use_gpu:
        if gpus < 1:
            raise ValueError("use_gpu is set but the cluster has no GPU")
        share["gpus_per_worker"] = min(1.0, gpus / (concurrent * config.num_workers))
    return concurrent, [dataclasses.replace(config, lmbda=l, **share) for l in lambdas]


def train_sweep(data, out_dir: str | Path, config: TrainConfig, lambdas: list[float], val=None,
                max_concurrent: int | None = None, progress=print, init_from=None,
                follow_symlinks: bool = False) -> list[TrainResult]:
    """Train one codec per λ (``config.lmbda`` is ignored); results in the order of ``lambdas``.

    ``init_from``: one codec directory per λ (or None), each starting its trial as ``train(init_from=...)``."""
    import ray

    init_from = list(init_from) if init_from is not None else [None] * len(lambdas)
    if len(init_from) != len(lambdas):
        raise ValueError(f"init_from names {len(init_from)} codecs for {len(lambdas)} lambdas")
    check_output_dir(out_dir)  # here, in the driver: a trial's task would fail with a traceback
    check_readable(resolve_data(data, follow_symlinks))
    ensure_ray()
    concurrent, configs = plan(config, list(lambdas), cluster_cpus(), cluster_gpus(), max_concurrent)
    progress(f"sweep: {len(configs)} rate points, {concurrent} at a time, {config.num_workers} worker(s) each "
             f"with {configs[0].cpus_per_worker} CPU(s)"
             + (f" and {configs[0].gpus_per_worker:g} GPU" if config.use_gpu else ""))
    out_dir = storage.absolute(out_dir)
    run = ray.remote(num_cpus=0)(_trial)
    pending, running, results = list(enumerate(configs)), {}, {}
    while pending or running:
        while pending and len(running) < concurrent:
            index, trial = pending.pop(0)
            running[run.remote(data, str(trial_dir(out_dir, trial.lmbda)), trial, val, init_from[index],
                               follow_symlinks)] = index
        done, _ = ray.wait(list(running), num_returns=1)
        index = running.pop(done[0])
        results[index] = ray.get(done[0])  # a failed trial raises here, after its own retries
        result = results[index]
        progress(f"sweep: λ={configs[index].lmbda:g} done: {result.steps} steps, codec {result.codec_dir}")
    return [results[i] for i in range(len(configs))]


def _trial(data, out_dir: str, config: TrainConfig, val, init_from=None, follow_symlinks=False) -> TrainResult:
    return train(data, out_dir, config, val=val, init_from=init_from, follow_symlinks=follow_symlinks)
