"""The textbook VAE: a Gaussian posterior, the reparameterisation trick and a standard normal prior.

D. P. Kingma, M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014; the β-weighted KL term of
I. Higgins et al., "β-VAE", ICLR 2017. Unlike the hyperprior codecs (a uniform-noise posterior and a learned
spatial prior, made for entropy coding), this one has a small *global* latent ``z`` of ``latent_dims``
numbers per image: a draw ``z ~ N(0, I)`` decodes to a whole new image (a handwritten digit, when trained on
digits). It has no entropy coder, so it cannot write bitstreams: it samples, interpolates and scores.

Tensor shapes for a batch ``x`` of shape (B, C, S, S), ``S = image_size``, values in [0, 1]::

    mu, logvar = g_a(x)                  (B, L), (B, L)      q(z|x) = N(mu, exp(logvar))
    z          = mu + exp(logvar/2) eps  (B, L)              reparameterised draw, eps ~ N(0, I)
    logits     = g_s(z)                  (B, C, S, S)        p(x|z): Bernoulli(sigmoid(logits)), or
                                                             Gaussian(sigmoid(logits), exp(log_sigma))
    x_hat      = sigmoid(logits)         (B, C, S, S)        the decoder's mean

``g_a`` is a stack of 4x4 stride-2 convolutions (halving S while it is even and at least 8) and two linear
layers; ``g_s`` mirrors it. The loss is the negative ELBO, ``reconstruction + beta * KL(q(z|x) || N(0, I))``,
summed over pixels and latent dimensions and averaged over the batch, in nats. :func:`neg_elbo_bpp` gives
it per image in bits per pixel (beta = 1: the real bound), the anomaly score.

``prior="two-stage"`` adds the second stage of Dai & Wipf's two-stage VAE (codecs/two_stage.py): a small VAE
over the latents, trained beside the first on its detached posterior means, whose decoder maps a draw
``u ~ N(0, I)`` to a ``z`` where the data's latents are (:meth:`GaussianVAE.latent_from_prior`). Samples
then come from the data's latents instead of the holes between them; the loss gains stage 2's -ELBO
(``out["prior"]``), which no gradient carries into stage 1. Scores, reconstructions and interpolations are
stage 1's alone.

Torch only (no ray, no zarr, no CompressAI), like the rest of ``codecs/``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from latentzip.codecs.two_stage import PRIORS, LatentVAE

ARCH = "gaussian-vae"
DECODERS = ("bernoulli", "gaussian")
#: Bounds a config must satisfy (validation.py checks them before a model is built, so that a crafted
#: codec.json cannot make building the model allocate gigabytes).
LIMITS = {"latent_dims": (1, 256), "width": (1, 256), "hidden": (1, 2048), "image_size": (4, 64),
          "channels": (1, 3), "prior_hidden": (1, 2048)}
#: The default of ``prior_hidden``; a config with the ``normal`` prior must leave it so.
PRIOR_HIDDEN = 256


@dataclass(frozen=True)
class GaussianVAEConfig:
    """Architecture of a Gaussian VAE. ``width`` is the channels of the first convolution (doubled at each
    later one), ``hidden`` the width of the linear layer between the convolutions and the latent.
    ``prior``: ``normal`` (z ~ N(0, I)) or ``two-stage`` (z = stage-2 decoder(u), u ~ N(0, I); see the
    module docstring), with ``prior_hidden`` units in each of stage 2's hidden layers."""

    arch: str = ARCH
    latent_dims: int = 16
    width: int = 32
    hidden: int = 256
    image_size: int = 16
    channels: int = 1
    decoder: str = "bernoulli"
    prior: str = "normal"
    prior_hidden: int = PRIOR_HIDDEN

    def __post_init__(self):
        if self.arch != ARCH:
            raise ValueError(f"a GaussianVAEConfig has arch {ARCH!r}, got {self.arch!r}")
        for key, (low, high) in LIMITS.items():
            value = getattr(self, key)
            if type(value) is not int or not low <= value <= high:
                raise ValueError(f"{key} must be an integer in {low}..{high}, got {value!r:.40}")
        if self.decoder not in DECODERS:
            raise ValueError(f"unknown decoder {self.decoder!r}; choose one of {', '.join(DECODERS)}")
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r:.40}; choose one of {', '.join(PRIORS)}")
        if self.prior == "normal" and self.prior_hidden != PRIOR_HIDDEN:
            raise ValueError(f"prior_hidden sizes the two-stage prior; the normal prior has none "
                             f"(got prior_hidden={self.prior_hidden})")

    def to_dict(self) -> dict:
        """The fields; a ``normal`` prior's (the default, which has no stage 2) are left out, so that the
        configs and model ids of models from before the option stay what they were."""
        data = dataclasses.asdict(self)
        if self.prior == "normal":
            del data["prior"], data["prior_hidden"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "GaussianVAEConfig":
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown gaussian-vae config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def _levels(image_size: int) -> int:
    """How many stride-2 convolutions: halve while the side is even and at least 8."""
    levels, side = 0, image_size
    while side % 2 == 0 and side >= 8:
        levels, side = levels + 1, side // 2
    return levels


class GaussianVAE(nn.Module):
    """Convolutional VAE with a diagonal Gaussian posterior and a N(0, I) prior (see the module docstring)."""

    def __init__(self, config: GaussianVAEConfig):
        super().__init__()
        self.config = config
        C, S, L, W, H = config.channels, config.image_size, config.latent_dims, config.width, config.hidden
        levels = _levels(S)
        widths = [C] + [W * 2**i for i in range(levels)]
        self.bottom = S // 2**levels  # side of the smallest feature map
        self.bottom_channels = widths[-1]
        flat = self.bottom_channels * self.bottom**2
        analysis: list[nn.Module] = []
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            analysis += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.g_a = nn.Sequential(*analysis, nn.Flatten(), nn.Linear(flat, H), nn.LeakyReLU(0.2), nn.Linear(H, 2 * L))
        synthesis: list[nn.Module] = [nn.Linear(L, H), nn.LeakyReLU(0.2), nn.Linear(H, flat), nn.LeakyReLU(0.2),
                                      nn.Unflatten(1, (self.bottom_channels, self.bottom, self.bottom))]
        reversed_widths = widths[::-1]
        for index, (c_in, c_out) in enumerate(zip(reversed_widths[:-1], reversed_widths[1:])):
            synthesis.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if index < levels - 1:
                synthesis.append(nn.LeakyReLU(0.2))
        if levels == 0:  # no convolution: the last linear layer gives the pixels directly
            synthesis = synthesis[:3] + [nn.Unflatten(1, (C, S, S))]
        self.g_s = nn.Sequential(*synthesis)
        if config.decoder == "gaussian":
            # One learned noise scale per pixel (log standard deviation), for the Gaussian likelihood.
            self.log_sigma = nn.Parameter(torch.full((C, S, S), -2.0))
        if config.prior == "two-stage":
            self.prior = LatentVAE(L, config.prior_hidden)

    # -- the VAE ------------------------------------------------------------------------------------------
    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|x), each (B, L)."""
        mu, logvar = self.g_a(x).chunk(2, dim=1)
        return mu, logvar.clamp(-30.0, 20.0)

    def synthesize(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's mean image (B, C, S, S) in [0, 1] for latents ``z`` (B, L)."""
        return torch.sigmoid(self.g_s(z))

    def latent_from_prior(self, u: torch.Tensor) -> torch.Tensor:
        """Stage-1 latents ``z`` (B, L) for draws ``u`` (B, L) of N(0, I): ``u`` itself under the normal
        prior, stage 2's decoding of it under the two-stage prior."""
        return self.prior.decode(u) if self.config.prior == "two-stage" else u

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        mu, logvar = self.posterior(x)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = mu + torch.exp(0.5 * logvar) * eps
        logits = self.g_s(z)
        out = {"x_hat": torch.sigmoid(logits), "logits": logits, "mu": mu, "logvar": logvar, "z": z}
        if self.config.prior == "two-stage":  # stage 2 learns the posterior means; no gradient reaches stage 1
            out["prior"] = self.prior(mu.detach(), generator)
        return out

    def reconstruction_nats(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """``-log p(x|z)`` per image (B,), in nats, summed over pixels."""
        if self.config.decoder == "bernoulli":
            return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
        log_sigma = self.log_sigma.clamp(-7.0, 2.0)
        nll = 0.5 * ((x - torch.sigmoid(logits)) / log_sigma.exp()) ** 2 + log_sigma + 0.5 * math.log(2 * math.pi)
        return nll.flatten(1).sum(1)

    def loss(self, x: torch.Tensor, out: dict, beta: float = 1.0, prior_weight: float = 1.0) -> dict:
        """Negative ELBO (with ``beta`` on the KL term) averaged over the batch, and its parts, in nats; with
        the two-stage prior, ``prior`` (stage 2's -ELBO of the posterior means, per image) is added to
        ``loss`` with weight ``prior_weight`` (it is 0 under the normal prior)."""
        reconstruction = self.reconstruction_nats(x, out["logits"]).mean()
        kl = kl_divergence(out["mu"], out["logvar"]).mean()
        prior = (out["prior"]["reconstruction"] + out["prior"]["kl"]).mean() if "prior" in out else kl.new_zeros(())
        return {"loss": reconstruction + beta * kl + prior_weight * prior, "reconstruction": reconstruction, "kl": kl,
                "prior": prior}

    @torch.no_grad()
    def sample(self, count: int, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """``count`` images (count, C, S, S) decoded from ``u ~ N(0, temperature**2 I)`` (``z = u`` under the
        normal prior, stage 2's decoding of ``u`` under the two-stage one)."""
        u = temperature * torch.randn((count, self.config.latent_dims), generator=generator)
        return self.synthesize(self.latent_from_prior(u.to(self._device())))

    def _device(self) -> torch.device:
        return next(self.parameters()).device


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per row (B,), in nats: closed form, never negative."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


@torch.no_grad()
def neg_elbo_bpp(model: GaussianVAE, x: torch.Tensor, samples: int = 16, seed: int = 0) -> torch.Tensor:
    """``-ELBO`` per image (B,) in bits per pixel (pixels = S * S, channels summed): the reconstruction term
    averaged over ``samples`` reparameterised draws (seeded: the same images give the same scores), plus
    the closed-form KL. An upper bound on ``-log2 p(x)`` per pixel; higher means less like the training data."""
    generator = torch.Generator().manual_seed(seed)
    mu, logvar = model.posterior(x)
    std = torch.exp(0.5 * logvar)
    reconstruction = torch.zeros(x.shape[0], dtype=torch.float64)
    for _ in range(samples):
        eps = torch.randn(mu.shape, generator=generator).to(mu.device)
        reconstruction += model.reconstruction_nats(x, model.g_s(mu + std * eps)).double().cpu()
    nats = reconstruction / samples + kl_divergence(mu, logvar).double().cpu()
    return (nats / math.log(2) / (x.shape[-1] * x.shape[-2])).float()


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985; for VAE latents, T. White, "Sampling generative networks",
    2016): ``sin((1-t)W)/sin(W) a + sin(tW)/sin(W) b`` with ``W`` the angle between ``a`` and ``b``. Under a
    Gaussian prior it keeps the path at typical radii, where a straight line passes near the origin; exact at
    both ends, linear for (nearly) parallel vectors."""
    cos = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if float(omega.sin()) < 1e-6:
        return torch.lerp(a, b, t)
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
