"""The training objective of the ``gaussian-vae`` architecture (codecs/gaussian_vae.py), for pipeline/training/loop.py.

The loop, Ray Train, DDP, checkpoints and resume are training.py's; this module says what differs for a VAE:

- **batches**: each worker's share of the images is converted once to the model's input (grey or RGB,
  resized to ``image_size``, codecs/vae_generative.py: :func:`~latentzip.codecs.vae_generative.prepare`) and
  held in memory; a batch is ``batch_size`` of them drawn at random (with replacement);
- **loss**: the negative ELBO, ``reconstruction + beta_t * KL(q(z|x) || N(0, I))`` in nats per image, with
  ``beta_t = beta * min(1, step / kl_warmup)`` (the KL warm-up of Bowman et al. 2016 / Sønderby et al. 2016,
  which keeps the posterior from collapsing onto the prior early on). One Adam optimiser; the learning rate
  follows ``TrainConfig.lr_factor``. With the two-stage prior (codecs/two_stage.py) the loss also holds
  stage 2's -ELBO of the batch's posterior means (detached), from step ``prior_from * steps`` on (weight 0
  before: stage 2 learns stage 1's settled latents, in the same run);
- **metrics**: the loss, its terms (``prior_nats``: stage 2's, 0 without it), and ``neg_elbo_bpp``, the
  true bound (beta = 1) in bits per pixel of
  the training batches; validation gives ``val_neg_elbo_bpp`` on whole validation images.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from latentzip.codecs.gaussian_vae import GaussianVAE, neg_elbo_bpp
from latentzip.codecs.vae_generative import prepare

_LUMA = torch.tensor([0.299, 0.587, 0.114]).reshape(1, 3, 1, 1)  # ITU-R 601, what Pillow's "L" uses


def to_model_input(images: list[torch.Tensor], channels: int, image_size: int) -> torch.Tensor:
    """uint8 (3, H, W) images (training.load_images) -> one float batch (N, channels, S, S) in [0, 1]."""
    batch = []
    for image in images:
        x = image[None].float().div(255.0)
        if channels == 1:
            x = (x * _LUMA).sum(1, keepdim=True)
        batch.append(prepare(x, image_size))
    return torch.cat(batch)


class ImageBatches:
    """Random batches of whole images, already at the model's input size."""

    def __init__(self, images: list[torch.Tensor], channels: int, image_size: int, rng: np.random.Generator):
        self.data, self.rng = to_model_input(images, channels, image_size), rng

    def batch(self, size: int) -> torch.Tensor:
        return self.data[torch.from_numpy(self.rng.integers(len(self.data), size=size))]


def beta_at(config, step: int) -> float:
    """The KL weight at ``step``: ``beta``, ramped linearly from 0 over the first ``kl_warmup`` steps."""
    return config.beta * min(1.0, step / config.kl_warmup) if config.kl_warmup else config.beta


class VAEObjective:
    """See the module docstring; the interface is training/loop.py's ``HyperpriorObjective``."""

    metrics = ("loss", "reconstruction", "kl", "neg_elbo_bpp", "prior")
    run_settings = ("lr", "lr_decay", "lr_rsqrt_from", "batch_size", "beta", "kl_warmup", "prior_from")

    @staticmethod
    def build(config) -> GaussianVAE:
        return GaussianVAE(config.codec_config)

    @staticmethod
    def optimizers(module: GaussianVAE, config) -> tuple[torch.optim.Optimizer]:
        return (torch.optim.Adam(module.parameters(), lr=config.lr),)

    @staticmethod
    def sampler(images, config, rng) -> ImageBatches:
        return ImageBatches(images, config.channels, config.image_size, rng)

    @staticmethod
    def step(model, module: GaussianVAE, x: torch.Tensor, optimizers, config, world: int, step: int) -> torch.Tensor:
        """One Adam step on the -ELBO (beta warmed up). Returns detached (loss, reconstruction, kl, bpp, prior)."""
        (optimizer,) = optimizers
        for group in optimizer.param_groups:
            group["lr"] = config.lr * config.lr_factor(step)
        optimizer.zero_grad(set_to_none=True)
        out = model(x)  # through DDP: its gradients are averaged over the workers
        terms = module.loss(x, out, beta_at(config, step), prior_weight=float(step > config.prior_from * config.steps))
        terms["loss"].backward()
        optimizer.step()
        pixels = x.shape[-1] * x.shape[-2]
        bpp = (terms["reconstruction"] + terms["kl"]) / (math.log(2) * pixels)
        return torch.stack([terms["loss"], terms["reconstruction"], terms["kl"], bpp, terms["prior"]]).detach()

    @staticmethod
    def summarise(sums: torch.Tensor, count: int, world: int) -> dict:
        if world > 1:
            torch.distributed.all_reduce(sums)
        loss, reconstruction, kl, bpp, prior = (sums / (count * world)).tolist()
        return {"loss": loss, "reconstruction_nats": reconstruction, "kl_nats": kl, "neg_elbo_bpp": bpp,
                "prior_nats": prior}

    @staticmethod
    @torch.no_grad()
    def evaluate(module: GaussianVAE, images: list[torch.Tensor], config) -> dict:
        module.eval()
        device = next(module.parameters()).device
        x = to_model_input(images, config.channels, config.image_size).to(device)
        bpp = float(neg_elbo_bpp(module, x, samples=4).mean())
        module.train()
        return {"val_neg_elbo_bpp": bpp}

    @staticmethod
    def progress_line(row: dict, config) -> str:
        rate = row["steps_per_s"]
        eta = (config.steps - row["step"]) / rate if rate > 0 else math.inf
        eta_text = (f"{int(eta // 3600)}:{int(eta % 3600 // 60):02d}:{int(eta % 60):02d}" if math.isfinite(eta)
                    else "?")
        line = (f"train gaussian-vae β={config.beta:g}: step {row['step']}/{config.steps} loss {row['loss']:.2f} "
                f"(recon {row['reconstruction_nats']:.2f} + KL {row['kl_nats']:.2f} nats) "
                + (f"stage 2 {row['prior_nats']:.2f} nats " if config.prior != "normal" else "")
                + f"-ELBO {row['neg_elbo_bpp']:.4f} bpp {rate:.1f} steps/s ETA {eta_text}")
        return line + (f" | val -ELBO {row['val_neg_elbo_bpp']:.4f} bpp" if "val_neg_elbo_bpp" in row else "")
