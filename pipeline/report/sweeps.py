"""Classical quality sweeps against the learned models' bpp range: extend them, and say how far they reach.

A BD-rate is only as good as the overlap of the curves, so the report makes each classical codec's sweep
reach below the lowest and above the highest learned mean bpp: :func:`extend_plan` proposes, for each codec
that falls short on a side, a quality halfway from its current extreme towards the codec's quality limit
(all qualities are "higher = more bits"); the report measures them in another pass and asks again, for up
to :data:`MAX_EXTEND_ROUNDS` rounds. :func:`coverage_notes` says, per codec, which range it spans and
whether it covers the learned one (a codec at its quality limit may not: JPEG's headers alone cost more
than a small image's learned bitstream).
"""

from __future__ import annotations

import math

from latentzip.codecs.classical import FORMATS

#: Passes that add classical qualities until the sweeps cover the learned bpp range.
MAX_EXTEND_ROUNDS = 4


def _toward(quality: float, limit: float) -> float | None:
    """A quality about halfway from ``quality`` to ``limit`` (integers stay integers); None at the limit."""
    if quality == limit:
        return None
    middle = (quality + limit) / 2
    step = math.floor(middle) if limit < quality else math.ceil(middle)
    return limit if step == quality else step


def learned_range(summary: list[dict]) -> tuple[float, float] | None:
    bpps = [r["mean_bpp"] for r in summary if r["kind"] == "learned" and math.isfinite(r["mean_bpp"])]
    return (min(bpps), max(bpps)) if bpps else None


def extend_plan(summary: list[dict], plan: list[tuple[str, float]], bpp_range: tuple[float, float]):
    """(codec, quality) pairs to add so each classical codec reaches below and above ``bpp_range``."""
    low_bpp, high_bpp = bpp_range
    done = set(plan)
    extra = []
    for name in dict.fromkeys(n for n, _ in plan):
        points = sorted((r["quality"], r["mean_bpp"]) for r in summary
                        if r["codec"] == name and r["kind"] == "classical" and math.isfinite(r["mean_bpp"]))
        if not points:
            continue
        low_q, high_q = FORMATS[name].quality_range
        bpps = [b for _, b in points]
        for needed, quality, limit in ((min(bpps) > low_bpp, points[0][0], low_q),
                                       (max(bpps) < high_bpp, points[-1][0], high_q)):
            step = _toward(quality, limit) if needed else None
            if step is not None and (name, step) not in done:
                extra.append((name, step))
    return extra


def coverage_notes(summary: list[dict], plan: list[tuple[str, float]], bpp_range) -> list[str]:
    if bpp_range is None:
        return []
    low_bpp, high_bpp = bpp_range
    notes = []
    for name in dict.fromkeys(n for n, _ in plan):
        points = [(r["quality"], r["mean_bpp"]) for r in summary if r["codec"] == name and r["kind"] == "classical"
                  and math.isfinite(r["mean_bpp"])]
        if not points:
            continue
        bpps = [b for _, b in points]
        qualities = sorted(q for q, _ in points)
        gaps = ([f"cannot go below {min(bpps):.3f} bpp"] if min(bpps) > low_bpp else []) + \
               ([f"cannot go above {max(bpps):.3f} bpp"] if max(bpps) < high_bpp else [])
        verdict = "covers it" if not gaps else "does **not** cover it: " + ", ".join(gaps)
        notes.append(f"{name}: qualities {', '.join(f'{q:g}' for q in qualities)} span "
                     f"{min(bpps):.3f}–{max(bpps):.3f} bpp; learned range {low_bpp:.3f}–{high_bpp:.3f} bpp: {verdict}")
    return notes
