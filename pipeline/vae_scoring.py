"""``latentzip score`` for a generative VAE (gaussian-vae): -ELBO in bits per pixel per image, and a flag.

A hyperprior codec scores images by the bytes of their bitstreams (scoring.py); a Gaussian VAE writes no
bitstreams, so its score is its negative evidence lower bound, ``-ELBO`` (codecs/gaussian_vae.py:
:func:`~latentzip.codecs.gaussian_vae.neg_elbo_bpp`), in bits per pixel of the model's input (the image as
the model sees it: grey, resized to its ``image_size``). Higher means less like the training data. The
models are tiny and so are their inputs, so this runs in the driver, without Ray: thousands of images a
second on one CPU. The threshold is calibrated on ``reference`` as scoring.py does (percentile or robust
z-score, in the same ``calibration.json``, with ``score: "neg_elbo_bpp"``); rows go to ``rows.parquet``
(``id``, ``neg_elbo_bpp``, ``robust_z``, ``flagged``, ``error``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

from latentzip.pipeline import storage
from latentzip.pipeline.scoring import CALIBRATION_FILE, ROWS_FILE, Calibration
from latentzip.pipeline.sources import input_rows

SCORE = "neg_elbo_bpp"


def _images(location: str | Path) -> list[tuple[str, object]]:
    """``(id, PIL image or the exception saying why not)`` for each file of a folder (or one file)."""
    from latentzip.codecs.images import UnsupportedImageError, load_image

    kind, rows = input_rows(location)
    if kind == "shards":
        raise ValueError(f"{location} holds Parquet shards; a gaussian-vae scores a folder of images")
    images = []
    for row in rows:
        try:
            images.append((row["id"], load_image(storage.read_bytes(row["source"]))))
        except (UnsupportedImageError, OSError) as exc:
            images.append((row["id"], exc))
    return images


def score_location(model, location: str | Path) -> list[dict]:
    """One row per file of ``location``: ``id``, ``neg_elbo_bpp`` (NaN with ``error`` for an unreadable file)."""
    from latentzip.codecs.vae_generative import score_images

    entries = _images(location)
    good = [(name, image) for name, image in entries if not isinstance(image, Exception)]
    scores = dict(zip((name for name, _ in good), score_images(model, [image for _, image in good])))
    return [{"id": name, SCORE: scores.get(name, math.nan),
             "error": "" if name in scores else f"{type(image).__name__}: {image}"} for name, image in entries]


def score_vae(location: str | Path, model_ref: str, out_dir: str | Path, reference: str | Path | None = None,
              calibration: Calibration | None = None, method: str = "percentile", percentile: float = 99.0,
              z: float = 3.5) -> tuple[Calibration, list[dict], float]:
    """Score every image of ``location`` with the VAE ``model_ref``; flag those above a threshold calibrated
    on ``reference`` (default: ``location`` itself) unless ``calibration`` is given. Writes ``out_dir``.
    Returns ``(calibration, rows, seconds)``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from latentzip.codecs.registry import load_generative

    started = time.perf_counter()
    model, card = load_generative(model_ref, "score")
    rows = score_location(model, location)
    if calibration is None:
        reference_rows = score_location(model, reference) if reference is not None else rows
        calibration = Calibration.fit([row[SCORE] for row in reference_rows], method, percentile, z,
                                      str(reference or location), card["model_id"])
        calibration = dataclasses.replace(calibration, score=SCORE)
    elif calibration.score != SCORE or (calibration.model_id and calibration.model_id != card["model_id"]):
        raise ValueError(f"the calibration is of {calibration.score} under model {calibration.model_id}; these "
                         f"scores are {SCORE} under model {card['model_id']}")
    for row in rows:
        finite = math.isfinite(row[SCORE])
        row["robust_z"] = calibration.robust_z(row[SCORE]) if finite else math.nan
        row["flagged"] = calibration.flag(row[SCORE])
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out_dir / ROWS_FILE)
    (out_dir / CALIBRATION_FILE).write_text(json.dumps(dataclasses.asdict(calibration), indent=2) + "\n")
    return calibration, rows, time.perf_counter() - started


def describe(out_dir, calibration: Calibration, rows: list[dict], seconds: float) -> str:
    failures = sum(1 for row in rows if row["error"])
    rule = f"p{calibration.percentile:g}" if calibration.method == "percentile" else \
        f"median + {calibration.z:g} x 1.4826 MAD"
    return (f"scored {len(rows) - failures} images ({failures} failed) into {out_dir}: -ELBO per image in bits per "
            f"pixel (rows.parquet); {sum(row['flagged'] for row in rows)} flagged above {calibration.threshold:.4f} "
            f"bpp ({rule} of {calibration.count} reference images), {seconds:.1f} s")
