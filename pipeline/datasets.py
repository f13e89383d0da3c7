"""Small data sets that ship with a package, exported to image folders the pipeline reads.

``digits``: scikit-learn's ``load_digits`` (the UCI "Optical Recognition of Handwritten Digits" test set:
1,797 handwritten digits, 8 x 8 pixels, 17 grey levels, from 43 writers). Exported as 8-bit grey PNGs,
``OUT/train/<label>/<index>.png`` and ``OUT/test/<label>/<index>.png`` (``index`` the row of ``load_digits``),
a stratified split seeded by ``seed``: training reads ``OUT/train``, the benchmarks hold out ``OUT/test``.
Grey level ``v`` of 0..16 becomes ``round(v * 255 / 16)``; ``size`` > 8 enlarges them (bilinear, as the
VAE's input policy does). :func:`digits_split` is the same split as arrays, for the benchmarks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: Held-out digits of the split (297 of 1,797, about 1/6, stratified by label).
TEST_COUNT = 297


def digits_split(seed: int = 0):
    """``(train_images, train_labels, test_images, test_labels, train_rows, test_rows)``: images float32
    (n, 8, 8) in [0, 1] (grey level / 16), labels int, rows the indexes into ``load_digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    rows = np.arange(len(digits.target))
    train_rows, test_rows = train_test_split(rows, test_size=TEST_COUNT, stratify=digits.target, random_state=seed)
    images = digits.images.astype(np.float32) / 16.0
    return (images[train_rows], digits.target[train_rows], images[test_rows], digits.target[test_rows],
            train_rows, test_rows)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Images in [0, 1] -> uint8, as the PNGs hold them."""
    return np.round(np.clip(images, 0, 1) * 255).astype(np.uint8)


def export_digits(out: str | Path, size: int = 8, seed: int = 0) -> dict:
    """Write the digits split as PNGs under ``out`` (see the module docstring) and ``out/digits.json``
    (counts, split, source). Returns that summary."""
    from PIL import Image

    if not 8 <= size <= 512:
        raise ValueError(f"size must be 8..512 pixels, got {size}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    train_x, train_y, test_x, test_y, train_rows, test_rows = digits_split(seed)
    counts = {}
    for split, images, labels, rows in (("train", train_x, train_y, train_rows), ("test", test_x, test_y, test_rows)):
        for image, label, row in zip(to_uint8(images), labels, rows):
            folder = out / split / str(int(label))
            folder.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(image, "L")
            if size != 8:
                picture = picture.resize((size, size), Image.Resampling.BILINEAR)
            picture.save(folder / f"{int(row):04d}.png")
        counts[split] = {str(label): int((labels == label).sum()) for label in range(10)}
    summary = {"dataset": "digits", "source": "sklearn.datasets.load_digits (UCI optdigits test set)",
               "size": size, "seed": seed, "train": int(len(train_y)), "test": int(len(test_y)), "per_label": counts}
    (out / "digits.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
