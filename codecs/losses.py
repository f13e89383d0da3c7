"""The rate-distortion objective the learned codecs are trained for (CompressAI's ``RateDistortionLoss``).

``loss = lmbda * 255**2 * MSE + bpp``: MSE of pixels in [0, 1] (``255**2 * MSE`` is on the 8-bit scale) and
``bpp`` the rate *estimate*, the sum of ``-log2`` of every latent's likelihood over the image's pixels, as
``ScaleHyperprior.forward`` gives them. Real rates are the bytes ``compress`` writes, never this.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bits_per_pixel(likelihoods: dict, x: torch.Tensor) -> torch.Tensor:
    """Estimated bits per pixel of a batch ``x`` (B, 3, H, W): ``-log2`` of all ``likelihoods`` over B*H*W."""
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values()) / pixels


def rate_distortion(out: dict, x: torch.Tensor, lmbda: float) -> dict[str, torch.Tensor]:
    """``{"loss", "mse", "bpp"}`` of ``forward``'s output ``out`` (``x_hat``, ``likelihoods``) for target ``x``."""
    mse, bpp = F.mse_loss(out["x_hat"], x), bits_per_pixel(out["likelihoods"], x)
    return {"loss": lmbda * 255**2 * mse + bpp, "mse": mse, "bpp": bpp}
