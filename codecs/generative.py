"""The hyperprior as a generative model: ancestral samples, latent interpolation, and per-latent rates.

A hyperprior codec is a VAE whose prior is the entropy model, so besides compressing it can

- **sample** (:func:`sample_prior`): hyper-latents ``z_hat`` from the factorized prior (the entropy
  bottleneck's own quantized CDF tables, the ones the range coder uses), latents ``y_hat`` from the
  conditional Gaussian whose scales (and means, for the mean-scale model) the prior computes from
  ``z_hat`` (the same :meth:`~latentzip.codecs.hyperprior.ScaleHyperprior.entropy_parameters` that the
  coder uses), then the image ``g_s(y_hat)``. A compression prior models local statistics, so samples look like
  textures and colour fields, not objects.
- **interpolate** (:func:`interpolate`): encode two images, blend their continuous ``y`` and ``z``, and
  quantize (``ScaleHyperprior.quantise``, as ``compress`` does) and synthesize each point, so every frame
  is an image the codec could have transmitted and the end frames are the decodes of the two inputs.
- **measure rates** (:func:`analyse`): the bitstream container of an image (``LearnedCodec.encode_analysed``:
  the very bytes ``LearnedCodec.encode`` writes) together with the ideal code length of every latent under
  the coder's integer tables (``entropy_coding.code_lengths``), for rate heat maps and per-channel-group
  rates. The code lengths are *estimates*: the rANS strings are within a few bytes of their sum; bpp itself
  is always the container's bytes.

Temperature ``T`` scales the prior's spread: ``y`` symbols are ``round(T * scale * eps)`` (``eps`` standard
normal) around the means, and ``z`` symbols are drawn from the table pmf raised to ``1 / T**2`` (what scaling
a Gaussian's standard deviation by ``T`` does to its density). ``T = 0`` gives the prior's mode: every seed
gives the same image.

Torch and Pillow only (no ray, no zarr), like the rest of ``codecs/``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from compressai.entropy_models import EntropyBottleneck
from PIL import Image

from latentzip.codecs import bitstream
from latentzip.codecs.entropy_coding import code_lengths, table_frequencies
from latentzip.codecs.hyperprior import ScaleHyperprior, dequantize
from latentzip.codecs.images import pad_to_multiple, to_pil, to_rgb8, to_tensor
from latentzip.codecs.learned import LearnedCodec

#: g_a downsamples by this: one latent position describes a LATENT_STRIDE x LATENT_STRIDE block of pixels.
LATENT_STRIDE = 16


# -- sampling --------------------------------------------------------------------------------------------
def sample_prior(codec: LearnedCodec, count: int, height: int = 256, width: int = 256, seed: int = 0,
                 temperature: float = 1.0) -> list[Image.Image]:
    """``count`` images drawn from the codec's prior, ``height`` x ``width`` each (8-bit RGB PIL).

    Sizes that are not multiples of 64 are sampled at the next multiple and cropped (top-left). Sample ``i``
    depends only on ``(seed, i)``, the model and the temperature, not on ``count``.
    """
    if count < 0 or height < 1 or width < 1:
        raise ValueError(f"need count >= 0 and a positive size, got {count} images of {height}x{width}")
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    model = codec.model
    latent_shape = (math.ceil(height / model.stride), math.ceil(width / model.stride))
    images = []
    for index in range(count):
        generator = torch.Generator().manual_seed(_sample_seed(seed, index))
        y_hat = sample_latents(model, latent_shape, generator, temperature)
        images.append(to_pil(model.synthesize(y_hat)[0, :, :height, :width].cpu()))
    return images


def _sample_seed(seed: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` of a run seeded ``seed`` (independent streams, no overlap)."""
    return int(np.random.SeedSequence([int(seed) & (2**63 - 1), index]).generate_state(1, np.uint64)[0]) >> 1


@torch.no_grad()
def sample_latents(model: ScaleHyperprior, latent_shape: tuple[int, int], generator: torch.Generator,
                   temperature: float = 1.0) -> torch.Tensor:
    """One ``y_hat`` (1, M, 4h, 4w) drawn from the prior, for hyper-latents of shape ``latent_shape`` (h, w)."""
    z_symbols = _sample_z_symbols(model.entropy_bottleneck, latent_shape, generator, temperature)
    indexes, means = model.entropy_parameters(z_symbols)
    scales = model.gaussian_conditional.scale_table.to(indexes.device)[indexes.long()]
    noise = torch.randn(indexes.shape, generator=generator, dtype=torch.float32).to(scales.device)
    y_symbols = torch.round(temperature * scales * noise)
    return dequantize(y_symbols, means)


def _sample_z_symbols(bottleneck: EntropyBottleneck, latent_shape: tuple[int, int], generator: torch.Generator,
                      temperature: float) -> torch.Tensor:
    """Symbols ``round(z - median)`` (1, N, h, w), each channel from its own quantized pmf (escape excluded)."""
    frequencies = table_frequencies(bottleneck)  # (C, L + 1): L regular values, then the escape
    lengths = bottleneck._cdf_length.reshape(-1).cpu().long() - 2
    channels, positions = frequencies.shape[0], latent_shape[0] * latent_shape[1]
    regular = torch.arange(frequencies.shape[1] - 1)[None, :] < lengths[:, None]
    probs = torch.where(regular, frequencies[:, :-1], torch.zeros(())).double()
    if temperature == 0:
        values = probs.argmax(dim=1, keepdim=True).expand(channels, positions)
    else:
        probs = (probs / probs.amax(dim=1, keepdim=True)) ** (1.0 / temperature**2)
        cumulative = probs.cumsum(dim=1)
        cumulative = cumulative / cumulative[:, -1:]
        uniform = torch.rand((channels, positions), generator=generator, dtype=torch.float64)
        values = torch.searchsorted(cumulative, uniform, right=True).clamp_(max=lengths[:, None] - 1)
    offsets = bottleneck._offset.reshape(-1, 1).cpu().long()
    return (values + offsets).reshape(1, channels, *latent_shape).to(torch.int32)


