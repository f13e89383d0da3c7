"""Train: a folder of images (or ingest's Parquet shards) -> a codec directory, on Ray Train.

Every Ray Train worker decodes its share of the images (``rank::world_size``) into memory once, then
samples random patches: a random downscale in ``[min_scale, 1]``, a random ``patch_size`` crop, a random
horizontal flip. The loop follows CompressAI's ``examples/train.py``: one Adam optimiser for the network,
one for the entropy bottleneck's ``quantiles`` (the "aux" loss), ``loss = lmbda * 255**2 * MSE + bpp``.
The network is wrapped in DDP (gloo on CPU); the aux loss bypasses DDP, so the quantiles' gradients are
averaged by hand.

Checkpoints (``model.safetensors``, ``optimizer.pt``, ``train_state.json``, ``metrics.jsonl``) are written
by rank 0 every ``checkpoint_every`` steps and at the end, under ``<out_dir>/ray/train``. Restoring: in
Ray 2.60 (Train V2) the controller keeps ``checkpoint_manager_snapshot.json`` in the run folder
(``RunConfig(storage_path, name)``); a new ``fit()`` with the same storage path and name loads it, and
``ray.train.get_checkpoint()`` then returns the latest checkpoint. So rerunning the same command on the same
``out_dir`` resumes; a larger ``steps`` continues from the last saved step. Worker failures restart the
group from the latest checkpoint too (``FailureConfig(max_failures)``).

Finally the driver loads the last checkpoint into a fresh model and exports it with
:func:`~latentzip.codecs.checkpoint.export_codec` to ``<out_dir>/codec``, and writes every reported metrics
row to ``<out_dir>/metrics.jsonl``. The history travels inside the checkpoints, so it survives restarts.
Rates reported while training (``bpp_estimate``, ``val_bpp_estimate``) are estimates from the
likelihoods; bits per pixel of real bitstreams come from the encode job and the report.

Data, validation images and ``out_dir`` are paths or fsspec URLs (pipeline/storage.py). Every worker reads
the data itself, so on a cluster use object storage (``s3://...``) or a shared file system. With a URL
``out_dir`` the checkpoints go there too: Ray Train's ``RunConfig.storage_path`` on the same URL (through
the same fsspec filesystem), so a rerun on any machine resumes from them; the codec and metrics follow.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

from latentzip.codecs.checkpoint import export_codec
from latentzip.pipeline import storage
from latentzip.pipeline.cluster import cluster_cpus, ensure_ray
from latentzip.pipeline.training.checkpoints import HISTORY, _init, read_checkpoint
from latentzip.pipeline.training.config import RUN_NAME, TrainConfig, TrainResult
from latentzip.pipeline.training.data import check_readable, resolve_data
from latentzip.pipeline.training.loop import objective_for, train_worker


HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def _trainer(config: TrainConfig, out_dir: str | Path, loop_config: dict):
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    # A URL: Ray Train writes and restores checkpoints through the same fsspec filesystem as the data.
    filesystem, storage_path = storage.arrow_filesystem(storage.join(out_dir, "ray")) if storage.is_url(out_dir) \
        else (None, str(storage.join(out_dir, "ray")))
    resources = {"CPU": loop_config["threads"], **({"GPU": config.gpus_per_worker} if config.use_gpu else {})}
    # Ray Train V2's ray.train.report returns at the controller's next poll of the workers, every
    # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s by default): each checkpoint stalled training for up to 2 s. The
    # driver's value reaches the controller (Ray propagates it); one the user set wins.
    os.environ.setdefault(HEALTH_CHECK_ENV, HEALTH_CHECK_INTERVAL_S)
    return TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            storage_path=storage_path, storage_filesystem=filesystem, name=RUN_NAME,
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2)),
    )


def check_output_dir(out_dir: str | Path) -> Path | str:
    """``out_dir`` made absolute and, if local, created and shown writable; a ValueError saying why not
    (under a regular file, a read-only file system, no permission) rather than a traceback later."""
    out_dir = storage.absolute(out_dir)
    if isinstance(out_dir, Path):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=out_dir):
                pass
        except OSError as exc:
            raise ValueError(f"cannot write the training output to {out_dir}: {exc.strerror or exc}") from exc
    return out_dir


def train(data, out_dir: str | Path, config: TrainConfig, val=None, init_from: str | Path | None = None,
          follow_symlinks: bool = False) -> TrainResult:
    """Train (or resume training) on ``data`` and export the codec to ``<out_dir>/codec``.

    ``init_from``: a codec directory (e.g. a zoo model) whose weights start a run that has no checkpoint
    yet; its steps count as done, so ``config.steps`` is the total. Optimiser state starts afresh.
    ``follow_symlinks``: read links in image folders that point outside them (pipeline/inputs.py)."""
    out_dir = check_output_dir(out_dir)
    if config.validate_every and val is None:
        raise ValueError("validate_every needs validation images (val=...)")
    source = resolve_data(data, follow_symlinks)
    val_source = resolve_data(val, follow_symlinks) if val is not None else None
    check_readable(source)
    if val_source is not None:
        check_readable(val_source)
    ensure_ray()
    threads = config.cpus_per_worker or max(1, cluster_cpus() // config.num_workers)
    loop_config = {"config": config.to_dict(), "threads": threads, "data": dataclasses.asdict(source),
                   "init": _init(init_from, config),
                   "val": dataclasses.asdict(val_source) if val_source else None}

    started = time.perf_counter()
    result = _trainer(config, out_dir, loop_config).fit()
    wall_s = time.perf_counter() - started
    if result.checkpoint is None:
        raise RuntimeError(f"training under {out_dir} finished without a checkpoint")
    with result.checkpoint.as_directory() as directory:
        weights, state, history = read_checkpoint(directory)

    model = objective_for(config).build(config)
    model.load_state_dict(weights)
    storage.write_bytes(storage.join(out_dir, HISTORY), "".join(json.dumps(row) + "\n" for row in history).encode())
    final = history[-1] if history else {}
    start_step = (result.return_value or {}).get("start_step", 0)
    card = {"training": config.to_dict(), "steps": state["step"], "resumed_from_step": start_step,
            "final_metrics": final, "wall_time_s": wall_s, "train_time_s": state["train_time_s"],
            "num_workers": state.get("world_size"), "hardware": state.get("hardware", {}),
            "runs": state.get("runs", []),
            "data": {"source": source.location, "kind": source.kind, "images": source.count}}
    if loop_config["init"] and loop_config["init"].get("history"):
        card["history"] = loop_config["init"]["history"]  # the unrecorded runs of the codec it started from
    codec_dir = storage.join(out_dir, "codec")
    if isinstance(codec_dir, Path):
        model_id = export_codec(model, codec_dir, card=card)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model_id = export_codec(model, tmp, card=card)
            storage.upload_dir(Path(tmp), codec_dir)
    return TrainResult(codec_dir, model_id.hex(), state["step"], start_step, final, wall_s,
                       storage.join(out_dir, HISTORY))
