"""Training stage: a tiny 2-worker CPU run on Ray Train learns, exports a working codec, and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from latentzip.codecs.registry import load_codec
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.data import PatchSampler, load_images, resolve_data
from latentzip.pipeline.training.trainer import train

#: MSE-heavy lmbda and a high learning rate, so a tiny model's loss falls clearly within a few dozen steps.
TINY = dict(N=16, M=24, patch_size=64, batch_size=4, lr=1e-3, lmbda=0.1, log_every=5, checkpoint_every=20,
            max_side=256, num_workers=2, cpus_per_worker=1, seed=0)


@pytest.fixture(scope="module")
def ray_cluster(ray_local):
    """The session's local Ray cluster (conftest.ray_local)."""
    return ray_local


@pytest.fixture(scope="module")
def first_run(ray_cluster, samples_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    result = train(samples_dir, out, TrainConfig(steps=40, **TINY))
    return out, result, _rows(result.metrics_path)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_training_lowers_loss_and_exports_a_codec(first_run, sample_images):
    out, result, rows = first_run
    assert result.steps == 40 and result.start_step == 0
    assert [row["step"] for row in rows] == list(range(5, 41, 5))
    first, last = np.mean([r["loss"] for r in rows[:2]]), np.mean([r["loss"] for r in rows[-2:]])
    assert last < 0.7 * first, f"loss did not fall: {first:.1f} -> {last:.1f}"

    card = json.loads((result.codec_dir / "codec.json").read_text())["card"]
    assert card["steps"] == 40 and card["num_workers"] == 2 and card["data"]["images"] == 6
    codec = load_codec(result.codec_dir)
    image = sample_images[2]  # 93x70: not a multiple of the stride
    decoded = codec.decode(codec.encode(image))
    assert decoded.size == image.size


@pytest.mark.slow
def test_rerun_with_more_steps_resumes_from_the_checkpoint(first_run, samples_dir):
    out, first, first_rows = first_run
    result = train(samples_dir, out, TrainConfig(steps=60, **TINY))
    rows = _rows(result.metrics_path)
    assert result.start_step == 40 and result.steps == 60
    # The first 40 steps are the saved history, not recomputed (their timings would differ).
    assert rows[: len(first_rows)] == first_rows
    assert [row["step"] for row in rows[len(first_rows):]] == [45, 50, 55, 60]
    assert result.model_id != first.model_id
    # A larger --steps is a new run with its own learning-rate schedule: the card keeps both.
    runs = json.loads((result.codec_dir / "codec.json").read_text())["card"]["runs"]
    assert [(r["from_step"], r["last_step"], r["to_step"], r["lr"]) for r in runs] == [(0, 40, 40, 1e-3), (40, 60, 60, 1e-3)]
    assert all(r["train_time_s"] > 0 and r["device"] == "cpu" and r["num_workers"] == 2 for r in runs)
    # The second run resumed Adam's state from the run's own checkpoint; the first began with none.
    assert [r["optimizer"] for r in runs] == ["fresh", "continued"]


def test_config_rejects_unknown_keys_and_bad_patch():
    assert TrainConfig.from_dict({"steps": 5, "N": 8}).steps == 5
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"stepz": 5})
    with pytest.raises(ValueError, match="multiple of 64"):
        TrainConfig(patch_size=100)


def test_sampler_handles_images_smaller_than_the_patch():
    images = [torch.randint(0, 256, (3, 20, 300), dtype=torch.uint8)]
    batch = PatchSampler(images, 64, 0.5, np.random.default_rng(0)).batch(3)
    assert batch.shape == (3, 3, 64, 64) and 0 <= batch.min() and batch.max() <= 1


def test_shards_are_sniffed_and_split_between_workers(samples_dir, tmp_path):
    from latentzip.pipeline.shards import ingest

    ingest(samples_dir, tmp_path, images_per_shard=4, progress=None)
    source = resolve_data(tmp_path)
    assert source.kind == "parquet" and source.count == 6 and len(source.paths) == 2
    shares = [load_images(source, rank, 4, max_side=64) for rank in range(4)]
    assert [len(s) for s in shares] == [2, 2, 1, 1]
    assert all(max(image.shape[1:]) == 64 for share in shares for image in share)
    folder = resolve_data(samples_dir)
    assert folder.kind == "files" and folder.count == 6 and all(p.endswith(".jpg") for p in folder.paths)


def test_several_folders_train_on_all_their_images(samples_dir, tmp_path):
    import shutil

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    photos = sorted(p for p in samples_dir.iterdir() if p.suffix == ".jpg")
    for i, photo in enumerate(photos):
        shutil.copy(photo, tmp_path / ("a" if i % 2 else "b") / photo.name)
    source = resolve_data([tmp_path / "a", tmp_path / "b"])
    assert source.kind == "files" and source.count == len(photos)
    assert sorted(p.rsplit("/", 1)[-1] for p in source.paths) == sorted(p.name for p in photos)
    assert resolve_data([tmp_path / "a"]).count == len(photos) // 2  # one folder in a list: that folder


def test_rsqrt_schedule_continues_instead_of_restarting():
    plain = TrainConfig(steps=60_000, lr_decay_at=(0.9,))
    falling = TrainConfig(steps=60_000, lr_decay_at=(0.9,), lr_rsqrt_from=10_000)
    assert plain.lr_factor(45_001) == 1.0  # a resume restarts at the top learning rate
    assert falling.lr_factor(10_000) == 1.0
    assert falling.lr_factor(40_000) == pytest.approx(0.5)
    assert falling.lr_factor(54_001) == pytest.approx(0.1 * (10_000 / 54_001) ** 0.5)
    with pytest.raises(ValueError, match="lr_rsqrt_from"):
        TrainConfig(lr_rsqrt_from=-1)


def test_bf16_training_step_keeps_the_rate_in_fp32_and_learns():
    from latentzip.codecs.hyperprior import build_model
    from latentzip.pipeline.training.loop import make_optimizers, train_step

    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    config = TrainConfig(arch="mean-scale-hyperprior", N=16, M=24, patch_size=64, batch_size=2, lr=1e-3,
                         lmbda=0.1, precision="bf16")
    torch.manual_seed(0)
    model = build_model(config.codec_config)
    model.transform_dtype = torch.bfloat16
    out = model(torch.rand(2, 3, 64, 64))
    assert out["x_hat"].dtype == torch.float32
    assert all(lik.dtype == torch.float32 for lik in out["likelihoods"].values())
    optimizers = make_optimizers(model, config)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    losses = [train_step(model, model, x, optimizers, config, 1, step)[0].item() for step in range(1, 31)]
    assert losses[-1] < losses[0]
