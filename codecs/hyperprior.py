"""Hyperprior VAEs: the learned codecs, built on CompressAI's layers and entropy models.

Two architectures share one contract:

- ``scale-hyperprior``: J. Ballé, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational image
  compression with a scale hyperprior", ICLR 2018.
- ``mean-scale-hyperprior``: D. Minnen, J. Ballé, G. Toderici, "Joint autoregressive and hierarchical
  priors for learned image compression", NeurIPS 2018, without the autoregressive context model (so
  decoding stays parallel).

Tensor shapes for a batch ``x`` of shape (B, 3, H, W), H and W multiples of 64::

    y, y_hat  = g_a(x)        (B, M, H/16, W/16)   latents
    z, z_hat  = h_a(y)        (B, N, H/64, W/64)   hyper-latents
    params    = h_s(z_hat)    (B, M, ...) scales, or (B, 2M, ...) scales and means
    x_hat     = g_s(y_hat)    (B, 3, H, W)

``forward`` is the training path (additive uniform noise instead of rounding, likelihoods for the rate
term); ``compress``/``decompress`` run the real range coder and return/take byte strings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from compressai.entropy_models import EntropyBottleneck, GaussianConditional
from compressai.layers import GDN
from compressai.models import CompressionModel
from compressai.models.utils import conv, deconv
from torch import nn

ARCHITECTURES = ("scale-hyperprior", "mean-scale-hyperprior")


@dataclass(frozen=True)
class CodecConfig:
    """Architecture and channel widths of a learned codec.

    ``N`` is the width of the hidden layers and of the hyper-latents, ``M`` the number of latent channels.
    """

    arch: str = "scale-hyperprior"
    N: int = 128
    M: int = 192

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.N < 1 or self.M < 1:
            raise ValueError(f"channel widths must be positive, got N={self.N}, M={self.M}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "CodecConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown codec config keys: {', '.join(sorted(unknown))}")
        return cls(**data)


def _analysis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(conv(3, N), GDN(N), conv(N, N), GDN(N), conv(N, N), GDN(N), conv(N, M))


def _synthesis(N: int, M: int) -> nn.Sequential:
    return nn.Sequential(
        deconv(M, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, N), GDN(N, inverse=True),
        deconv(N, 3),
    )


class ScaleHyperprior(CompressionModel):
    """Scale hyperprior (Ballé et al. 2018): zero-mean Gaussian latents whose scales come from ``h_s``."""

    #: g_a downsamples by 16 and h_a by 4 more: inputs are padded to multiples of this.
    stride = 64

    def __init__(self, config: CodecConfig):
        super().__init__()
        N, M = config.N, config.M
        self.config = config
        self.g_a = _analysis(N, M)
        self.g_s = _synthesis(N, M)
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.ReLU(inplace=True),
            conv(N, N), nn.ReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, N), nn.ReLU(inplace=True),
            deconv(N, N), nn.ReLU(inplace=True),
            conv(N, M, stride=1, kernel_size=3), nn.ReLU(inplace=True),
        )
        self.entropy_bottleneck = EntropyBottleneck(N)
        self.gaussian_conditional = GaussianConditional(None)

    # -- the pieces the two architectures differ in ------------------------------------------------
    def _hyper_input(self, y: torch.Tensor) -> torch.Tensor:
        return torch.abs(y)

    def _split_params(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return params, None

    # -- training ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> dict:
        y = self.g_a(x)
        z = self.h_a(self._hyper_input(y))
        z_hat, z_likelihoods = self.entropy_bottleneck(z)
        scales_hat, means_hat = self._split_params(self.h_s(z_hat))
        y_hat, y_likelihoods = self.gaussian_conditional(y, scales_hat, means=means_hat)
        x_hat = self.g_s(y_hat)
        return {"x_hat": x_hat, "likelihoods": {"y": y_likelihoods, "z": z_likelihoods}}

    # -- real coding -------------------------------------------------------------------------------
    def _entropy_params(self, z_hat: torch.Tensor):
        """Scale indexes and means for the Gaussian conditional, computed from ``z_hat``.

        This is the path that decides entropy-coding parameters, so encoder and decoder must compute it
        identically: it runs in fp32, on contiguous tensors, one image at a time, so that the result
        does not depend on how images were batched.
        """
        params = torch.cat([self.h_s(z_hat[i : i + 1].float().contiguous()) for i in range(z_hat.shape[0])])
        scales_hat, means_hat = self._split_params(params)
        return self.gaussian_conditional.build_indexes(scales_hat), means_hat

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        """Entropy-code a batch. Returns ``{"strings": [y_strings, z_strings], "shape": (h, w), "y_hat"}``."""
        y = self.g_a(x).float()
        z = self.h_a(self._hyper_input(y))
        z_strings = self.entropy_bottleneck.compress(z)
        z_hat = self.entropy_bottleneck.decompress(z_strings, z.size()[-2:])
        indexes, means_hat = self._entropy_params(z_hat)
        y_strings = self.gaussian_conditional.compress(y, indexes, means=means_hat)
        y_hat = self.gaussian_conditional.quantize(y, "dequantize", means_hat)
        return {"strings": [y_strings, z_strings], "shape": tuple(z.size()[-2:]), "y_hat": y_hat}

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Inverse of :meth:`compress` for a batch of strings that share one latent ``shape``."""
        if not (isinstance(strings, (list, tuple)) and len(strings) == 2):
            raise ValueError("expected strings as [y_strings, z_strings]")
        z_hat = self.entropy_bottleneck.decompress(strings[1], tuple(shape))
        indexes, means_hat = self._entropy_params(z_hat)
        y_hat = self.gaussian_conditional.decompress(strings[0], indexes, z_hat.dtype, means=means_hat)
        x_hat = self.g_s(y_hat).clamp_(0, 1)
        return {"x_hat": x_hat, "y_hat": y_hat}


class MeanScaleHyperprior(ScaleHyperprior):
    """Mean-scale hyperprior (Minnen et al. 2018, no context model): ``h_s`` predicts means and scales."""

    def __init__(self, config: CodecConfig):
        super().__init__(config)
        N, M = config.N, config.M
        self.h_a = nn.Sequential(
            conv(M, N, stride=1, kernel_size=3), nn.LeakyReLU(inplace=True),
            conv(N, N), nn.LeakyReLU(inplace=True),
            conv(N, N),
        )
        self.h_s = nn.Sequential(
            deconv(N, M), nn.LeakyReLU(inplace=True),
            deconv(M, M * 3 // 2), nn.LeakyReLU(inplace=True),
            conv(M * 3 // 2, M * 2, stride=1, kernel_size=3),
        )

    def _hyper_input(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def _split_params(self, params: torch.Tensor):
        scales_hat, means_hat = params.chunk(2, 1)
        return scales_hat, means_hat


_MODELS = {"scale-hyperprior": ScaleHyperprior, "mean-scale-hyperprior": MeanScaleHyperprior}


def build_model(config: CodecConfig) -> ScaleHyperprior:
    """A freshly initialised model for ``config`` (entropy-coder tables not yet built)."""
    return _MODELS[config.arch](config)
