"""Training checkpoints (``model.safetensors``, ``optimizer.pt``, ``train_state.json``, ``metrics.jsonl``),
written by rank 0 every ``checkpoint_every`` steps and at the end; restoring them; starting from a trained
codec's weights (``init_from``); and the record of the runs that led to a checkpoint (the model card's)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from latentzip.pipeline import storage
from latentzip.pipeline.training.config import TrainConfig


WEIGHTS, OPTIMIZER, STATE, HISTORY = "model.safetensors", "optimizer.pt", "train_state.json", "metrics.jsonl"


def _hardware(device: torch.device, threads: int) -> dict:
    gpu = {"gpu": torch.cuda.get_device_name(device)} if device.type == "cuda" else {}
    return {"device": str(device), **gpu, "cpu_count": os.cpu_count(), "torch_threads": threads,
            "torch": torch.__version__}


def _save_checkpoint(directory: Path, module, optimizers, state: dict, history: list[dict]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()},
              str(directory / WEIGHTS))
    torch.save({**{name: opt.state_dict() for name, opt in zip(("net", "aux"), optimizers)}, "step": state["step"]},
               directory / OPTIMIZER)
    (directory / STATE).write_text(json.dumps(state, indent=2) + "\n")
    (directory / HISTORY).write_text("".join(json.dumps(row) + "\n" for row in history))


def read_checkpoint(directory: Path) -> tuple[dict, dict, list[dict]]:
    """(weights, train state, metrics history) from a training checkpoint directory."""
    from safetensors.torch import load_file

    directory = Path(directory)
    history = [json.loads(line) for line in (directory / HISTORY).read_text().splitlines()]
    return load_file(str(directory / WEIGHTS)), json.loads((directory / STATE).read_text()), history


def _restore(module, optimizers) -> tuple[dict, list[dict]]:
    """Load the latest Ray Train checkpoint, if any, into the model and optimisers."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return {"step": 0, "train_time_s": 0.0}, []
    with checkpoint.as_directory() as directory:
        weights, state, history = read_checkpoint(directory)
        module.load_state_dict(weights)  # CompressAI's: resizes the entropy-coder buffers first
        saved = torch.load(Path(directory) / OPTIMIZER, weights_only=True)
    for name, optimizer in zip(("net", "aux"), optimizers):
        optimizer.load_state_dict(saved[name])
    return state, history


def initialise(module, init: dict) -> dict:
    """Start from a trained codec's weights (fresh optimisers), counting its steps (and runs) as done."""
    from safetensors.torch import load

    module.load_state_dict(load(storage.read_bytes(init["weights"])))
    return {"step": init["step"], "train_time_s": init["train_time_s"], "runs": init.get("runs", [])}


#: The settings of a run kept in its record (``_runs``): what a model card needs to say how it was trained.
RUN_SETTINGS = ("lmbda", "lr", "aux_lr", "lr_decay", "lr_rsqrt_from", "batch_size", "patch_size", "min_scale",
                "clip_max_norm", "precision")


def _runs(state: dict, config: TrainConfig, start: int, world: int, device, optimizer: str = "continued",
          settings: tuple[str, ...] = RUN_SETTINGS) -> list[dict]:
    """The runs that led to this checkpoint, this one last. The learning-rate schedule is a function of
    the run's total ``steps``, so a resume with a larger ``steps`` is a new run (its own schedule), while
    rerunning the same command or a worker-group restart continues the last one. ``optimizer`` says
    whether a new run kept Adam's state ("continued", from its own checkpoint) or started it afresh
    ("fresh": a new model, or weights alone from ``init_from``)."""
    runs = [dict(run) for run in state.get("runs", [])]
    if not runs or runs[-1]["to_step"] != config.steps:
        runs.append({"from_step": start, "to_step": config.steps, "last_step": start, "train_time_s": 0.0,
                     **{name: getattr(config, name) for name in settings},
                     "lr_decay_at": list(config.lr_decay_at), "num_workers": world, "device": str(device),
                     "optimizer": optimizer})
    return runs


def initial_weights(codec_dir: str | Path, config: TrainConfig) -> dict:
    """What ``train(init_from=...)`` passes to the workers: the weights file and the steps already done."""
    from latentzip.codecs.checkpoint import WEIGHTS_FILE, read_card
    from latentzip.codecs.hyperprior import CodecConfig
    from latentzip.codecs.registry import config_from_dict, fetch_codec

    remote = storage.is_url(codec_dir)
    document = read_card(fetch_codec(str(codec_dir)) if remote else codec_dir)
    stored = config_from_dict(document["config"])
    if not isinstance(stored, CodecConfig) or not isinstance(config.codec_config, CodecConfig):
        if stored != config.codec_config:
            raise ValueError(f"{codec_dir} is {stored}; this run is {config.codec_config}")
    elif (stored.arch, stored.N, stored.M) != (config.arch, config.N, config.M):
        raise ValueError(f"{codec_dir} is {stored.arch} N={stored.N} M={stored.M}; this run is "
                         f"{config.arch} N={config.N} M={config.M}")
    card = document.get("card") or {}
    # Workers read the weights themselves (from the URL, or the path, which every node has for a zoo model).
    weights = storage.join(codec_dir, WEIGHTS_FILE) if remote else Path(codec_dir).resolve() / WEIGHTS_FILE
    return {"weights": str(weights), "step": int(card.get("steps", 0)),
            "train_time_s": float(card.get("train_time_s", 0.0)), "runs": card.get("runs", []),
            **({"history": card["history"]} if card.get("history") else {})}


def _init(init_from, config: TrainConfig) -> dict | None:
    if init_from is None:
        return None
    init = initial_weights(init_from, config)
    if init["step"] >= config.steps:
        raise ValueError(f"{init_from} already has {init['step']} steps; ask for more (--steps)")
    return init
