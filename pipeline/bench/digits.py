"""Benchmarks of a generative VAE trained on the digits: are its samples digits, and does -ELBO flag anomalies?

``bench digits`` (:func:`digits_benchmark`): a classifier trained only on the real training digits
(pipeline/datasets.py's split; scikit-learn, on the 64 pixels of the 8 x 8 digits as they ship) is checked on
the held-out real digits, then labels ``samples`` images drawn from the model at ``temperature``, each brought
to 8 x 8 by area averaging. Reported: held-out accuracy, the fraction of samples whose most probable class
has probability >= ``threshold`` (and, for reference, the same fraction on the held-out real digits), and the
histogram of predicted classes.

``bench anomaly`` with a gaussian-vae (:func:`vae_anomaly_benchmark`): the held-out digits (normal) against
``rotated`` (each held-out digit turned 90 degrees), ``inverted`` (1 - x), ``noise`` (uniform pixels) and
``letters`` (A-Z and a-z rendered from the fonts found, scaled and centred into 8 x 8 like the digits),
scored by the model's -ELBO in bits per pixel, beside two baselines: ``pca_error`` (squared reconstruction
error under a 16-component PCA of the training digits, a linear latent model) and ``png_bpp`` (the PNG size
of the 8 x 8 image, the photo bench's baseline). AUROC (ties half) and precision at ``recall``.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from latentzip.pipeline.bench.anomaly import auroc, precision_at_recall
from latentzip.pipeline.datasets import digits_split, to_uint8

CLASSIFIERS = ("logreg", "mlp")
KINDS = ("rotated", "inverted", "noise", "letters")
SCORES = ("neg_elbo_bpp", "pca_error", "png_bpp")
FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts")


def classifier(kind: str = "mlp", seed: int = 0):
    """A scikit-learn classifier of 64-pixel digits in [0, 1]."""
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=1.0, max_iter=5000)
    if kind == "mlp":
        from sklearn.neural_network import MLPClassifier

        return MLPClassifier((256,), max_iter=2000, random_state=seed)
    raise ValueError(f"unknown classifier {kind!r}; choose one of {', '.join(CLASSIFIERS)}")


def to_digit_pixels(x: torch.Tensor) -> np.ndarray:
    """Model images (N, 1, S, S) in [0, 1] -> (N, 64) at the digits' 8 x 8, by area averaging."""
    if x.shape[-1] != 8:
        x = F.interpolate(x, size=(8, 8), mode="area") if x.shape[-1] % 8 == 0 else \
            F.interpolate(x, size=(8, 8), mode="bilinear", antialias=True, align_corners=False)
    return x.reshape(len(x), 64).numpy().astype(np.float64)


@dataclass
class DigitsBenchmark:
    model: str
    model_id: str
    classifier: str
    test_accuracy: float
    real_confident: float
    samples: int
    temperature: float
    seed: int
    threshold: float
    confident: float
    histogram: list[int]
    confident_histogram: list[int]

    @property
    def passed(self) -> bool:
        """Acceptance: classifier >= 95 %, >= 80 % of samples confident, all 10 classes, none above 25 %."""
        shares = np.asarray(self.histogram) / max(1, self.samples)
        return bool(self.test_accuracy >= 0.95 and self.confident >= 0.8 and (shares > 0).all()
                    and shares.max() <= 0.25)

    def to_dict(self) -> dict:
        return {"benchmark": "digits", **asdict(self), "passed": self.passed}

    def table(self) -> str:
        lines = [f"model {self.model} ({self.model_id[:8]}); classifier {self.classifier} trained on the real "
                 f"training digits only: {self.test_accuracy:.2%} accuracy on the held-out digits, "
                 f"{self.real_confident:.1%} of them with max probability >= {self.threshold:g}",
                 f"{self.samples} samples at temperature {self.temperature:g} (seed {self.seed}): "
                 f"{self.confident:.1%} with max probability >= {self.threshold:g}",
                 "", "| class | " + " | ".join(map(str, range(10))) + " |", "|---|" + "---|" * 10,
                 "| samples | " + " | ".join(map(str, self.histogram)) + " |",
                 f"| of which p >= {self.threshold:g} | " + " | ".join(map(str, self.confident_histogram)) + " |",
                 "", f"largest class {max(self.histogram) / max(1, self.samples):.1%}; "
                     f"acceptance (>= 95 % accuracy, >= 80 % confident, 10 classes, none > 25 %): "
                     f"{'PASS' if self.passed else 'FAIL'}"]
        return "\n".join(lines)


def digits_benchmark(model_ref: str, samples: int = 1000, temperature: float = 1.0, seed: int = 0,
                     threshold: float = 0.9, kind: str = "mlp") -> DigitsBenchmark:
    from latentzip.codecs.registry import load_generative
    from latentzip.codecs.vae_generative import sample_tensor

    model, card = load_generative(model_ref, "bench digits")
    if model.config.channels != 1:
        raise ValueError(f"bench digits needs a grey model (1 channel); {model_ref} has {model.config.channels}")
    train_x, train_y, test_x, test_y, _, _ = digits_split()
    clf = classifier(kind)
    clf.fit(train_x.reshape(len(train_x), 64), train_y)
    real = clf.predict_proba(test_x.reshape(len(test_x), 64))
    probabilities = clf.predict_proba(to_digit_pixels(sample_tensor(model, samples, seed, temperature)))
    labels, sure = probabilities.argmax(1), probabilities.max(1) >= threshold
    return DigitsBenchmark(
        str(model_ref), card["model_id"], kind, float((real.argmax(1) == test_y).mean()),
        float((real.max(1) >= threshold).mean()), samples, temperature, seed, threshold, float(sure.mean()),
        np.bincount(labels, minlength=10).tolist(), np.bincount(labels[sure], minlength=10).tolist())


