"""``latentzip bench train``: Ray Train's throughput against a plain single-process loop.

Both run the very same step (:func:`~latentzip.pipeline.training.trainer.train_step`: forward, rate + distortion
loss, clipping, both optimisers) on the same model, batch and patch sampler, with the same number of torch
threads. The plain loop is timed after a few warm-up steps. The Ray Train run is one worker of a real
``TorchTrainer`` (DDP) run as a real run is: a metrics row every ``REPORT_EVERY`` steps, a checkpoint (and
with it a ``ray.train.report``, a barrier and a round trip to the controller) every ``checkpoint_every``
steps and at the end. It is timed by its own rows after one row of warm-up; each row's interval runs from
the previous row to this one, so the checkpoints and reports in the window are inside the time. Its wall
time including start-up is reported beside. With ``workers > 1`` a data-parallel run is measured too
(images/s over all workers).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from latentzip.codecs.hyperprior import build_model
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.data import PatchSampler, load_images, resolve_data
from latentzip.pipeline.training.loop import make_optimizers, train_step
from latentzip.pipeline.training.trainer import train

WARMUP = 5
#: Steps between metrics rows in the Ray Train run (a row is local to the worker: no Ray call).
REPORT_EVERY = 25


def plain_loop(data, config: TrainConfig, steps: int, threads: int) -> dict:
    """images/s of the training step in this process, no Ray."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(config.seed)
        model = build_model(config.codec_config)
        optimizers = make_optimizers(model, config)
        sampler = PatchSampler(load_images(resolve_data(data), max_side=config.max_side), config.patch_size,
                               config.min_scale, np.random.default_rng(config.seed))
        for step in range(1, WARMUP + 1):
            train_step(model, model, sampler.batch(config.batch_size), optimizers, config, 1, step)
        started = time.perf_counter()
        for step in range(WARMUP + 1, WARMUP + steps + 1):
            train_step(model, model, sampler.batch(config.batch_size), optimizers, config, 1, step)
        seconds = time.perf_counter() - started
    finally:
        torch.set_num_threads(previous)
    return {"steps": steps, "seconds": seconds, "images_per_s": steps * config.batch_size / seconds}


def ray_train(data, config: TrainConfig, steps: int, workers: int, threads: int) -> dict:
    """images/s of a real Ray Train run with ``workers`` workers of ``threads`` CPUs each."""
    run = dataclasses.replace(config, steps=REPORT_EVERY + steps, num_workers=workers, cpus_per_worker=threads,
                              log_every=REPORT_EVERY, validate_every=0)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(data, out, run)
        wall = time.perf_counter() - started
        rows = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
    # Each row: steps/s since the previous row (checkpoint steps add rows), reports and checkpoints in
    # between included.
    spans = [(row, row["step"] - before["step"]) for before, row in zip(rows, rows[1:])
             if before["step"] >= REPORT_EVERY]
    timed = sum(count for _, count in spans)
    seconds = sum(count / row["steps_per_s"] for row, count in spans)
    checkpoints = sum(1 for row, _ in spans if run.checkpoints_at(row["step"]))
    return {"workers": workers, "threads_per_worker": threads, "steps": timed,
            "seconds": seconds, "wall_s": wall, "checkpoints": checkpoints,
            "images_per_s": timed * config.batch_size * workers / seconds}


def bench_train(data, config: TrainConfig, steps: int = 100, threads: int = 1, workers: int = 2,
                repeats: int = 1, progress=print) -> dict:
    """Plain loop and 1-worker Ray Train, alternated ``repeats`` times; the fastest run of each counts
    (other load on the machine only ever slows a run down)."""
    steps = max(REPORT_EVERY, steps - steps % REPORT_EVERY)
    plains, singles = [], []
    for _ in range(max(1, repeats)):
        plains.append(plain_loop(data, config, steps, threads))
        progress(f"plain loop: {plains[-1]['images_per_s']:.2f} images/s")
        singles.append(ray_train(data, config, steps, 1, threads))
        progress(f"Ray Train, 1 worker: {singles[-1]['images_per_s']:.2f} images/s (wall {singles[-1]['wall_s']:.1f} s)")
    plain = max(plains, key=lambda r: r["images_per_s"])
    single = max(singles, key=lambda r: r["images_per_s"])
    result = {"benchmark": "train", "config": config.to_dict(), "plain": plain, "ray_1_worker": single,
              "repeats": len(plains), "all_plain": [r["images_per_s"] for r in plains],
              "all_ray_1_worker": [r["images_per_s"] for r in singles],
              "overhead_pct": 100.0 * (1 - single["images_per_s"] / plain["images_per_s"])}
    if workers > 1:
        result["ray_workers"] = ray_train(data, config, steps, workers, threads)
        progress(f"Ray Train, {workers} workers: {result['ray_workers']['images_per_s']:.2f} images/s")
    return result


def markdown(result: dict) -> str:
    config, plain, single = result["config"], result["plain"], result["ray_1_worker"]
    lines = [f"Model {config['arch']} N={config['N']} M={config['M']}, batch {config['batch_size']} of "
             f"{config['patch_size']} px, {plain['steps']} timed steps after warm-up ({WARMUP} steps in the plain "
             f"loop, one row of {REPORT_EVERY} in Ray Train); the Ray Train time includes its "
             f"{single.get('checkpoints', 0)} checkpoint(s) and reports (one every {config['checkpoint_every']} "
             "steps and one at the end).", "",
             "| run | workers x threads | images/s | wall (s) |", "|---|---|---|---|",
             f"| plain loop (one process) | 1 x {single['threads_per_worker']} | {plain['images_per_s']:.2f} | "
             f"{plain['seconds']:.1f} |",
             f"| Ray Train | 1 x {single['threads_per_worker']} | {single['images_per_s']:.2f} | {single['wall_s']:.1f} |"]
    if "ray_workers" in result:
        multi = result["ray_workers"]
        lines.append(f"| Ray Train (DDP) | {multi['workers']} x {multi['threads_per_worker']} | "
                     f"{multi['images_per_s']:.2f} | {multi['wall_s']:.1f} |")
    lines += ["", f"Ray Train overhead vs the plain loop: {result['overhead_pct']:+.1f} % (images/s, same step, "
              f"model, batch and threads; best of {result.get('repeats', 1)} alternated runs each; wall time adds "
              "Ray Train's start-up)."]
    return "\n".join(lines) + "\n"
