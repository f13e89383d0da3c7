"""One image, measured: every learned model (stored bytes from an archive, or encoded on the fly) and every
classical codec at every quality, decoded and compared with the original (bpp from bytes, PSNR, MS-SSIM,
seconds). The unit of work of the report (pipeline/report/run.py), and :class:`MeasureStage`, the Ray Data
stage that runs it over the originals (the same callable-class pattern as encode, decode and score)."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from latentzip.codecs.classical import FORMATS, ClassicalCodec
from latentzip.codecs.images import load_image
from latentzip.codecs.metrics import ms_ssim, psnr_db
from latentzip.codecs.registry import load_codec, zoo_models
from latentzip.pipeline.archive import Item
from latentzip.pipeline.report.outputs import fmt


ALL_CLASSICAL = tuple(FORMATS)


ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("kind", pa.string()), ("codec", pa.string()), ("quality", pa.float64()),
    ("num_bytes", pa.int64()), ("bpp", pa.float64()), ("psnr_db", pa.float64()), ("ms_ssim", pa.float64()),
    ("encode_s", pa.float64()), ("decode_s", pa.float64()), ("width", pa.int32()), ("height", pa.int32()),
])


@dataclass(frozen=True)
class LearnedSpec:
    """What a task needs to run one learned model: its reference and id, and its labels.

    ``name`` is the series (the rows' ``codec``), ``model`` the model's own name, ``config`` its
    architecture label (models sharing it may form one series).
    """
    name: str
    ref: str
    model_id: str
    lmbda: float
    entropy_params: str = "integer"
    model: str = ""
    config: str = ""
    refine_steps: int = 0  # encoder-side latent refinement when encoding on the fly (codecs/refine.py)


def classical_plan(classical=ALL_CLASSICAL, qualities: dict[str, list] | None = None) -> list[tuple[str, float]]:
    """(codec, quality) pairs to measure, validated up front so a typo fails before any work."""
    qualities = dict(qualities or {})
    unknown = [name for name in classical if name not in FORMATS]
    if unknown:
        raise ValueError(f"unknown classical codec(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    extra = [name for name in qualities if name not in classical]
    if extra:
        raise ValueError(f"qualities given for {', '.join(extra)}, which are not among the report's codecs")
    plan = []
    for name in classical:
        for quality in qualities.get(name, FORMATS[name].sweep):
            ClassicalCodec(name, quality)  # range check
            plan.append((name, quality))
    return plan


def _model_name(ref: str) -> tuple[str, str]:
    """(name, resolvable ref) of a model reference: a zoo name, or a codec directory (resolved)."""
    if ref in zoo_models():
        name = ref
    else:
        path = Path(ref).expanduser()
        ref = str(path.resolve()) if path.is_dir() else ref  # tasks may run in another working directory
        # training writes OUT/codec: the run folder names the model better than "codec"
        name = path.resolve().parent.name if path.name == "codec" else path.name
    return (f"learned-{name}" if name in FORMATS else name), ref


def _spec(codec, ref: str) -> LearnedSpec:
    name, ref = _model_name(ref)
    config = codec.config
    label = f"{config.arch}-N{config.N}-M{config.M}" + ("" if config.entropy_params == "integer" else "-float")
    return LearnedSpec(name, ref, codec.model_id.hex(), _card_lmbda(codec.card), config.entropy_params, name, label)


def learned_spec(archive) -> LearnedSpec:
    """Name, resolvable reference, id and lambda of the model that wrote ``archive``."""
    from latentzip.pipeline.decoding import decodable

    # codec() verifies the archive's model id
    return _spec(decodable(archive).codec(), str(archive.meta["model_ref"]))


def model_spec(ref: str) -> LearnedSpec:
    """The same for a model that encodes on the fly: a codec directory or a zoo name."""
    codec = load_codec(ref)
    if getattr(codec, "kind", "") == "classical":
        raise ValueError(f"{ref!r} is a classical codec; give it in the classical codecs, not as a learned model")
    return _spec(codec, ref)


def assign_series(specs: list[LearnedSpec], series: str | None = None) -> list[LearnedSpec]:
    """Group learned models into RD curves (module doc, "Series"); raises on ambiguous input."""
    seen = {}
    for spec in specs:
        if spec.model_id in seen:
            raise ValueError(f"model {spec.model_id} is given twice ({seen[spec.model_id]} and {spec.ref})")
        seen[spec.model_id] = spec.ref
    if series:
        lmbdas = [s.lmbda for s in specs]
        if len(specs) > 1 and (not all(math.isfinite(v) for v in lmbdas) or len(set(lmbdas)) < len(lmbdas)):
            raise ValueError(f"series {series!r} needs a distinct lambda per model in the codec cards, got "
                             + ", ".join(f"{s.model}: {fmt(s.lmbda, 4)}" for s in specs))
        return [replace(s, name=series) for s in specs]
    groups = defaultdict(list)
    for spec in specs:
        groups[spec.config].append(spec)
    out = []
    for spec in specs:
        members = groups[spec.config]
        lmbdas = [m.lmbda for m in members]
        if len(members) > 1 and all(math.isfinite(v) for v in lmbdas) and len(set(lmbdas)) == len(lmbdas):
            spec = replace(spec, name=spec.config)
        out.append(spec)
    names = [(s.name, s.lmbda if math.isfinite(s.lmbda) else None) for s in out]
    return [replace(s, name=f"{s.name}-{s.model_id[:8]}") if names.count(key) > 1 else s
            for s, key in zip(out, names)]


def _card_lmbda(document: dict) -> float:
    card = document.get("card") or {}
    for source in (card.get("training"), card.get("config"), card, document.get("config")):
        if isinstance(source, dict) and isinstance(source.get("lmbda"), (int, float)):
            return float(source["lmbda"])
    return math.nan


def load_learned(spec: LearnedSpec):
    """The codec of ``spec``, checked to be the model ``spec`` names (an archive's, or the one whose id the
    driver read)."""
    codec = load_codec(spec.ref, entropy_params=spec.entropy_params)
    if codec.model_id.hex() != spec.model_id:
        raise ValueError(f"model {spec.ref!r} has id {codec.model_id.hex()}, the archive needs {spec.model_id}")
    return codec


def _row(item_id, kind, codec, quality, num_bytes, image, decoded, encode_s, decode_s) -> dict:
    if decoded.size != image.size:
        raise ValueError(f"decoded size {decoded.size} differs from the original's {image.size}")
    return {"id": item_id, "kind": kind, "codec": codec, "quality": float(quality), "num_bytes": num_bytes,
            "bpp": num_bytes * 8 / (image.width * image.height), "psnr_db": psnr_db(image, decoded),
            "ms_ssim": ms_ssim(image, decoded), "encode_s": encode_s, "decode_s": decode_s,
            "width": image.width, "height": image.height}


def _measure_learned(item_id: str, image, spec: LearnedSpec, codec, stored: Item | None) -> dict:
    encode_s = math.nan
    if stored is None:  # encode on the fly
        started = time.perf_counter()
        data = codec.encode(image, refine_steps=spec.refine_steps)
        encode_s = time.perf_counter() - started
    else:
        if (stored.height, stored.width) != (image.height, image.width):
            raise ValueError(f"archive records {stored.width}x{stored.height}, original is {image.width}x{image.height}")
        data = stored.data  # num_bytes is what the archive stores for this id: bpp never from likelihoods
    started = time.perf_counter()
    decoded = codec.decode(data)
    decode_s = time.perf_counter() - started
    return _row(item_id, "learned", spec.name, spec.lmbda, len(data), image, decoded, encode_s, decode_s)


def measure_image(item_id: str, original: bytes, learned: list[tuple[LearnedSpec, object, Item | None]],
                  plan: list[tuple[str, float]]) -> tuple[list[dict], list[dict]]:
    """Every row of one image: each learned model (spec, codec, and its archive's stored bytes, or ``None``
    to encode on the fly), then each classical (codec, quality).

    Returns ``(rows, errors)``; a failing codec costs only its own rows, recorded as ``{id, codec,
    quality, reason}``.
    """
    rows, errors = [], []

    def fail(codec, quality, exc):
        errors.append({"id": item_id, "codec": codec, "quality": float(quality),
                       "reason": f"{type(exc).__name__}: {exc}"})

    try:
        image = load_image(original)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal for the other images
        fail("original", math.nan, exc)
        return rows, errors
    for spec, codec, stored in learned:
        try:
            if isinstance(stored, BaseException):  # the archive could not give this id's bytes
                raise stored
            rows.append(_measure_learned(item_id, image, spec, codec, stored))
        except Exception as exc:  # noqa: BLE001
            fail(spec.name, spec.lmbda, exc)
    for name, quality in plan:
        try:
            codec = ClassicalCodec(name, quality)
            started = time.perf_counter()
            data = codec.encode(image)
            encode_s = time.perf_counter() - started
            started = time.perf_counter()
            decoded = codec.decode(data)
            decode_s = time.perf_counter() - started
            rows.append(_row(item_id, "classical", name, quality, len(data), image, decoded, encode_s, decode_s))
        except Exception as exc:  # noqa: BLE001
            fail(name, quality, exc)
    return rows, errors


class MeasureStage:
    """Ray Data callable class: a batch of originals (``id`` and ``source``, and from shards the ``image``
    bytes: :func:`latentzip.pipeline.sources.dataset`) -> each image's rows and errors as JSON, one string
    per image. Loads each learned model once and opens each archive once, per actor; ids outside ``wanted``
    are passed over. ``archives`` are the paths of the archives of the first ``len(archives)`` specs (the
    others encode on the fly). Runs without Ray too: ``MeasureStage(...)({"id": ..., "source": ...})``."""

    def __init__(self, learned: list[LearnedSpec], archives: list[str], plan: list[tuple[str, float]],
                 wanted: list[str] | None = None):
        from latentzip.pipeline.decoding import open_archive

        self.learned = [(spec, load_learned(spec)) for spec in learned]
        self.archives = [open_archive(path) for path in archives]
        self.plan, self.wanted = [tuple(p) for p in plan], None if wanted is None else set(wanted)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from latentzip.pipeline import storage

        ids, rows, errors = [], [], []
        for i, item_id in enumerate(map(str, batch["id"])):
            if self.wanted is not None and item_id not in self.wanted:
                continue
            try:
                original = bytes(batch["image"][i]) if "image" in batch else storage.read_bytes(str(batch["source"][i]))
            except Exception as exc:  # noqa: BLE001 - one unreadable original costs its own rows
                image_rows, image_errors = [], [{"id": item_id, "codec": "original", "quality": math.nan,
                                                 "reason": f"{type(exc).__name__}: {exc}"}]
            else:
                learned = [(spec, codec, self._stored(k, item_id)) for k, (spec, codec) in enumerate(self.learned)]
                image_rows, image_errors = measure_image(item_id, original, learned, self.plan)
            ids.append(item_id), rows.append(json.dumps(image_rows)), errors.append(json.dumps(image_errors))
        return {"id": np.array(ids, dtype=object), "rows": np.array(rows, dtype=object),
                "errors": np.array(errors, dtype=object)}

    def _stored(self, k: int, item_id: str):
        if k >= len(self.archives):
            return None
        try:
            return self.archives[k].item(item_id)
        except Exception as exc:  # noqa: BLE001 - recorded as that model's failure on this image
            return exc
