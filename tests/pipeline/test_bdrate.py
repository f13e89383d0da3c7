"""Bjontegaard deltas (pipeline/report/bdrate.py) against answers computed here, independently of the package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentzip.pipeline.report.bdrate import MIN_RATE_POINTS, bd_delta, bd_markdown, bd_table, frontier
from latentzip.pipeline.report.summary import curves, summarize

#: Four rate points of a plausible anchor: (bpp, PSNR dB), concave in log rate.
ANCHOR = [(0.25, 28.0), (0.5, 31.0), (1.0, 34.5), (2.0, 38.0)]


def hand_bd_rate(anchor, test, samples: int = 20001) -> float:
    """BD-rate (%) by direct numerical integration: log10 rate linear between points, trapezoid rule over the
    PSNR interval both curves cover. Written without the ``bjontegaard`` package."""
    rate_a, psnr_a = np.log10([p[0] for p in anchor]), np.array([p[1] for p in anchor])
    rate_t, psnr_t = np.log10([p[0] for p in test]), np.array([p[1] for p in test])
    low, high = max(psnr_a.min(), psnr_t.min()), min(psnr_a.max(), psnr_t.max())
    psnr = np.linspace(low, high, samples)
    difference = np.interp(psnr, psnr_t, rate_t) - np.interp(psnr, psnr_a, rate_a)
    mean = float(np.sum((difference[1:] + difference[:-1]) / 2 * np.diff(psnr)) / (high - low))
    return (10**mean - 1) * 100


def test_rate_scaled_by_0_8_is_minus_20_percent():
    test = [(rate * 0.8, psnr) for rate, psnr in ANCHOR]
    by_hand = hand_bd_rate(ANCHOR, test)
    assert by_hand == pytest.approx(-20.0, abs=1e-6)  # closed form: 0.8 - 1 at every quality
    bd_rate, bd_psnr, rate_overlap, quality_overlap, note = bd_delta(ANCHOR, test)
    assert note == "" and quality_overlap == 1.0 and 0 < rate_overlap < 1
    assert math.copysign(1, bd_rate) == math.copysign(1, by_hand) == -1
    assert abs(bd_rate - by_hand) < 1.0
    assert bd_psnr > 0  # fewer bits for the same PSNR is more PSNR for the same bits


def test_psnr_shift_on_a_log_linear_curve():
    """PSNR = 20 + 6 log2(bpp): +1 dB everywhere is BD-PSNR +1 dB and BD-rate 2^(-1/6) - 1 exactly."""
    anchor = [(r, 20 + 6 * math.log2(r)) for r in (0.2, 0.4, 0.8, 1.6, 3.2)]
    test = [(r, q + 1) for r, q in anchor]
    bd_rate, bd_psnr, *_ = bd_delta(anchor, test)
    assert bd_psnr == pytest.approx(1.0, abs=1e-9)
    assert bd_rate == pytest.approx((2 ** (-1 / 6) - 1) * 100, abs=1e-6)
    assert abs(bd_rate - hand_bd_rate(anchor, test)) < 1.0


def test_uneven_rate_change_agrees_with_hand_integration_within_one_point():
    rates = [0.125, 0.25, 0.5, 1, 2, 4]
    anchor = [(r, 30 + 5 * math.log2(r) - 0.4 * math.log2(r) ** 2) for r in rates]
    test = [(r * (1.5 - 0.15 * i), q) for i, (r, q) in enumerate(anchor)]  # worse at low rates, better at high
    by_hand = hand_bd_rate(anchor, test)
    bd_rate = bd_delta(anchor, test)[0]
    assert math.copysign(1, bd_rate) == math.copysign(1, by_hand)
    assert abs(bd_rate - by_hand) < 1.0


def test_a_worse_test_curve_has_positive_bd_rate():
    test = [(rate * 1.5, psnr - 0.5) for rate, psnr in ANCHOR]
    bd_rate, bd_psnr, *_ = bd_delta(ANCHOR, test)
    assert bd_rate > 0 and bd_psnr < 0 and abs(bd_rate - hand_bd_rate(ANCHOR, test)) < 1.0


def test_fewer_than_four_rate_points_gives_no_number_and_says_why():
    bd_rate, bd_psnr, _, _, note = bd_delta(ANCHOR, ANCHOR[:3])
    assert math.isnan(bd_rate) and math.isnan(bd_psnr)
    assert note == f"needs ≥ {MIN_RATE_POINTS} rate points (learned has 3)"
    bd_rate, _, _, _, note = bd_delta(ANCHOR[:3], [(r * 0.8, q) for r, q in ANCHOR[:3]], min_points=3)  # on request
    assert bd_rate == pytest.approx(-20.0, abs=1e-6) and note == "indicative: 3 rate points, below the usual 4"


def test_frontier_drops_points_that_buy_no_quality():
    points = [(1.0, 34.0), (0.5, 31.0), (1.2, 33.9), (float("nan"), 40.0), (2.0, 38.0), (2.0, 38.5)]
    assert frontier(points) == [(0.5, 31.0), (1.0, 34.0), (2.0, 38.0)]


def test_curves_that_do_not_overlap_in_quality():
    test = [(r, q + 20) for r, q in ANCHOR]
    bd_rate, bd_psnr, rate_overlap, quality_overlap, note = bd_delta(ANCHOR, test)
    assert math.isnan(bd_rate) and quality_overlap == 0 and "no overlap in quality" in note
    assert bd_psnr == pytest.approx(20.0)


def test_bd_table_from_report_summary():
    """The report's path: per-image rows -> summary -> curves -> BD table, anchor classical, test learned."""
    rows = []
    for image in ("a", "b"):
        for i, (rate, psnr) in enumerate(ANCHOR):
            base = {"id": image, "ms_ssim": math.nan, "encode_s": 0.0, "decode_s": 0.0}
            rows.append({**base, "kind": "classical", "codec": "jpeg", "quality": 10.0 * (i + 1), "bpp": rate,
                         "psnr_db": psnr})
            rows.append({**base, "kind": "learned", "codec": "hyper", "quality": 0.001 * (i + 1), "bpp": rate * 0.8,
                         "psnr_db": psnr})
    summary = summarize(rows)
    table = bd_table({"mean_psnr_db": curves(summary, "mean_psnr_db"), "mean_ms_ssim": curves(summary, "mean_ms_ssim")})
    assert [(r.learned, r.anchor, r.metric) for r in table] == [("hyper", "jpeg", "mean_psnr_db")]
    assert table[0].bd_rate_pct == pytest.approx(-20.0, abs=1e-6) and table[0].learned_points == 4
    markdown = "\n".join(bd_markdown(table))
    assert "| hyper | jpeg | -20.0 % |" in markdown
