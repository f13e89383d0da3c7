"""Encoder-side latent refinement: better latents for the same decoder.

J. Yang, R. Bamler, S. Mandt, "Improving inference for neural image compression", NeurIPS 2020. The
analysis transform ``g_a`` is amortised: one network guesses latents for every image, and the guess is not
the best the decoder could use. Refinement starts from that guess (``y = g_a(x)``, ``z = h_a(y)``) and runs
gradient descent on ``y`` and ``z`` of each image for its own rate-distortion cost
``lmbda * 255^2 * MSE + bits / pixels`` (the model's training objective, on the true pixels only: padding
costs nothing). Rounding is relaxed by stochastic Gumbel annealing (SGA): each value is soft-rounded to its
floor or ceiling by a Gumbel-softmax whose temperature falls from 0.5 towards 0, so the relaxed problem
becomes the discrete one by the end. Then the caller quantises and codes the refined ``y`` and ``z`` exactly as
unrefined ones: the bitstream format, the decoder and the entropy parameters (the integer prior of the final
``z`` symbols) do not change, and the encoder's reconstruction is still what every decode gives.

Deterministic: the Gumbel noise of each image comes from its own generator seeded by ``seed``. Batching
changes the floating-point sums a little, so a batch of images may refine to slightly different symbols
than one image alone; each stream still decodes to exactly the reconstruction its encoder reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from latentzip.codecs.hyperprior import _transform

_EPS = 1e-5


@dataclass(frozen=True)
class Refinement:
    """How to refine: ``steps`` of Adam at learning rate ``lr`` on the cost with trade-off ``lmbda``."""

    steps: int
    lmbda: float
    lr: float = 1e-2
    seed: int = 0
    tau_max: float = 0.5
    tau_min: float = 0.1  # the temperature reached at the last step
    hold: float = 0.3  # fraction of the steps at tau_max before annealing starts
    #: Autocast dtype of g_s's convolutions while refining (``torch.bfloat16``: faster on CPUs with bf16
    #: units); the final reconstruction and the coding are float32 either way.
    synthesis_dtype: torch.dtype | None = None

    def __post_init__(self):
        if self.steps < 0:
            raise ValueError(f"refine steps must not be negative, got {self.steps}")
        if not (self.lmbda > 0 and math.isfinite(self.lmbda)):
            raise ValueError(f"refinement needs a positive lambda, got {self.lmbda}")

    def temperature(self, step: int) -> float:
        start = round(self.hold * self.steps)
        if step <= start:
            return self.tau_max
        rate = math.log(self.tau_max / self.tau_min) / max(1, self.steps - 1 - start)
        return max(self.tau_min, self.tau_max * math.exp(-rate * (step - start)))


def soft_round(values: torch.Tensor, tau: float, uniform: torch.Tensor) -> torch.Tensor:
    """SGA: ``values`` relaxed towards its floor or ceiling (Yang et al. 2020, eq. 5), with Gumbel noise
    from ``uniform`` (``values.shape + (2,)``, in (0, 1)): one draw for each of the two choices."""
    floor = torch.floor(values)
    fraction = values - floor
    logits = torch.stack([-torch.atanh(fraction.clamp(-1 + _EPS, 1 - _EPS)) / tau,
                          -torch.atanh((1 - fraction).clamp(-1 + _EPS, 1 - _EPS)) / tau], dim=-1)
    gumbel = -torch.log(-torch.log(uniform.clamp(_EPS, 1 - _EPS)))
    weights = torch.softmax((logits + gumbel) / tau, dim=-1)
    return floor + weights[..., 1]


def z_likelihoods(bottleneck, z_hat: torch.Tensor) -> torch.Tensor:
    """The entropy bottleneck's likelihoods of (B, C, H, W) values, differentiable in the values."""
    batch, channels = z_hat.shape[:2]
    values = z_hat.transpose(0, 1).reshape(channels, 1, -1)
    likelihood, _, _ = bottleneck._likelihood(values)
    if bottleneck.use_likelihood_bound:
        likelihood = bottleneck.likelihood_lower_bound(likelihood)
    return likelihood.reshape(channels, batch, *z_hat.shape[2:]).transpose(0, 1)


def y_likelihoods(conditional, y_hat: torch.Tensor, scales: torch.Tensor, means) -> torch.Tensor:
    likelihood = conditional._likelihood(y_hat, scales, means)
    if conditional.use_likelihood_bound:
        likelihood = conditional.likelihood_lower_bound(likelihood)
    return likelihood


def refine_latents(model, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, refinement: Refinement,
                   sizes: list[tuple[int, int]] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined ``(y, z)`` for the padded batch ``x``; ``sizes`` are the images' true (height, width)."""
    batch = x.shape[0]
    sizes = sizes or [tuple(x.shape[-2:])] * batch
    mask = torch.zeros(batch, 1, *x.shape[-2:], device=x.device)
    for i, (height, width) in enumerate(sizes):
        mask[i, :, :height, :width] = 1
    pixels = torch.tensor([h * w for h, w in sizes], dtype=torch.float32, device=x.device)
    generators = [torch.Generator(device=x.device).manual_seed(refinement.seed) for _ in range(batch)]
    medians = model._z_medians()
    y, z = y.detach().clone().requires_grad_(True), z.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([y, z], lr=refinement.lr)

    def noise(shape):
        return torch.cat([torch.rand((1, *shape[1:]), generator=g, device=x.device) for g in generators])

    for step in range(refinement.steps):
        tau = refinement.temperature(step)
        z_hat = medians + soft_round(z - medians, tau, noise((*z.shape, 2)))
        scales, means = model._split_params(model.h_s(z_hat))
        offset = means if means is not None else torch.zeros_like(y)
        y_hat = offset + soft_round(y - offset, tau, noise((*y.shape, 2)))
        x_hat = _transform(model.g_s, y_hat, refinement.synthesis_dtype)
        distortion = ((x_hat - x) ** 2 * mask).sum(dim=(1, 2, 3)) / (3 * pixels)
        bits = (-torch.log2(y_likelihoods(model.gaussian_conditional, y_hat, scales, means)).sum(dim=(1, 2, 3))
                - torch.log2(z_likelihoods(model.entropy_bottleneck, z_hat)).sum(dim=(1, 2, 3)))
        loss = (refinement.lmbda * 255**2 * distortion + bits / pixels).sum()
        y.grad, z.grad = torch.autograd.grad(loss, [y, z])
        optimizer.step()
    return y.detach(), z.detach()
