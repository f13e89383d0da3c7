"""Classical codecs behind the learned codec's interface: ``encode(PIL) -> bytes``, ``decode(bytes) -> PIL``.

The bytes are the standard file (a .jpg, .webp, .jp2, .avif or .jxl), so their size is what a user would
store. Each codec has one quality knob, in the codec's own units:

=========  ===========================  ===================================================
name       library                      quality
=========  ===========================  ===================================================
jpeg       Pillow (libjpeg), 4:2:0      1..95, libjpeg quality
jpeg444    Pillow (libjpeg), 4:4:4      1..95, libjpeg quality
webp       Pillow (libwebp)             0..100, libwebp quality (lossy), method 6 (its slowest, best)
jpeg2000   Pillow (OpenJPEG)            target PSNR in dB of the single quality layer (20..60)
avif       Pillow (libavif), defaults   0..100, libavif quality (Pillow's defaults: speed 6, 4:2:0)
avif444    Pillow (libavif), best       0..100, libavif quality, speed 4, 4:4:4 (AVIF at its best here)
jpegxl     imagecodecs (libjxl)         0..100, libjxl quality (maps to butteraugli distance), default effort 7
=========  ===========================  ===================================================
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from latentzip.codecs.images import UnsupportedImageError, load_image, to_rgb8


@dataclass(frozen=True)
class ClassicalFormat:
    name: str
    description: str
    quality_range: tuple[float, float]
    default_quality: float
    #: qualities that span roughly 0.1..2 bpp on photos, used by RD sweeps
    sweep: tuple[float, ...]


FORMATS = {
    f.name: f
    for f in (
        ClassicalFormat("jpeg", "JPEG 4:2:0 (libjpeg via Pillow)", (1, 95), 75, (10, 20, 35, 50, 70, 85, 95)),
        ClassicalFormat("jpeg444", "JPEG 4:4:4 (libjpeg via Pillow)", (1, 95), 75, (10, 20, 35, 50, 70, 85, 95)),
        ClassicalFormat("webp", "WebP lossy (libwebp via Pillow)", (0, 100), 75, (5, 20, 40, 60, 75, 90)),
        ClassicalFormat("jpeg2000", "JPEG 2000 (OpenJPEG via Pillow)", (20, 60), 35, (24, 28, 32, 36, 40, 44)),
        ClassicalFormat("avif", "AVIF 4:2:0 speed 6 (libavif via Pillow, its defaults)", (0, 100), 60,
                        (10, 25, 40, 55, 70, 85)),
        ClassicalFormat("avif444", "AVIF 4:4:4 speed 4 (libavif via Pillow)", (0, 100), 60, (10, 25, 40, 55, 70, 85)),
        ClassicalFormat("jpegxl", "JPEG XL (libjxl via imagecodecs)", (0, 100), 75, (10, 25, 45, 65, 80, 90)),
    )
}


class ClassicalCodec:
    kind = "classical"

    def __init__(self, name: str, quality: float | None = None):
        if name not in FORMATS:
            raise ValueError(f"unknown classical codec {name!r}; choose one of {', '.join(FORMATS)}")
        self.format = FORMATS[name]
        self.quality = self.format.default_quality if quality is None else quality
        low, high = self.format.quality_range
        if not low <= self.quality <= high:
            raise ValueError(f"{name} quality must be in {low}..{high}, got {self.quality}")
        self.name = name

    def encode(self, image: Image.Image) -> bytes:
        image = to_rgb8(image)
        if self.name == "jpegxl":
            import imagecodecs

            return bytes(imagecodecs.jpegxl_encode(np.asarray(image), level=self.quality))
        buffer = io.BytesIO()
        q = self.quality
        if self.name in ("jpeg", "jpeg444"):
            image.save(buffer, format="JPEG", quality=int(q), subsampling=2 if self.name == "jpeg" else 0)
        elif self.name == "webp":
            image.save(buffer, format="WEBP", quality=q, method=6)
        elif self.name == "jpeg2000":
            # mct=1: the irreversible colour transform (YCbCr), as every JPEG 2000 encoder does for photos;
            # Pillow's default codes R, G and B separately, which doubles the rate at equal PSNR.
            image.save(buffer, format="JPEG2000", quality_mode="dB", quality_layers=[q], irreversible=True, mct=1)
        elif self.name == "avif":
            image.save(buffer, format="AVIF", quality=int(q))
        elif self.name == "avif444":
            image.save(buffer, format="AVIF", quality=int(q), speed=4, subsampling="4:4:4")
        return buffer.getvalue()

    def decode(self, data: bytes) -> Image.Image:
        if self.name == "jpegxl":
            import imagecodecs

            try:
                return to_rgb8(Image.fromarray(imagecodecs.jpegxl_decode(data)))
            except (imagecodecs.JpegxlError, ValueError, TypeError) as exc:
                raise UnsupportedImageError(f"not a readable JPEG XL stream: {exc}") from exc
        return load_image(data)

    def encode_batch(self, images):
        return [self.encode(image) for image in images]

    def decode_batch(self, streams):
        return [self.decode(data) for data in streams]
