"""The report as one self-contained HTML page: plots as base64 ``data:`` URIs, inline CSS, no scripts, no
external assets, so the single file can be mailed, attached to a review or opened offline.

Sections: what was measured, the RD plots, the BD table, the per-codec summary, the classical sweeps'
coverage of the learned bpp range, per-image outliers, reference series and failures.

**Outliers** compare, image by image, each learned point with the anchor codec (JPEG 4:2:0 when measured)
on *that image's own* RD curve: the anchor's PSNR interpolated (linearly in log bpp) at the learned bpp.
``delta_db`` < 0 means the learned model is worse than JPEG on that image at that rate; images where the
learned bpp lies outside the anchor's measured bpp range are left out rather than extrapolated.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path

import numpy as np

from latentzip.pipeline.report.bdrate import METRICS
from latentzip.pipeline.report.outputs import BD_CONVENTIONS, CONVENTIONS, fmt, seconds

#: Outliers listed at each end (worst and best images for the learned model against the anchor).
OUTLIERS_EACH_WAY = 5

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; line-height: 1.4 }
h1 { font-size: 1.6em } h2 { font-size: 1.25em; margin-top: 1.6em; border-bottom: 1px solid #ddd }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.88em }
th, td { border: 1px solid #ccc; padding: 3px 7px } th { background: #f2f2f2 }
td.n { text-align: right; font-variant-numeric: tabular-nums }
tr.learned td { background: #fff0f0 } .bad { color: #b00020 } .good { color: #006400 }
figure { margin: 1em 0 } figure img { max-width: 100%; border: 1px solid #ddd }
.note { color: #555; font-size: 0.9em } dl { display: grid; grid-template-columns: max-content auto; gap: 2px 12px }
dt { font-weight: 600 } dd { margin: 0 }
"""


def outliers(rows: list[dict], anchor: str | None = None) -> tuple[str | None, list[dict]]:
    """(anchor codec, per-image comparisons sorted by ``delta_db``): module doc, "Outliers"."""
    classical = [r for r in rows if r["kind"] == "classical"]
    names = list(dict.fromkeys(r["codec"] for r in classical))
    anchor = anchor if anchor in names else ("jpeg" if "jpeg" in names else (names[0] if names else None))
    if anchor is None:
        return None, []
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in classical:
        if row["codec"] == anchor and math.isfinite(row["psnr_db"]) and row["bpp"] > 0:
            curves.setdefault(row["id"], []).append((row["bpp"], row["psnr_db"]))
    out = []
    for row in rows:
        points = sorted(curves.get(row["id"], []))
        if row["kind"] != "learned" or len(points) < 2 or not math.isfinite(row["psnr_db"]):
            continue
        bpp = np.log([p[0] for p in points])
        if not bpp[0] <= math.log(row["bpp"]) <= bpp[-1]:
            continue
        anchor_db = float(np.interp(math.log(row["bpp"]), bpp, [p[1] for p in points]))
        out.append({"id": row["id"], "learned": row["codec"], "quality": row["quality"], "bpp": row["bpp"],
                    "psnr_db": row["psnr_db"], "anchor_psnr_db": anchor_db, "delta_db": row["psnr_db"] - anchor_db})
    out.sort(key=lambda r: r["delta_db"])
    return anchor, out


def _e(value) -> str:
    return html.escape(str(value))


def _prose(text: str) -> str:
    """Markdown-flavoured prose (``**bold**``, `` `code` ``) as HTML, escaped."""
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _e(text))
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", out)


#: The metrics as a reader names them (the summary's column names are internal).
METRIC_NAMES = {"mean_psnr_db": "PSNR", "mean_ms_ssim": "MS-SSIM"}


def _table(head: list[str], body: list[list[str]], classes: list[str] | None = None) -> str:
    rows = "".join(f"<tr class='{_e(c)}'>" + "".join(body_cell for body_cell in r) + "</tr>"
                   for r, c in zip(body, classes or [""] * len(body)))
    return "<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + f"</tr>{rows}</table>"


def _td(value, numeric: bool = False, css: str = "") -> str:
    classes = " ".join(filter(None, ("n" if numeric else "", css)))
    return f"<td class='{classes}'>{_e(value)}</td>" if classes else f"<td>{_e(value)}</td>"


def _signed(value: float, digits: int, suffix: str = "", better_if_negative: bool = False) -> str:
    if not math.isfinite(value):
        return _td("n/a", True)
    good = value < 0 if better_if_negative else value > 0
    return _td(f"{value:+.{digits}f}{suffix}", True, "good" if good else "bad")