def image_grid(images: list, columns: int, gap: int = 2):
    """Images of one size in a grid, ``gap`` white pixels apart."""
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "white")
    for index, image in enumerate(images):
        grid.paste(image, ((index % columns) * (width + gap), (index // columns) * (height + gap)))
    return grid


# -- interpolation ---------------------------------------------------------------------------------------
def fit_to(image: Image.Image, width: int, height: int) -> Image.Image:
    """``image`` scaled (Lanczos, aspect ratio kept) to cover ``width`` x ``height``, then centre-cropped."""
    image = to_rgb8(image)
    if image.size == (width, height):
        return image
    scale = max(width / image.width, height / image.height)
    scaled = image.resize((max(width, round(image.width * scale)), max(height, round(image.height * scale))),
                          Image.Resampling.LANCZOS)
    left, top = (scaled.width - width) // 2, (scaled.height - height) // 2
    return scaled.crop((left, top, left + width, top + height))


@torch.no_grad()
def interpolate(codec: LearnedCodec, image_a: Image.Image, image_b: Image.Image, steps: int = 8,
                size: tuple[int, int] | None = None) -> list[Image.Image]:
    """``steps`` frames from the decode of ``image_a`` to the decode of ``image_b`` (both ends included).

    Both images are brought to one size with :func:`fit_to`: ``size`` (width, height) if given, else the
    size of ``image_a`` (which is then used as it is). Their latents ``y`` and hyper-latents ``z`` are blended
    linearly (``torch.lerp``, exact at both ends) and each point is quantized with the prior of its own
    ``z`` and synthesized, as ``compress`` then ``decompress`` would.
    """
    if steps < 2:
        raise ValueError(f"need at least 2 frames (the two ends), got {steps}")
    width, height = size or to_rgb8(image_a).size
    model = codec.model
    # One image per g_a call, as LearnedCodec.encode runs it, so the ends are exactly what encode quantizes.
    (y_a, z_a), (y_b, z_b) = (_analysis_transforms(model, fit_to(image, width, height)) for image in (image_a, image_b))
    frames = []
    for t in torch.linspace(0, 1, steps).tolist():
        y_hat = model.quantise(torch.lerp(y_a, y_b, t), torch.lerp(z_a, z_b, t)).y_hat
        frames.append(to_pil(model.synthesize(y_hat)[0, :, :height, :width].cpu()))
    return frames


def _analysis_transforms(model: ScaleHyperprior, image: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = g_a(x)`` and ``z = h_a(y)`` of one image, padded as ``LearnedCodec`` pads it."""
    device = next(model.parameters()).device
    return model.latents(pad_to_multiple(to_tensor(to_rgb8(image))[None], model.stride).to(device))


# -- rates -----------------------------------------------------------------------------------------------
@dataclass
class RateAnalysis:
    """One image's bitstream container and the ideal code length of each of its latents.

    ``y_bits`` (M, H'/16, W'/16) and ``z_bits`` (N, H'/64, W'/64) cover the padded latent grids (the stream
    codes the padding too); H' and W' are the padded height and width.
    """

    data: bytes
    height: int
    width: int
    y_string_bytes: int
    z_string_bytes: int
    y_bits: torch.Tensor
    z_bits: torch.Tensor

    @property
    def pixels(self) -> int:
        return self.height * self.width

    @property
    def bpp(self) -> float:
        """Bits per pixel of the container bytes (what an archive stores): the real rate."""
        return len(self.data) * 8 / self.pixels

    def group_bpp(self, groups: int) -> list[float]:
        """Estimated bpp of the latent channels split into ``groups`` consecutive groups (sizes differ by at
        most one when M is not a multiple of ``groups``)."""
        return [float(part.sum()) / self.pixels for part in torch.tensor_split(self.y_bits, groups, dim=0)]

    def rate_map(self) -> np.ndarray:
        """Estimated bits per pixel of each 16 x 16 block covering the image: ``-log2 p(y_hat)`` summed over
        channels, divided by the block's 256 pixels (blocks on the padded border hold padding too)."""
        rows, cols = math.ceil(self.height / LATENT_STRIDE), math.ceil(self.width / LATENT_STRIDE)
        return (self.y_bits.sum(0)[:rows, :cols] / LATENT_STRIDE**2).numpy().astype(np.float32)


@torch.no_grad()
def analyse(codec: LearnedCodec, image: Image.Image, refine_steps: int = 0) -> RateAnalysis:
    """The container ``codec.encode(image, refine_steps=...)`` writes, with the code length of every latent
    (``LearnedCodec.encode_analysed``: the encoder's own path, keeping the symbols and entropy parameters)."""
    data, analysis = codec.encode_analysed(image, refine_steps)
    stream = bitstream.unpack(data)
    model = codec.model
    return RateAnalysis(
        data, stream.height, stream.width, len(stream.strings[0]), len(stream.strings[1]),
        code_lengths(model.gaussian_conditional, analysis.y_symbols, analysis.y_indexes)[0],
        code_lengths(model.entropy_bottleneck, analysis.z_symbols, analysis.z_indexes)[0],
    )
