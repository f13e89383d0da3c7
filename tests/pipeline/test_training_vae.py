"""gaussian-vae through the pipeline: digits exported, a 2-worker Ray Train run whose -ELBO falls, then every
command on the trained model, and the commands that refuse it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from latentzip.jobs import bench, datasets, encode, interpolate, sample, score
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.trainer import train

#: A tiny model on the 8x8 digits and a high learning rate: the -ELBO falls clearly within a few dozen steps.
#: With the two-stage prior, so that stage 2 trains through DDP beside stage 1 (the normal prior is the
#: same path without it).
TINY = dict(arch="gaussian-vae", latent_dims=4, width=8, hidden=32, image_size=8, batch_size=32, lr=3e-3,
            log_every=10, checkpoint_every=30, num_workers=2, cpus_per_worker=1, seed=0, prior="two-stage",
            prior_hidden=16)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert datasets.main(["digits", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def trained(ray_local, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae-run")
    result = train(digits / "train", out, TrainConfig(steps=60, **TINY))
    return out, result


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def test_datasets_digits_exports_a_stratified_split(digits):
    summary = json.loads((digits / "digits.json").read_text())
    assert summary["train"] == 1500 and summary["test"] == 297
    assert len(list((digits / "train").rglob("*.png"))) == 1500
    assert sorted(p.name for p in (digits / "test").iterdir()) == [str(d) for d in range(10)]


def test_two_worker_run_lowers_the_elbo(trained):
    # Resuming is training.py's, shared with the hyperprior (test_training.py); a second fit here cost ~60 s.
    out, result = trained
    rows = _rows(result.metrics_path)
    assert [row["step"] for row in rows] == list(range(10, 61, 10))
    assert all(row["kl_nats"] >= 0 for row in rows)
    assert rows[-1]["neg_elbo_bpp"] < 0.8 * rows[0]["neg_elbo_bpp"], rows
    card = json.loads((Path(result.codec_dir) / "codec.json").read_text())
    assert card["config"]["arch"] == "gaussian-vae" and card["card"]["num_workers"] == 2
    assert card["config"]["prior"] == "two-stage" and rows[-1]["prior_nats"] < rows[0]["prior_nats"], rows
    assert (out / "ray" / "train").is_dir()  # Ray Train's checkpoints, what a rerun resumes from


def test_sample_interpolate_score_and_benches_on_the_trained_model(trained, digits, tmp_path, capsys):
    codec = str(trained[1].codec_dir)
    assert sample.main(["--model", codec, "-n", "9", "--out", str(tmp_path / "s"), "--temperature", "0.8"]) == 0
    assert (tmp_path / "s" / "grid.png").is_file() and (tmp_path / "s" / "sample-08.png").is_file()
    a, b = sorted((digits / "test" / "0").iterdir())[0], sorted((digits / "test" / "7").iterdir())[0]
    assert interpolate.main([str(a), str(b), "--model", codec, "-n", "5", "--mode", "both",
                             "--out", str(tmp_path / "i")]) == 0
    assert (tmp_path / "i" / "linear-04.png").is_file() and (tmp_path / "i" / "spherical-00.png").is_file()
    assert score.main([str(digits / "test" / "3"), "--model", codec, "--reference", str(digits / "test"),
                       "--out", str(tmp_path / "scores")]) == 0
    rows = pq.read_table(tmp_path / "scores" / "rows.parquet").to_pylist()
    assert len(rows) == 30 and all(np.isfinite(r["neg_elbo_bpp"]) and r["neg_elbo_bpp"] > 0 for r in rows)
    assert bench.main(["digits", "--model", codec, "-n", "50", "--classifier", "logreg", "--out", str(tmp_path / "d.json")]) == 0
    result = json.loads((tmp_path / "d.json").read_text())
    assert sum(result["histogram"]) == 50 and result["test_accuracy"] >= 0.95
    assert bench.main(["anomaly", "--model", codec, "--out", str(tmp_path / "a.json")]) == 0
    metrics = json.loads((tmp_path / "a.json").read_text())["metrics"]
    assert set(metrics) == {"neg_elbo_bpp", "pca_error", "png_bpp"} and metrics["neg_elbo_bpp"]["noise"]["auroc"] > 0.9
    capsys.readouterr()


def test_commands_that_need_bitstreams_refuse_it(trained, digits, tmp_path, capsys):
    codec = str(trained[1].codec_dir)
    assert encode.main([str(digits / "test"), "--model", codec, "--archive", str(tmp_path / "a.zarr")]) == 2
    assert "no entropy coder" in capsys.readouterr().err
    assert bench.main(["rd", codec, "--images", str(digits / "test" / "1"), "--against", "none",
                       "--out", str(tmp_path / "rd.md")]) == 2
    assert "bench rd needs an entropy-coded codec" in capsys.readouterr().err
    assert sample.main(["--model", codec, "--size", "32x32", "--out", str(tmp_path / "s")]) == 2
    assert "--size does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        score.main(["--archive", str(tmp_path / "x.zarr"), "--model", codec, "--out", str(tmp_path / "o")])
    assert "no archive of it to score" in capsys.readouterr().err


def test_prior_from_is_a_fraction_of_the_steps_and_stage_two_waits_for_it():
    import torch

    from latentzip.codecs.gaussian_vae import GaussianVAE
    from latentzip.pipeline.training.vae import VAEObjective

    with pytest.raises(ValueError, match=r"prior_from must be a fraction of the steps in \[0, 1\), got 1.0"):
        TrainConfig(**{**TINY, "prior_from": 1.0})
    config = TrainConfig(**{**TINY, "steps": 4, "prior_from": 0.5, "lr": 1e-2})
    torch.manual_seed(0)
    module = GaussianVAE(config.codec_config)
    optimizers = VAEObjective.optimizers(module, config)
    x = torch.rand(8, 1, 8, 8)
    stage_two = {k: v.clone() for k, v in module.state_dict().items() if k.startswith("prior.")}
    for step in (1, 2):  # steps 1-2 of 4: stage 2's weight is 0, its parameters do not move
        VAEObjective.step(module, module, x, optimizers, config, 1, step)
    assert all(torch.equal(module.state_dict()[k], v) for k, v in stage_two.items())
    VAEObjective.step(module, module, x, optimizers, config, 1, 3)
    assert not torch.equal(module.state_dict()["prior.log_gamma"], stage_two["prior.log_gamma"])