def _bd_section(bd) -> str:
    if not bd:
        return "<p>No BD table: it needs a learned model and a classical codec in the report.</p>"
    body = []
    for row in bd:
        label, unit = METRICS[row.metric]
        body.append([_td(row.learned), _td(row.anchor), _td(METRIC_NAMES.get(row.metric, row.metric)),
                     _signed(row.bd_rate_pct, 1, " %", better_if_negative=True),
                     _signed(row.bd_quality, 3 if unit == "dB" else 4, f" {unit}" if unit == "dB" else ""),
                     _td(f"{label}"), _td(f"{row.learned_points}/{row.anchor_points}", True),
                     _td(fmt(row.quality_overlap, 2), True), _td(row.note)])
    return _table(["learned", "anchor", "metric", "BD-rate", "BD-quality", "quality delta", "points (learned/anchor)",
                   "quality overlap", "note"], body)


def _summary_section(summary) -> str:
    body, classes = [], []
    for row in summary:
        learned = row["kind"] == "learned"
        body.append([_td(row["codec"] + (" (learned, λ)" if learned else "")),
                     _td(fmt(row["quality"], 4) if learned else f"{row['quality']:g}", True), _td(row["images"], True),
                     _td(fmt(row["mean_bpp"], 4), True), _td(fmt(row["mean_psnr_db"], 2), True),
                     _td(fmt(row["mean_ms_ssim"], 4), True), _td(seconds(row["mean_encode_s"]), True),
                     _td(seconds(row["mean_decode_s"]), True)])
        classes.append("learned" if learned else "")
    return _table(["codec", "quality", "images", "mean bpp", "mean PSNR (dB)", "mean MS-SSIM", "encode s", "decode s"],
                  body, classes)


def _outlier_section(rows) -> str:
    anchor, compared = outliers(rows)
    if not compared:
        return "<p>No per-image comparison: it needs learned rows and a classical anchor measured on the same images.</p>"
    k = OUTLIERS_EACH_WAY
    picked = compared[:k] + [r for r in compared[-k:] if r not in compared[:k]]
    body = [[_td(r["id"]), _td(r["learned"]), _td(fmt(r["quality"], 4), True), _td(f"{r['bpp']:.4f}", True),
             _td(f"{r['psnr_db']:.2f}", True), _td(f"{r['anchor_psnr_db']:.2f}", True), _signed(r["delta_db"], 2, " dB")]
            for r in picked]
    return (f"<p class='note'>Each learned point against {_e(anchor)} on the same image, {_e(anchor)}'s PSNR "
            f"interpolated at the learned bpp (linear in log bpp). Worst {k} and best {k} of {len(compared)} "
            f"comparisons; negative = the learned model is worse on that image.</p>"
            + _table(["id", "learned", "λ", "bpp", "learned PSNR", f"{anchor} PSNR at that bpp", "difference"], body))


def write_html(path: Path, header: dict, summary, bd, plots: list[Path], rows, errors, coverage, references) -> Path:
    """Write the page to ``path`` and return it; the plots are read from their PNG files and embedded."""
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
             "<title>latentzip rate-distortion report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>Rate-distortion report</h1><dl>"]
    parts += [f"<dt>{_e(k)}</dt><dd>{_e(str(v).replace('`', ''))}</dd>" for k, v in header.items()]
    parts += ["</dl>", f"<p class='note'>{_prose(CONVENTIONS)}</p>", "<h2>Rate–distortion curves</h2>"]
    for plot in plots:
        data = base64.b64encode(Path(plot).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{_e(plot.stem)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption class='note'>{_e(plot.name)}</figcaption></figure>")
    parts += ["<h2>BD-rate against the classical codecs</h2>",
              f"<p class='note'>{_prose(BD_CONVENTIONS)}</p>", _bd_section(bd),
              "<h2>Means per codec and quality</h2>", _summary_section(summary)]
    if coverage:
        parts += ["<h2>Classical sweeps against the learned bpp range</h2><ul>"]
        parts += [f"<li>{_e(note.replace('**', ''))}</li>" for note in coverage] + ["</ul>"]
    parts += ["<h2>Per-image outliers</h2>", _outlier_section(rows)]
    if references:
        parts += ["<h2>Reference series (drawn, not measured here)</h2><ul>"]
        parts += [f"<li>{_e(r['label'])}: {_e(r['source'] or 'no source given')}</li>" for r in references] + ["</ul>"]
    if errors:
        parts += [f"<h2>Failures ({len(errors)})</h2>",
                  _table(["id", "codec", "quality", "reason"],
                         [[_td(e["id"]), _td(e["codec"]), _td(f"{e['quality']:g}", True), _td(e["reason"])]
                          for e in errors])]
    parts.append("</body></html>\n")
    path.write_text("".join(parts), encoding="utf-8")
    return path