# -- anomalies -----------------------------------------------------------------------------------------
def _fonts() -> list[Path]:
    found = []
    for folder in FONT_DIRS:
        if Path(folder).is_dir():
            found += sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    return found[:8]


def render_letters(count: int | None = None) -> np.ndarray:
    """Letters A-Z, a-z in each font found (Pillow's own font if none), as (n, 8, 8) in [0, 1]: drawn large,
    cropped to their ink, scaled to fit 8 x 8 keeping the aspect ratio (as the digits were normalised) and
    centred."""
    fonts = [ImageFont.truetype(str(path), 48) for path in _fonts()] or [ImageFont.load_default(size=48)]
    letters = []
    for font in fonts:
        for char in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz":
            canvas = Image.new("L", (96, 96), 0)
            ImageDraw.Draw(canvas).text((16, 8), char, fill=255, font=font)
            box = canvas.getbbox()
            if box is None:
                continue
            ink = canvas.crop(box)
            scale = 8 / max(ink.size)
            ink = ink.resize((max(1, round(ink.width * scale)), max(1, round(ink.height * scale))),
                             Image.Resampling.BOX)
            cell = Image.new("L", (8, 8), 0)
            cell.paste(ink, ((8 - ink.width) // 2, (8 - ink.height) // 2))
            letters.append(np.asarray(cell, dtype=np.float32) / 255.0)
    return np.stack(letters[:count] if count else letters)


def anomaly_task(seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """``(kind, 8 x 8 image in [0, 1])``: the held-out digits (``normal``) and the anomalies."""
    _, _, test_x, _, _, _ = digits_split()
    rng = np.random.default_rng(seed)
    task = [("normal", x) for x in test_x]
    task += [("rotated", np.rot90(x).copy()) for x in test_x]
    task += [("inverted", 1.0 - x) for x in test_x]
    task += [("noise", rng.random((8, 8)).astype(np.float32)) for _ in test_x]
    task += [("letters", x) for x in render_letters()]
    return task


def png_bpp(pixels: np.ndarray) -> float:
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(pixels), "L").save(buffer, format="PNG")
    return len(buffer.getvalue()) * 8 / pixels.size


@dataclass
class VAEAnomalyBenchmark:
    model: str
    model_id: str
    recall: float
    counts: dict
    metrics: dict  # score -> kind ("all" too) -> {"auroc", "precision"}

    def to_dict(self) -> dict:
        return {"benchmark": "anomaly", **asdict(self)}

    def table(self) -> str:
        kinds = [*KINDS, "all"]
        lines = [f"| score | {' | '.join(kinds)} |", f"|---|{'---|' * len(kinds)}"]
        for score in SCORES:
            cells = [f"{self.metrics[score][k]['auroc']:.3f} / {self.metrics[score][k]['precision']:.2f}" for k in kinds]
            lines.append(f"| {score} | {' | '.join(cells)} |")
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        return (f"AUROC / precision at {self.recall:.0%} recall; held-out digits against anomalies; images: {counts}; "
                f"model {self.model} ({self.model_id[:8]}); baselines: PCA (16 components) reconstruction error, "
                f"PNG bpp\n\n" + "\n".join(lines))


def vae_anomaly_benchmark(model_ref: str, recall: float = 0.9, seed: int = 0) -> VAEAnomalyBenchmark:
    from sklearn.decomposition import PCA

    from latentzip.codecs.registry import load_generative
    from latentzip.codecs.vae_generative import score_images

    model, card = load_generative(model_ref, "bench anomaly")
    task = anomaly_task(seed)
    # Scored as any user image would be: the 8-bit PNG a digit folder holds, through the input policy.
    images = [Image.fromarray(to_uint8(x), "L") for _, x in task]
    flat = np.stack([x.reshape(64) for _, x in task]).astype(np.float64)
    train_x = digits_split()[0].reshape(-1, 64)
    pca = PCA(n_components=16, random_state=seed).fit(train_x)
    pca_error = ((pca.inverse_transform(pca.transform(flat)) - flat) ** 2).sum(1)
    scores = {"neg_elbo_bpp": np.asarray(score_images(model, images)), "pca_error": pca_error,
              "png_bpp": np.asarray([png_bpp(x) for _, x in task])}
    kinds = np.asarray([kind for kind, _ in task])
    metrics = {}
    for score, values in scores.items():
        normal = values[kinds == "normal"].tolist()
        metrics[score] = {}
        for kind in [*KINDS, "all"]:
            anomalous = values[(kinds != "normal") & ((kinds == kind) | (kind == "all"))].tolist()
            metrics[score][kind] = {"auroc": auroc(normal, anomalous),
                                    "precision": precision_at_recall(normal, anomalous, recall)}
    counts = {kind: int((kinds == kind).sum()) for kind in ("normal", *KINDS)}
    return VAEAnomalyBenchmark(str(model_ref), card["model_id"], recall, counts, metrics)


