"""``bench anomaly``: how well bits per pixel separate normal photos from constructed anomalies.

The task: every normal photo (shrunk so its longer side is at most ``max_side``) and, built from it at the
same size, one anomaly of each kind:

- ``noise``: sensor noise, Gaussian with standard deviation 25 (of 255) added to the photo;
- ``jpeg``: heavy JPEG artefacts, the photo saved at quality 5;
- ``text``: a screenshot of text, black lines rendered with Pillow's ImageDraw on white;
- ``saturated``: contrast x4 around mid-grey, clipped (large areas of 0 and 255);
- ``cartoon``: another domain, a vertical gradient with flat-coloured outlined shapes.

Scores, higher meaning more anomalous: ``learned_bpp`` (the codec's bitstream bytes per pixel, what
``latentzip score`` flags), ``png_bpp`` (the baseline: PNG file size per pixel) and ``learned_minus_png``
(the learned rate minus the PNG rate, after the input-complexity correction of Serrà et al., ICLR 2020;
with a lossy rate of ~1 bpp against a lossless ~15 bpp it is dominated by the PNG term, see
docs/benchmarks.md).
Metrics per anomaly kind and over all kinds: AUROC (ties count half) and precision at the threshold that
first reaches the target recall (90 % by default).
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from latentzip.codecs.generative import analyse
from latentzip.codecs.images import UnsupportedImageError, load_image
from latentzip.codecs.registry import load_learned_codec
from latentzip.pipeline.sources import local_images

KINDS = ("noise", "jpeg", "text", "saturated", "cartoon")
SCORES = ("learned_bpp", "png_bpp", "learned_minus_png")
DEFAULT_NORMAL = Path("/work/shared/data/photos/val")
_WORDS = ("latent rate prior entropy bitstream archive shard decode encode pixel photo anomaly score model "
          "ray cluster zarr tensor gaussian hyperprior the of and to in is").split()


# -- the task ----------------------------------------------------------------------------------------------
def build_task(normal_dir: str | Path, max_side: int = 384, seed: int = 0) -> list[tuple[str, str, Image.Image]]:
    """``(name, kind, image)`` for every readable photo below ``normal_dir`` (kind ``normal``) and each
    anomaly made from it."""
    files = local_images(normal_dir)
    if not files:
        raise FileNotFoundError(f"no images in {normal_dir}")
    rng = np.random.default_rng(seed)
    task = []
    for path in files:
        try:
            photo = load_image(str(path))
        except UnsupportedImageError:
            continue
        photo.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        task.append((path.name, "normal", photo))
        for kind in KINDS:
            task.append((f"{path.stem}-{kind}", kind, make_anomaly(kind, photo, rng)))
    if not task:
        raise FileNotFoundError(f"no readable images in {normal_dir}")
    return task


def make_anomaly(kind: str, photo: Image.Image, rng: np.random.Generator) -> Image.Image:
    pixels = np.asarray(photo, dtype=np.float64)
    if kind == "noise":
        return _image(pixels + rng.normal(0, 25, pixels.shape))
    if kind == "jpeg":
        buffer = io.BytesIO()
        photo.save(buffer, format="JPEG", quality=5)
        return load_image(buffer.getvalue())
    if kind == "saturated":
        return _image((pixels - 128) * 4 + 128)
    if kind == "text":
        return _text_screenshot(photo.size, rng)
    if kind == "cartoon":
        return _cartoon(photo.size, rng)
    raise ValueError(f"unknown anomaly kind {kind!r}")


def _image(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), mode="RGB")


def _text_screenshot(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=12)
    for top in range(4, size[1] - 12, 16):
        words = rng.choice(_WORDS, size=40)
        draw.text((4, top), " ".join(words), fill="black", font=font)
    return image


def _cartoon(size: tuple[int, int], rng: np.random.Generator) -> Image.Image:
    width, height = size
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = _image(np.broadcast_to(top + (bottom - top) * ramp, (height, width, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(8):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        x1, y1 = x0 + rng.integers(width // 10, width // 3), y0 + rng.integers(height // 10, height // 3)
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)), outline="black", width=3)
    return image


# -- metrics -----------------------------------------------------------------------------------------------
def auroc(normal: list[float], anomalous: list[float]) -> float:
    """P(score of a random anomaly > score of a random normal image), ties counting half (Mann-Whitney U)."""
    a, n = np.asarray(anomalous, float)[:, None], np.asarray(normal, float)[None, :]
    return float(((a > n).sum() + 0.5 * (a == n).sum()) / (a.size * n.size))


def precision_at_recall(normal: list[float], anomalous: list[float], recall: float = 0.9) -> float:
    """Precision when flagging every image scoring at least the threshold that first flags ``recall`` of
    the anomalies (the highest such threshold)."""
    ranked = np.sort(np.asarray(anomalous, float))[::-1]
    threshold = ranked[int(np.ceil(recall * ranked.size)) - 1]
    true_positives = int((ranked >= threshold).sum())
    false_positives = int((np.asarray(normal, float) >= threshold).sum())
    return true_positives / (true_positives + false_positives)


# -- the benchmark -----------------------------------------------------------------------------------------
@dataclass
class AnomalyBenchmark:
    model: str
    model_id: str
    normal_dir: str
    max_side: int
    recall: float
    counts: dict
    metrics: dict  # score -> kind ("all" too) -> {"auroc", "precision"}
    images: list[dict]

    def to_dict(self) -> dict:
        return {"benchmark": "anomaly", **asdict(self)}

    def table(self) -> str:
        kinds = [*KINDS, "all"]
        recall = f"{self.recall:.0%}"
        lines = [f"| score | {' | '.join(kinds)} |", f"|---|{'---|' * len(kinds)}"]
        for score in SCORES:
            cells = [f"{self.metrics[score][k]['auroc']:.3f} / {self.metrics[score][k]['precision']:.2f}" for k in kinds]
            lines.append(f"| {score} | {' | '.join(cells)} |")
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts.items())
        return (f"AUROC / precision at {recall} recall; images: {counts}; model {self.model} ({self.model_id[:8]}), "
                f"photos from {self.normal_dir} shrunk to at most {self.max_side} px\n\n" + "\n".join(lines))


def png_bpp(image: Image.Image) -> float:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return len(buffer.getvalue()) * 8 / (image.width * image.height)


def anomaly_benchmark(model_ref: str, normal_dir: str | Path = DEFAULT_NORMAL, max_side: int = 384,
                      recall: float = 0.9, seed: int = 0, progress=print) -> AnomalyBenchmark:
    codec = load_learned_codec(model_ref, "bench anomaly")
    task = build_task(normal_dir, max_side, seed)
    images = []
    for done, (name, kind, image) in enumerate(task, 1):
        learned, png = analyse(codec, image).bpp, png_bpp(image)
        images.append({"name": name, "kind": kind, "width": image.width, "height": image.height,
                       "learned_bpp": learned, "png_bpp": png, "learned_minus_png": learned - png})
        if progress and done % 10 == 0:
            progress(f"bench anomaly: {done}/{len(task)} images")
    metrics = {}
    for score in SCORES:
        normal = [r[score] for r in images if r["kind"] == "normal"]
        metrics[score] = {}
        for kind in [*KINDS, "all"]:
            anomalous = [r[score] for r in images if r["kind"] != "normal" and kind in ("all", r["kind"])]
            metrics[score][kind] = {"auroc": auroc(normal, anomalous),
                                    "precision": precision_at_recall(normal, anomalous, recall)}
    counts = {kind: sum(r["kind"] == kind for r in images) for kind in ("normal", *KINDS)}
    return AnomalyBenchmark(str(model_ref), codec.model_id.hex(), str(normal_dir), max_side, recall, counts,
                            metrics, images)


def write_anomaly(result: AnomalyBenchmark, path: str | Path) -> Path:
    return write_result(result, path, "Anomaly benchmark")


def write_result(result, path: str | Path, title: str) -> Path:
    """``result`` as JSON (``.json``) or as Markdown under ``title``: the anomaly and digits benchmarks' file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        path.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    else:
        path.write_text(f"# {title}\n\n{result.table()}\n")
    return path
