"""Bjontegaard deltas (BD-rate, BD-PSNR, BD-MS-SSIM) of learned RD curves against classical ones.

Computed with the ``bjontegaard`` package (FAU, 1.3.0) using PCHIP interpolation (piecewise cubic
Hermite, the shape-preserving interpolant JVET's common test conditions moved to from VCEG-M33's cubic
fit), integrated over the interval where both curves overlap: the distortion interval for BD-rate, the
log-rate interval for BD-PSNR.

Conventions, stated once:

- the **anchor** is the classical codec, the **test** the learned model. BD-rate is the average bitrate
  change of the learned model at equal quality, in percent: **negative means the learned model needs
  fewer bits** (it is better), positive means it needs more. BD-PSNR (dB) and BD-MS-SSIM (index units) are
  the average quality change at equal rate: positive means the learned model is better.
- a curve is its points sorted by bpp; points that do not raise both rate and quality over the previous
  kept point are dropped (interpolation needs a strictly increasing axis, and a codec setting that costs
  more bits for no gain is not on the codec's RD frontier).
- a delta needs **at least** :data:`MIN_RATE_POINTS` **rate points on each curve** after that cleaning
  (the usual four of VCEG-M33 and the JVET CTC). With fewer, no number is computed and the table says
  "needs ≥ 4 rate points" instead of extrapolating a curve from three points or fewer; train or encode
  more λ values to get one. ``min_points`` lowers the bar on request (``latentzip report --min-points 3``);
  such deltas carry the note "indicative".
- where the curves do not overlap on the integration axis the delta is undefined (NaN, with the reason);
  ``overlap`` records the fraction of the union of both intervals that the integral covers.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np

#: Fewest rate points per curve for a Bjontegaard delta (VCEG-M33 and the JVET CTC use four).
MIN_RATE_POINTS = 4
#: Interpolation passed to the ``bjontegaard`` package.
METHOD = "pchip"
#: The metrics a BD table covers: summary column -> (label of the quality delta, its unit).
METRICS = {"mean_psnr_db": ("BD-PSNR", "dB"), "mean_ms_ssim": ("BD-MS-SSIM", "MS-SSIM")}


@dataclass
class BDResult:
    """One (learned model, classical anchor, metric) entry of a BD table."""
    learned: str
    anchor: str
    metric: str
    bd_rate_pct: float
    bd_quality: float
    learned_points: int
    anchor_points: int
    rate_overlap: float
    quality_overlap: float
    note: str


def frontier(points) -> list[tuple[float, float]]:
    """(rate, quality) points sorted by rate, keeping only those that raise both rate and quality."""
    kept: list[tuple[float, float]] = []
    for rate, quality in sorted((float(r), float(q)) for r, q in points):
        if not (math.isfinite(rate) and math.isfinite(quality)) or rate <= 0:
            continue
        if not kept or (rate > kept[-1][0] and quality > kept[-1][1]):
            kept.append((rate, quality))
    return kept


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    union = max(a.max(), b.max()) - min(a.min(), b.min())
    inter = min(a.max(), b.max()) - max(a.min(), b.min())
    return max(inter, 0.0) / union if union > 0 else 0.0


def bd_delta(anchor, test, min_points: int = MIN_RATE_POINTS) -> tuple[float, float, float, float, str]:
    """BD-rate (%) and BD-quality of ``test`` against ``anchor``, each a list of (rate, quality) points.

    Returns ``(bd_rate_pct, bd_quality, rate_overlap, quality_overlap, note)``; the deltas are NaN, with the
    reason in ``note``, when a curve has fewer than ``min_points`` frontier points or the curves do not
    overlap.
    """
    import bjontegaard

    anchor, test = frontier(anchor), frontier(test)
    short = [f"{name} has {len(curve)}" for name, curve in (("learned", test), ("anchor", anchor))
             if len(curve) < min_points]
    if short:
        return math.nan, math.nan, math.nan, math.nan, f"needs ≥ {min_points} rate points ({', '.join(short)})"
    rate_a, quality_a = (np.array(v) for v in zip(*anchor))
    rate_t, quality_t = (np.array(v) for v in zip(*test))
    rate_overlap = _overlap(np.log10(rate_a), np.log10(rate_t))
    quality_overlap = _overlap(quality_a, quality_t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported in the table instead of as a warning
        options = {"method": METHOD, "require_matching_points": False, "min_overlap": 0}
        bd_rate = (float(bjontegaard.bd_rate(rate_a, quality_a, rate_t, quality_t, **options))
                   if quality_overlap > 0 else math.nan)
        bd_quality = (float(bjontegaard.bd_psnr(rate_a, quality_a, rate_t, quality_t, **options))
                      if rate_overlap > 0 else math.nan)
    notes = []
    if min(len(anchor), len(test)) < MIN_RATE_POINTS:
        notes.append(f"indicative: {min(len(anchor), len(test))} rate points, below the usual {MIN_RATE_POINTS}")
    if quality_overlap == 0:
        notes.append("no overlap in quality: BD-rate undefined")
    if rate_overlap == 0:
        notes.append("no overlap in rate: BD-quality undefined")
    return bd_rate, bd_quality, rate_overlap, quality_overlap, "; ".join(notes)


def bd_table(curves_by_metric: dict[str, dict[str, dict]], min_points: int = MIN_RATE_POINTS) -> list[BDResult]:
    """Every learned curve against every classical curve, for each metric.

    ``curves_by_metric`` maps a summary column (``mean_psnr_db``, ``mean_ms_ssim``) to the output of
    :func:`latentzip.pipeline.report.summary.curves` for it: codec -> ``{"kind", "points": [(bpp, value, quality)]}``.
    """
    table = []
    for metric, curves in curves_by_metric.items():
        learned = [name for name, curve in curves.items() if curve["kind"] == "learned"]
        anchors = [name for name, curve in curves.items() if curve["kind"] == "classical"]
        for name in learned:
            test = [(p[0], p[1]) for p in curves[name]["points"]]
            for anchor_name in anchors:
                anchor = [(p[0], p[1]) for p in curves[anchor_name]["points"]]
                bd_rate, bd_quality, rate_overlap, quality_overlap, note = bd_delta(anchor, test, min_points)
                table.append(BDResult(name, anchor_name, metric, bd_rate, bd_quality, len(frontier(test)),
                                      len(frontier(anchor)), rate_overlap, quality_overlap, note))
    return table


def bd_records(table: list[BDResult]) -> list[dict]:
    return [asdict(row) for row in table]


def _number(value: float, digits: int, signed: bool = True) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def bd_markdown(table: list[BDResult]) -> list[str]:
    """The BD table as Markdown lines: one row per (learned, anchor), PSNR and MS-SSIM side by side."""
    if not table:
        return ["No BD table: it needs a learned model and a classical codec in the report."]
    by_pair: dict[tuple[str, str], dict[str, BDResult]] = {}
    for row in table:
        by_pair.setdefault((row.learned, row.anchor), {})[row.metric] = row
    lines = ["| learned | anchor | BD-rate PSNR | BD-PSNR (dB) | BD-rate MS-SSIM | BD-MS-SSIM | points (learned/anchor) "
             "| note |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for (learned, anchor), rows in by_pair.items():
        psnr, msssim = rows.get("mean_psnr_db"), rows.get("mean_ms_ssim")
        cells = []
        for row, digits in ((psnr, 3), (msssim, 4)):
            cells += (["n/a", "n/a"] if row is None else
                      [f"{_number(row.bd_rate_pct, 1)} %" if math.isfinite(row.bd_rate_pct) else "n/a",
                       _number(row.bd_quality, digits)])
        first = psnr or msssim
        notes = "; ".join(dict.fromkeys(r.note for r in rows.values() if r.note))
        lines.append(f"| {learned} | {anchor} | {' | '.join(cells)} | {first.learned_points}/{first.anchor_points} "
                     f"| {notes} |")
    return lines
