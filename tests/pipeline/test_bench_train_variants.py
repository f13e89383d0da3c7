"""``latentzip bench train --variants``: each variant really changes the step, and the A/B is fair."""


import pytest
import torch

from latentzip.jobs.bench import main as bench_main
from latentzip.pipeline.bench import train_variants as bench
from latentzip.pipeline.training.config import TrainConfig
from latentzip.pipeline.training.data import load_images, resolve_data

TINY = dict(arch="mean-scale-hyperprior", N=16, M=16, patch_size=64, batch_size=2, steps=4, lr_decay_at=(1.0,))


def _weights_after(samples_dir, variant: str, init=None) -> tuple[torch.nn.Module, torch.Tensor]:
    config = TrainConfig(**TINY)
    loop = bench._Loop(load_images(resolve_data(samples_dir), max_side=config.max_side), config, variant, init)
    loop.run(3)
    return loop.model, loop.model.g_s[0].weight.detach().clone()


def test_variants_change_the_step_and_start_from_the_same_weights(samples_dir):
    fp32, weights = _weights_after(samples_dir, "fp32")
    again = _weights_after(samples_dir, "fp32")[1]
    assert torch.equal(weights, again)  # same init, same crops: the A/B compares like with like
    bf16_model, bf16 = _weights_after(samples_dir, "bf16")
    assert bf16_model.transform_dtype == torch.bfloat16 and not torch.equal(weights, bf16)
    cl_model, _ = _weights_after(samples_dir, "channels-last")
    assert cl_model.g_a[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not fp32.g_a[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_bench_variants_writes_throughput_and_equal_steps(samples_dir, tmp_path, capsys):
    out = tmp_path / "variants.md"
    assert bench_main(["train", str(samples_dir), "--variants", "fp32,bf16", "--arch", "mean-scale-hyperprior",
                       "--N", "16", "--M", "16", "--patch-size", "64", "--batch-size", "2", "--steps", "3",
                       "--repeats", "1", "--ab-steps", "3", "--val", str(samples_dir), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| fp32 | 1 |" in text and "| bf16 | 1 |" in text
    assert "Equal steps" in text and "| fp32 | " in text.split("Equal steps")[1]


def test_bench_variants_rejects_unknown_variants_and_a_b_without_val(samples_dir, tmp_path, capsys):
    assert bench_main(["train", str(samples_dir), "--variants", "fp16", "--out", str(tmp_path / "x.md")]) == 2
    assert "unknown training variant(s) fp16" in capsys.readouterr().err
    assert bench_main(["train", str(samples_dir), "--variants", "fp32", "--ab-steps", "5",
                       "--out", str(tmp_path / "x.md")]) == 2
    assert "--ab-steps needs --val" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()
