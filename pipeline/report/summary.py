"""The report's aggregation: per (codec, quality) means over images, and the RD curves drawn and compared."""

from __future__ import annotations

import math
from collections import defaultdict

import pyarrow as pa



SUMMARY_SCHEMA = pa.schema([
    ("kind", pa.string()), ("codec", pa.string()), ("quality", pa.float64()), ("images", pa.int64()),
    ("mean_bpp", pa.float64()), ("mean_psnr_db", pa.float64()), ("mean_ms_ssim", pa.float64()),
    ("ms_ssim_images", pa.int64()), ("mean_encode_s", pa.float64()), ("mean_decode_s", pa.float64()),
])


BD_SCHEMA = pa.schema([
    ("learned", pa.string()), ("anchor", pa.string()), ("metric", pa.string()), ("bd_rate_pct", pa.float64()),
    ("bd_quality", pa.float64()), ("learned_points", pa.int64()), ("anchor_points", pa.int64()),
    ("rate_overlap", pa.float64()), ("quality_overlap", pa.float64()), ("note", pa.string()),
])


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def _quality_key(quality: float):
    return None if math.isnan(quality) else quality


def summarize(rows: list[dict]) -> list[dict]:
    """Means per (codec, quality), learned codecs first, then codecs in first-seen order, quality ascending.

    PSNR is averaged per image (the CompressAI convention), MS-SSIM over the images where it is defined.
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["kind"], row["codec"], _quality_key(row["quality"]))].append(row)
    order = {codec: i for i, codec in enumerate(dict.fromkeys(r["codec"] for r in rows))}
    keys = sorted(groups, key=lambda k: (k[0] != "learned", order[k[1]], -math.inf if k[2] is None else k[2]))
    out = []
    for kind, codec, quality in keys:
        group = groups[(kind, codec, quality)]
        out.append({
            "kind": kind, "codec": codec, "quality": math.nan if quality is None else quality, "images": len(group),
            "mean_bpp": _mean(r["bpp"] for r in group), "mean_psnr_db": _mean(r["psnr_db"] for r in group),
            "mean_ms_ssim": _mean(r["ms_ssim"] for r in group),
            "ms_ssim_images": sum(not math.isnan(r["ms_ssim"]) for r in group),
            "mean_encode_s": _mean(r["encode_s"] for r in group), "mean_decode_s": _mean(r["decode_s"] for r in group),
        })
    return out


def curves(summary: list[dict], metric: str = "mean_psnr_db") -> dict[str, dict]:
    """Per codec: its kind and its (bpp, metric) points sorted by bpp, non-finite points left out.

    The input a BD-rate computation needs (one curve per codec, anchor = the learned or a classical one).
    """
    out: dict[str, dict] = {}
    for row in summary:
        bpp, value = row["mean_bpp"], row[metric]
        if not (math.isfinite(bpp) and math.isfinite(value)):
            continue
        curve = out.setdefault(row["codec"], {"kind": row["kind"], "points": []})
        curve["points"].append((bpp, value, row["quality"]))
    for curve in out.values():
        curve["points"].sort()
    return out
