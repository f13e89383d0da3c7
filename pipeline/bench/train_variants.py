"""``latentzip bench train --variants``: what pays per CPU-hour, and what it costs in RD at equal steps.

Each variant changes one thing about the very same training step
(:func:`~latentzip.pipeline.training.trainer.train_step`):

- ``fp32``: today's step;
- ``bf16``: g_a and g_s under bf16 autocast (GDN, hyperprior, likelihoods and the rate in fp32), as
  ``latentzip train --precision bf16``;
- ``channels-last``: the model and every batch in the channels-last memory format;
- ``bf16+channels-last``: both.

Two measurements per variant:

1. **Throughput** (images/s) of a plain single-process loop, at each of ``threads``; the variants are
   alternated ``repeats`` times and the fastest run of each counts (other load only ever slows a run).
   With ``concurrent`` > 1, that many fp32 loops run at once in separate processes (as concurrent trials of
   a sweep do) and their images/s are summed: the figure to set against a DDP run of as many workers.
2. **RD at equal steps** (``ab_steps`` > 0): every variant starts from the same weights (``init``: a trained
   codec, or the seed), sees the very same crops in the same order for ``ab_steps`` steps, and is then
   validated the way a training run is (:func:`~latentzip.pipeline.training.loop.evaluate`, in fp32: coded bpp
   from the bytes, PSNR of the decoded 8-bit image) on ``val`` images. The RD cost
   λ·255²·MSE + bpp of each variant against fp32's says whether it hurts.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import time

import numpy as np
import torch

from latentzip.codecs.hyperprior import build_model
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.data import PatchSampler, load_images, resolve_data
from latentzip.pipeline.training.loop import evaluate, make_optimizers, train_step

VARIANTS = {"fp32": (None, False), "bf16": (torch.bfloat16, False), "channels-last": (None, True),
            "bf16+channels-last": (torch.bfloat16, True)}
WARMUP = 5


def check_variants(names: list[str]) -> list[str]:
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown training variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    return names


class _Loop:
    """One variant's model, optimisers and crop sampler, from ``init`` weights (or the seed)."""

    def __init__(self, images, config: TrainConfig, variant: str, init: dict | None = None):
        self.config, (dtype, self.channels_last) = config, VARIANTS[variant]
        torch.manual_seed(config.seed)
        self.model = build_model(config.codec_config)
        if init is not None:
            self.model.load_state_dict(init)
        self.model.transform_dtype = dtype
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizers = make_optimizers(self.model, config)
        self.sampler = PatchSampler(images, config.patch_size, config.min_scale, np.random.default_rng(config.seed))
        self.step = 0

    def run(self, steps: int) -> float:
        """Train ``steps`` steps; returns the seconds they took."""
        started = time.perf_counter()
        for _ in range(steps):
            self.step += 1
            x = self.sampler.batch(self.config.batch_size)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            train_step(self.model, self.model, x, self.optimizers, self.config, 1, self.step)
        return time.perf_counter() - started


def throughput(images, config: TrainConfig, variant: str, steps: int, threads: int) -> float:
    """images/s of ``variant``'s step in this process after a warm-up."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loop = _Loop(images, config, variant)
        loop.run(WARMUP)
        return steps * config.batch_size / loop.run(steps)
    finally:
        torch.set_num_threads(previous)


def _concurrent_worker(args) -> float:
    data, config, steps = args
    config = TrainConfig.from_dict(config)
    return throughput(load_images(resolve_data(data), max_side=config.max_side), config, "fp32", steps, 1)


def concurrent_loops(data, config: TrainConfig, steps: int, processes: int) -> float:
    """Summed images/s of ``processes`` fp32 loops of one thread each, run at once in their own processes."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(processes) as pool:
        return sum(pool.map(_concurrent_worker, [(str(data), config.to_dict(), steps)] * processes))


