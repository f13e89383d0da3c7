"""Training on a cluster: a λ sweep of concurrent trials, a worker killed mid-run, the learning-rate schedule."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.training.sweep import plan, train_sweep
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.trainer import train

TINY = dict(N=16, M=24, patch_size=64, batch_size=4, lr=1e-3, log_every=10, max_side=256, seed=0)


def test_plan_shares_the_cluster_between_trials():
    config = TrainConfig(num_workers=1, **TINY)
    concurrent, configs = plan(config, [0.1, 0.01, 0.001], cpus=2, gpus=0)
    assert concurrent == 2 and [c.lmbda for c in configs] == [0.1, 0.01, 0.001]
    assert all(c.cpus_per_worker == 1 for c in configs)
    concurrent, configs = plan(config, [0.1, 0.01], cpus=8, gpus=0)
    assert concurrent == 2 and configs[0].cpus_per_worker == 4
    concurrent, configs = plan(TrainConfig(num_workers=2, use_gpu=True, **TINY), [0.1, 0.01], cpus=8, gpus=1)
    assert configs[0].gpus_per_worker == 0.25
    with pytest.raises(ValueError, match="no GPU"):
        plan(TrainConfig(num_workers=1, use_gpu=True, **TINY), [0.1], cpus=2, gpus=0)
    with pytest.raises(ValueError, match="distinct"):
        plan(config, [0.1, 0.1], cpus=2, gpus=0)


def test_learning_rate_drops_at_the_decay_points():
    config = TrainConfig(steps=100, lr_decay_at=(0.5, 0.9), lr_decay=0.1, **TINY)
    assert [config.lr_factor(s) for s in (1, 50, 51, 90, 91, 100)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    with pytest.raises(ValueError):
        TrainConfig(lr_decay_at=(1.5,), **TINY)


@pytest.mark.slow
def test_sweep_of_two_lambdas_gives_codecs_ordered_by_rate(ray_local, samples_dir, tmp_path, sample_images):
    config = TrainConfig(steps=60, checkpoint_every=60, validate_every=30, num_workers=1, **TINY)
    results = train_sweep(samples_dir, tmp_path, config, [0.001, 0.1], val=samples_dir, progress=lambda _: None)
    assert [r.codec_dir for r in results] == [tmp_path / "lambda-0.001" / "codec", tmp_path / "lambda-0.1" / "codec"]
    rates = []
    for result, lmbda in zip(results, (0.001, 0.1)):
        card = json.loads((result.codec_dir / "codec.json").read_text())["card"]
        assert card["training"]["lmbda"] == lmbda and card["steps"] == 60
        assert card["training"]["cpus_per_worker"] == 1  # 2 CPUs shared by 2 concurrent trials
        codec = load_codec(result.codec_dir)
        rates.append(sum(len(codec.encode(image)) for image in sample_images))
        # Validation at steps 30 and 60 coded the validation images for real: bytes, not likelihoods.
        rows = [json.loads(line) for line in Path(result.metrics_path).read_text().splitlines()]
        validated = [row for row in rows if "val_bpp" in row]
        assert [row["step"] for row in validated] == [30, 60]
        assert all(row["val_bpp"] > 0 and 5 < row["val_psnr_db"] < 60 for row in validated)
    assert rates[0] < rates[1], f"bytes by lambda: {rates}"


def _worker_pids() -> list[int]:
    """Ray Train worker processes of the test's own local cluster (the raylet is this process's child)."""
    import psutil

    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                pids.append(process.pid)
        except psutil.Error:
            continue
    return pids


def _registered_checkpoints(run: Path) -> list:
    try:
        return json.loads((run / "checkpoint_manager_snapshot.json").read_text())["checkpoint_results"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.slow
def test_a_killed_worker_resumes_from_the_last_checkpoint(ray_local, samples_dir, tmp_path):
    """SIGKILL one of two DDP workers once the controller has registered a checkpoint (a checkpoint on disk
    that is not registered yet is, rightly, not resumed from): the group restarts from it."""
    config = TrainConfig(steps=200, checkpoint_every=20, num_workers=2, cpus_per_worker=1, max_failures=2,
                         lmbda=0.01, **TINY)
    killed: list[int] = []

    def kill_after_first_checkpoint():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _registered_checkpoints(tmp_path / "ray" / "train"):
                pids = _worker_pids()
                if pids:
                    os.kill(pids[-1], signal.SIGKILL)
                    killed.append(pids[-1])
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    result = train(samples_dir, tmp_path, config)
    killer.join(timeout=5)
    assert killed, "no worker was killed: training finished before the first checkpoint appeared"
    assert result.steps == 200
    assert 0 < result.start_step < 200, "the restarted group did not resume from a checkpoint"
    assert result.start_step % 20 == 0
    steps = [json.loads(line)["step"] for line in Path(result.metrics_path).read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 200  # history continues, nothing replayed twice
    # A worker-group restart continues the run's record: one run, 0 -> 200.
    runs = json.loads((result.codec_dir / "codec.json").read_text())["card"]["runs"]
    assert [(r["from_step"], r["last_step"], r["to_step"]) for r in runs] == [(0, 200, 200)]


@pytest.mark.slow
def test_bench_train_times_the_same_step_in_both_loops(ray_local, samples_dir):
    from latentzip.pipeline.bench.train import bench_train, markdown

    config = TrainConfig(num_workers=1, checkpoint_every=20, **{**TINY, "batch_size": 2})
    result = bench_train(samples_dir, config, steps=25, threads=1, workers=1, progress=lambda _: None)
    assert result["plain"]["steps"] == result["ray_1_worker"]["steps"] == 25
    # A checkpoint every 20 steps: those at 40 and at the end (50) fall in the timed window and count.
    assert result["ray_1_worker"]["checkpoints"] == 2
    assert result["plain"]["images_per_s"] > 0 and result["ray_1_worker"]["images_per_s"] > 0
    assert result["ray_1_worker"]["wall_s"] > result["ray_1_worker"]["seconds"]
    assert "overhead" in markdown(result)


@pytest.mark.slow
def test_training_continues_from_a_trained_codec(ray_local, samples_dir, tmp_path, tiny_codec_dir):
    from latentzip.codecs.checkpoint import read_card

    card = read_card(tiny_codec_dir)
    config = TrainConfig(steps=10, checkpoint_every=10, num_workers=1, cpus_per_worker=1, **TINY)
    # The tiny codec has no "steps" in its card: 0 done, 10 to go.
    result = train(samples_dir, tmp_path / "a", config, init_from=tiny_codec_dir)
    assert result.start_step == 0 and result.steps == 10 and result.model_id != card["model_id"]
    again = train(samples_dir, tmp_path / "b", TrainConfig(**{**vars(config), "steps": 15}), init_from=result.codec_dir)
    assert again.start_step == 10 and again.steps == 15
    # The runs of the codec it started from come along.
    runs = read_card(again.codec_dir)["card"]["runs"]
    assert [(r["from_step"], r["last_step"]) for r in runs] == [(0, 10), (10, 15)]
    # Weights alone come from a codec: Adam's moments start afresh, and the card says so.
    assert [r["optimizer"] for r in runs] == ["fresh", "fresh"]
    with pytest.raises(ValueError, match="already has 15 steps"):
        train(samples_dir, tmp_path / "c", TrainConfig(**{**vars(config), "steps": 15}), init_from=again.codec_dir)
    with pytest.raises(ValueError, match="N=16 M=24"):
        train(samples_dir, tmp_path / "d", TrainConfig(**{**vars(config), "N": 8}), init_from=again.codec_dir)
