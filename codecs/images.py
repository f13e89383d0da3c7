"""Image conversion policy and tensor helpers shared by every codec.

Every codec compresses 8-bit RGB. Other inputs are converted by one documented policy, or refused:

========================  ==============================================================
input                     what happens
========================  ==============================================================
EXIF orientation tag      applied first (the pixels are rotated/flipped, the tag dropped)
``RGB``                   used as is
``L``, ``1``              grey replicated to R, G and B
``LA``, ``RGBA``, ``PA``  alpha composited over white, then as above
``P``                     palette expanded (with its transparency, if any, composited)
``I;16*``, ``I``          16-bit grey scaled to 8 bits (``round(v / 257)``); ``I`` values
                          outside 0..65535 are refused
``CMYK``, ``YCbCr``,      converted to RGB by Pillow
``LAB``, ``HSV``
``F`` and anything else   refused with :class:`UnsupportedImageError`
========================  ==============================================================

Multi-frame files (animated GIF/WebP, multi-page TIFF) use their first frame.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

#: Images of more pixels than this (about 16k x 11k) are refused by :func:`load_image` before their pixels
#: are decoded (:class:`ImageTooLargeError`). Pillow's own guard only warns up to twice its limit, so the
#: limit is checked here, on the header's size; Pillow's stays set to it as a second line.
MAX_PIXELS = 178_956_970
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


class UnsupportedImageError(ValueError):
    """The input is not an image we can convert to 8-bit RGB (unknown mode, unreadable, empty)."""


class ImageTooLargeError(UnsupportedImageError):
    """The image has more than :data:`MAX_PIXELS` pixels (refused from its header, before decoding)."""


#: What Pillow's decoders raise on damaged or hostile files: besides OSError, the exceptions Pillow itself
#: treats as "not this format" while probing (SyntaxError, IndexError, TypeError, struct.error), EOFError,
#: and RuntimeError from the libavif binding.
_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, RuntimeError, struct.error)


def load_image(data: bytes | str) -> Image.Image:
    """Open encoded image bytes (or a path) and return it converted to 8-bit RGB by the policy above."""
    try:
        image = Image.open(io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data)
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageTooLargeError(f"image too large: {width}x{height} = {width * height} pixels, above the "
                                     f"limit of {MAX_PIXELS} pixels")
        image.load()
        # Inside the guard: a damaged EXIF block only fails when to_rgb8 parses it for the orientation.
        return to_rgb8(image)
    except UnsupportedImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from exc
    except Image.UnidentifiedImageError as exc:  # Pillow's text names the stream object, not the file
        raise UnsupportedImageError("not a readable image: no image format recognised in its bytes") from exc
    except _READ_ERRORS as exc:
        raise UnsupportedImageError(f"not a readable image: {exc}") from exc


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert a PIL image to 8-bit RGB following the module's policy."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("L", "1"):
        return image.convert("RGB")
    if mode == "P":
        has_alpha = "transparency" in image.info or image.palette.mode == "RGBA"
        return _flatten(image.convert("RGBA")) if has_alpha else image.convert("RGB")
    if mode == "La":  # premultiplied: Pillow converts it only to LA
        image, mode = image.convert("LA"), "LA"
    if mode in ("RGBA", "LA", "PA", "RGBa"):
        return _flatten(image.convert("RGBA"))
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise UnsupportedImageError(f"32-bit integer image with values outside 0..65535 (mode {mode})")
        grey = np.rint(values / 257.0).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        return image.convert("RGB")
    raise UnsupportedImageError(f"unsupported image mode {mode!r}: latentzip compresses 8-bit RGB")


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor of shape (3, H, W) in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise UnsupportedImageError(f"expected an RGB image, got array of shape {array.shape}")
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(x: torch.Tensor) -> Image.Image:
    """Float tensor (3, H, W) in [0, 1] -> 8-bit RGB PIL image (rounded, clamped)."""
    array = x.detach().clamp(0, 1).mul(255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, mode="RGB")


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad (N, C, H, W) on the bottom/right to a multiple of ``multiple``.

    Edge replication, not zeros: a hard edge in the padding costs bits for pixels that are thrown away.
    """
    height, width = x.shape[-2:]
    pad_h = (-height) % multiple
    pad_w = (-width) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def padded_size(height: int, width: int, multiple: int) -> tuple[int, int]:
    return height + (-height) % multiple, width + (-width) % multiple
