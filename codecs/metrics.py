"""Distortion metrics on 8-bit RGB images: PSNR (dB) and MS-SSIM, computed as in CompressAI's evaluation."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from pytorch_msssim import ms_ssim as _ms_ssim

#: MS-SSIM's five scales with an 11-pixel window need both sides larger than (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def _pair(a: Image.Image, b: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    if a.size != b.size:
        raise ValueError(f"images differ in size: {a.size} vs {b.size}")
    x = torch.from_numpy(np.asarray(a.convert("RGB"), dtype=np.float64)).permute(2, 0, 1)[None]
    y = torch.from_numpy(np.asarray(b.convert("RGB"), dtype=np.float64)).permute(2, 0, 1)[None]
    return x, y


def psnr_db(a: Image.Image, b: Image.Image) -> float:
    """PSNR over all RGB samples with peak 255; ``inf`` for identical images."""
    x, y = _pair(a, b)
    mse = torch.mean((x - y) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ms_ssim(a: Image.Image, b: Image.Image) -> float:
    """MS-SSIM (Wang et al. 2003) on RGB in [0, 255]; NaN for images too small for its five scales."""
    x, y = _pair(a, b)
    if min(x.shape[-2:]) < MS_SSIM_MIN_SIDE:
        return math.nan
    return float(_ms_ssim(x.float(), y.float(), data_range=255.0))