def equal_steps(images, val_images, config: TrainConfig, variant: str, steps: int, init: dict | None,
                threads: int) -> dict:
    """Train ``steps`` steps of ``variant`` from ``init`` on the fixed crop sequence, then validate in fp32."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        loop = _Loop(images, config, variant, init)
        seconds = loop.run(steps)
        module = loop.model.to(memory_format=torch.contiguous_format)
        module.transform_dtype = None
        row = evaluate(module, val_images, config.lmbda)
    finally:
        torch.set_num_threads(previous)
    row["rd_cost"] = config.lmbda * 255**2 * 10 ** (-row["val_psnr_db"] / 10) + row["val_bpp"]
    return {"variant": variant, "steps": steps, "seconds": seconds, **row}


def bench_variants(data, config: TrainConfig, variants: list[str], steps: int = 100, threads=(1,),
                   repeats: int = 2, concurrent: int = 0, ab_steps: int = 0, val=None, init: dict | None = None,
                   init_name: str | None = None, progress=print) -> dict:
    check_variants(variants)
    images = load_images(resolve_data(data), max_side=config.max_side)
    runs: dict[str, list[float]] = {}
    for _ in range(max(1, repeats)):
        for threads_n in threads:
            for variant in variants:
                key = f"{variant}|{threads_n}"
                runs.setdefault(key, []).append(throughput(images, config, variant, steps, threads_n))
                progress(f"{variant}, {threads_n} thread(s): {runs[key][-1]:.2f} images/s")
    rows = [{"variant": key.split("|")[0], "threads": int(key.split("|")[1]), "images_per_s": max(values),
             "all": values} for key, values in runs.items()]
    result = {"benchmark": "train-variants", "config": config.to_dict(), "steps": steps, "repeats": repeats,
              "throughput": rows, "cpu_count": multiprocessing.cpu_count(), "torch": torch.__version__}
    if concurrent > 1:
        result["concurrent"] = {"processes": concurrent,
                                "images_per_s": concurrent_loops(data, config, steps, concurrent)}
        progress(f"{concurrent} concurrent fp32 loops: {result['concurrent']['images_per_s']:.2f} images/s")
    if ab_steps > 0:
        if val is None:
            raise ValueError("an equal-steps A/B (ab_steps > 0) needs validation images (val)")
        val_images = load_images(resolve_data(val), max_side=config.max_side)
        result["equal_steps"] = {"init": init_name or f"seed {config.seed}", "val": str(val), "rows": []}
        for variant in variants:
            row = equal_steps(images, val_images, config, variant, ab_steps, init, max(threads))
            result["equal_steps"]["rows"].append(row)
            progress(f"{variant}: {ab_steps} steps, val {row['val_bpp']:.4f} bpp {row['val_psnr_db']:.2f} dB, "
                     f"RD cost {row['rd_cost']:.4f}")
    return result


def markdown(result: dict) -> str:
    config = result["config"]
    base = {row["threads"]: row["images_per_s"] for row in result["throughput"] if row["variant"] == "fp32"}
    lines = [f"Model {config['arch']} N={config['N']} M={config['M']}, batch {config['batch_size']} of "
             f"{config['patch_size']} px, {result['steps']} timed steps after {WARMUP} of warm-up, the same "
             f"training step; best of {result['repeats']} alternated runs ({result['cpu_count']} CPUs, "
             f"torch {result['torch']}).", "",
             "| variant | threads | images/s | vs fp32 |", "|---|---:|---:|---:|"]
    for row in result["throughput"]:
        ratio = row["images_per_s"] / base[row["threads"]] if row["threads"] in base else math.nan
        lines.append(f"| {row['variant']} | {row['threads']} | {row['images_per_s']:.2f} | {ratio:.2f}× |")
    if "concurrent" in result:
        c = result["concurrent"]
        lines += ["", f"{c['processes']} concurrent fp32 loops (1 thread each, separate processes, as concurrent "
                      f"trials of a sweep): {c['images_per_s']:.2f} images/s in all."]
    if "equal_steps" in result:
        ab = result["equal_steps"]
        fp32 = next((row for row in ab["rows"] if row["variant"] == "fp32"), None)
        lines += ["", f"Equal steps: each variant trained {ab['rows'][0]['steps']} steps from {ab['init']} on the "
                      f"same crops, then validated in fp32 on {ab['val']} (coded bpp from the bytes, PSNR of "
                      "the decoded image; RD cost λ·255²·MSE + bpp).", "",
                  "| variant | val bpp | val PSNR (dB) | RD cost | vs fp32 | train s |", "|---|---:|---:|---:|---:|---:|"]
        for row in ab["rows"]:
            delta = f"{100 * (row['rd_cost'] / fp32['rd_cost'] - 1):+.2f} %" if fp32 else "-"
            lines.append(f"| {row['variant']} | {row['val_bpp']:.4f} | {row['val_psnr_db']:.2f} | "
                         f"{row['rd_cost']:.4f} | {delta} | {row['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def init_weights(name: str | None) -> tuple[dict | None, dict | None, float | None]:
    """(state dict, codec config, λ) of a trained codec (zoo name or folder), or Nones."""
    if not name:
        return None, None, None
    import json

    from safetensors.torch import load_file

    from latentzip.codecs.registry import codec_directory

    directory = codec_directory(name)
    codec = json.loads((directory / "codec.json").read_text())
    return (load_file(str(directory / "model.safetensors")), codec["config"],
            codec.get("card", {}).get("training", {}).get("lmbda"))


def config_for(config: TrainConfig, codec_config: dict | None, lmbda: float | None, ab_steps: int) -> TrainConfig:
    """The bench's config with the init codec's architecture and λ, and a schedule of ``ab_steps``."""
    changes = {}
    if codec_config is not None:
        changes.update(arch=codec_config["arch"], N=codec_config["N"], M=codec_config["M"])
    if lmbda is not None:
        changes["lmbda"] = lmbda
    if ab_steps:
        changes.update(steps=ab_steps, lr_decay_at=(1.0,))
    return dataclasses.replace(config, **changes) if changes else config
