"""The Gaussian VAE on PIL images: sample, interpolate, draw the latent manifold, score.

The counterpart of ``generative.py`` for ``gaussian-vae`` models (codecs/gaussian_vae.py): no entropy
coder, a global latent ``z`` per image.

- **sample** (:func:`sample_images`): ``u ~ N(0, T**2 I)``, mapped to a latent ``z`` by the model's prior
  (``z = u``, or stage 2's decoder under the two-stage prior), decoded to the decoder's mean image. Sample ``i``
  depends only on ``(seed, i)``, the model and the temperature ``T``, not on how many are drawn.
- **interpolate** (:func:`interpolate_images`): the posterior means of two images, joined by a straight line
  (``linear``) or a great circle (``spherical``, :func:`~latentzip.codecs.gaussian_vae.slerp`), decoded.
- **manifold** (:func:`manifold_grid`): for a 2-D latent, the decoded images of a grid of ``z`` placed at
  the quantiles of N(0, 1) on each axis (Kingma & Welling's figure 4), so equal steps of the grid are equal
  steps of prior mass (through the two-stage prior's mapping, if the model has one).
- **score** (:func:`score_images`): ``-ELBO`` in bits per pixel per image, the anomaly score.

Images are brought to the model's input by one policy (:func:`to_input`): converted to grey (ITU-R 601
luma, Pillow's ``L``) or RGB as the model has 1 or 3 channels, resized to ``image_size`` with bilinear
filtering, scaled to [0, 1].
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from latentzip.codecs.gaussian_vae import GaussianVAE, neg_elbo_bpp, slerp

INTERPOLATIONS = ("linear", "spherical")


def to_input(images: list[Image.Image], model: GaussianVAE) -> torch.Tensor:
    """PIL images -> the model's input batch (B, C, S, S) in [0, 1]."""
    config = model.config
    mode = "L" if config.channels == 1 else "RGB"
    batch = []
    for image in images:
        array = np.asarray(image.convert(mode), dtype=np.float32).reshape(image.height, image.width, -1) / 255.0
        batch.append(prepare(torch.from_numpy(array).permute(2, 0, 1)[None], config.image_size))
    return torch.cat(batch)


def prepare(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """A float batch (B, C, H, W) in [0, 1] resized (bilinear) to ``image_size`` square, clamped to [0, 1]."""
    if x.shape[-2:] == (image_size, image_size):
        return x
    antialias = min(x.shape[-2:]) > image_size
    return F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False,
                         antialias=antialias).clamp(0, 1)


def to_images(x: torch.Tensor, scale: int = 1) -> list[Image.Image]:
    """A batch (B, C, S, S) in [0, 1] -> 8-bit PIL images (grey or RGB), enlarged ``scale`` times (nearest)."""
    pixels = x.detach().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    images = []
    for one in pixels:
        array = one[0].numpy() if one.shape[0] == 1 else one.permute(1, 2, 0).numpy()
        image = Image.fromarray(array, "L" if one.shape[0] == 1 else "RGB")
        images.append(image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
                      if scale > 1 else image)
    return images


def _sample_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), index]).generate_state(1, np.uint64)[0]) >> 1


def sample_latents(model: GaussianVAE, count: int, seed: int = 0, temperature: float = 1.0) -> torch.Tensor:
    """``count`` latents (count, L) from N(0, temperature**2 I); row ``i`` depends on ``(seed, i)`` only."""
    if count < 0:
        raise ValueError(f"need count >= 0, got {count}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    rows = [torch.randn(model.config.latent_dims, generator=torch.Generator().manual_seed(_sample_seed(seed, i)))
            for i in range(count)]
    return temperature * torch.stack(rows) if rows else torch.zeros(0, model.config.latent_dims)


@torch.no_grad()
def sample_tensor(model: GaussianVAE, count: int, seed: int = 0, temperature: float = 1.0,
                  batch: int = 256) -> torch.Tensor:
    """``count`` samples (count, C, S, S) in [0, 1]: the decoder's mean for each drawn ``z``."""
    z = sample_latents(model, count, seed, temperature)
    device = next(model.parameters()).device
    parts = [model.synthesize(model.latent_from_prior(z[i : i + batch].to(device))).cpu()
             for i in range(0, count, batch)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.channels, model.config.image_size,
                                                      model.config.image_size)


def sample_images(model: GaussianVAE, count: int, seed: int = 0, temperature: float = 1.0,
                  scale: int = 1) -> list[Image.Image]:
    return to_images(sample_tensor(model, count, seed, temperature), scale)


@torch.no_grad()
def interpolate_images(model: GaussianVAE, image_a: Image.Image, image_b: Image.Image, steps: int = 8,
                       mode: str = "spherical", scale: int = 1) -> list[Image.Image]:
    """``steps`` frames decoded along the path between the posterior means of ``image_a`` and ``image_b``."""
    if steps < 2:
        raise ValueError(f"need at least 2 frames (the two ends), got {steps}")
    if mode not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {mode!r}; choose one of {', '.join(INTERPOLATIONS)}")
    device = next(model.parameters()).device
    mu, _ = model.posterior(to_input([image_a, image_b], model).to(device))
    blend = torch.lerp if mode == "linear" else slerp
    z = torch.stack([blend(mu[0], mu[1], t) for t in torch.linspace(0, 1, steps).tolist()])
    return to_images(model.synthesize(z), scale)


@torch.no_grad()
def manifold_grid(model: GaussianVAE, steps: int = 16, scale: int = 1, gap: int = 0) -> Image.Image:
    """The learned 2-D manifold: ``steps`` x ``steps`` decoded images, ``z`` at the N(0, 1) quantiles of
    ``(i + 0.5) / steps`` on each axis (z_1 left to right, z_2 bottom to top). Needs ``latent_dims == 2``."""
    if model.config.latent_dims != 2:
        raise ValueError(f"the manifold grid needs a 2-D latent; this model has {model.config.latent_dims} dims")
    if steps < 2:
        raise ValueError(f"need at least 2 steps per axis, got {steps}")
    quantiles = torch.tensor([NormalDist().inv_cdf((i + 0.5) / steps) for i in range(steps)], dtype=torch.float32)
    z = torch.stack([torch.stack([quantiles[col], quantiles[steps - 1 - row]])
                     for row in range(steps) for col in range(steps)])
    device = next(model.parameters()).device
    return image_grid(to_images(model.synthesize(model.latent_from_prior(z.to(device))), scale), steps, gap)


def image_grid(images: list[Image.Image], columns: int, gap: int = 2) -> Image.Image:
    """Images of one size in a grid, ``gap`` white pixels apart (grey images stay grey)."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = Image.new(images[0].mode, (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap),
                     "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    return grid


@torch.no_grad()
def score_images(model: GaussianVAE, images: list[Image.Image], samples: int = 16, seed: int = 0,
                 batch: int = 256) -> list[float]:
    """``-ELBO`` of each image in bits per pixel (codecs/gaussian_vae.py: :func:`neg_elbo_bpp`)."""
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch):
        x = to_input(images[start : start + batch], model).to(device)
        scores += neg_elbo_bpp(model, x, samples=samples, seed=seed).tolist()
    return scores
