"""Distortion metrics (latentzip.codecs.metrics)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from latentzip.codecs.metrics import MS_SSIM_MIN_SIDE, ms_ssim, psnr_db


def _noise(width, height, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _smooth(width, height) -> Image.Image:
    yy, xx = np.mgrid[0:height, 0:width]
    array = np.stack([xx * 255 // max(1, width - 1), yy * 255 // max(1, height - 1), (xx + yy) % 256], axis=-1)
    return Image.fromarray(array.astype(np.uint8))


def test_psnr_of_identical_images_is_inf():
    image = _noise(20, 10)
    assert psnr_db(image, image.copy()) == math.inf


@pytest.mark.parametrize("difference", [1, 10, 100])
def test_psnr_of_a_known_mse(difference):
    a = Image.new("RGB", (16, 8), (0, 0, 0))
    b = Image.new("RGB", (16, 8), (difference, difference, difference))
    expected = 10 * math.log10(255.0**2 / difference**2)
    assert psnr_db(a, b) == pytest.approx(expected, abs=1e-9)
    assert psnr_db(b, a) == pytest.approx(expected, abs=1e-9)


def test_psnr_averages_over_all_rgb_samples():
    a = Image.new("RGB", (4, 4), (0, 0, 0))
    b = Image.new("RGB", (4, 4), (30, 0, 0))  # only one channel differs: MSE = 900 / 3
    assert psnr_db(a, b) == pytest.approx(10 * math.log10(255.0**2 / 300.0))
    c = a.copy()
    c.putpixel((0, 0), (255, 255, 255))  # one pixel of 16 maximally wrong: MSE = 255^2 / 16
    assert psnr_db(a, c) == pytest.approx(10 * math.log10(16))


def test_psnr_does_not_wrap_around_uint8():
    a = Image.new("RGB", (2, 2), (0, 0, 0))
    b = Image.new("RGB", (2, 2), (255, 255, 255))
    assert psnr_db(a, b) == pytest.approx(0.0)
    assert psnr_db(b, a) == pytest.approx(0.0)


def test_psnr_converts_grey_to_rgb():
    grey = Image.new("L", (4, 4), 100)
    assert psnr_db(grey, Image.new("RGB", (4, 4), (100, 100, 100))) == math.inf


def test_ms_ssim_identical_is_one():
    image = _smooth(200, 200)
    assert ms_ssim(image, image.copy()) >= 0.999


def test_ms_ssim_drops_with_distortion():
    image = _smooth(200, 200)
    array = np.asarray(image).astype(int)
    noise = np.random.default_rng(1).integers(-40, 41, array.shape)
    noisy = Image.fromarray(np.clip(array + noise, 0, 255).astype(np.uint8))
    value = ms_ssim(image, noisy)
    assert 0 < value < 0.99
    assert ms_ssim(image, _noise(200, 200)) < value


@pytest.mark.parametrize("size", [(64, 64), (200, 100), (100, 200), (MS_SSIM_MIN_SIDE - 1, 300)])
def test_ms_ssim_is_nan_for_small_images(size):
    image = _noise(*size)
    assert math.isnan(ms_ssim(image, image.copy()))


def test_ms_ssim_defined_from_the_minimum_side():
    image = _smooth(MS_SSIM_MIN_SIDE, MS_SSIM_MIN_SIDE)
    value = ms_ssim(image, image.copy())
    assert not math.isnan(value) and value >= 0.999


@pytest.mark.parametrize("metric", [psnr_db, ms_ssim])
def test_size_mismatch_raises(metric):
    with pytest.raises(ValueError, match="size"):
        metric(_noise(200, 200), _noise(200, 201))
    with pytest.raises(ValueError):
        metric(_noise(64, 64), _noise(65, 64))
