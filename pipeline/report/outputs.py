"""The report's files: Parquet/JSON tables, RD plots (PNG), the Markdown summary, and reference series.

A **reference series** is a labelled RD curve read from a JSON file and drawn on the same axes as the
measured codecs, never measured and never in the BD table (it usually comes from other images, e.g.
CompressAI's published Kodak points). Two layouts are read:

- CompressAI's ``results/image/<dataset>/*.json``: ``{"name", "description", "results": {"bpp": [...],
  "psnr-rgb": [...], "ms-ssim-rgb": [...]}}`` (``psnr`` / ``ms-ssim`` also accepted);
- latentzip's own: ``{"label", "source", "bpp": [...], "psnr_db": [...], "ms_ssim": [...]}``.

A file may hold one series or a list of them; ``label`` (or ``name``) labels the curve and ``source``
says where its numbers come from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from latentzip.codecs.metrics import MS_SSIM_MIN_SIDE
from latentzip.pipeline.report.bdrate import MIN_RATE_POINTS, bd_markdown

#: The learned series' colours, in order, and the classical codecs' (no reds: red is for learned models).
LEARNED_COLOURS = ("crimson", "black", "deeppink", "goldenrod")
CLASSICAL_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:cyan", "tab:olive",
                     "tab:gray")
_METRIC_KEYS = {"psnr_db": ("psnr_db", "psnr-rgb", "psnr"), "ms_ssim": ("ms_ssim", "ms-ssim-rgb", "ms-ssim")}


def write_table(records: list[dict], schema: pa.Schema | None, path: Path) -> Path:
    table = pa.Table.from_pylist(records, schema=schema) if schema is not None or records else pa.table({})
    pq.write_table(table, path)
    return path


def write_json(records, path: Path) -> Path:
    def clean(value):  # JSON has no NaN: write null
        return None if isinstance(value, float) and not math.isfinite(value) else value

    path.write_text(json.dumps([{k: clean(v) for k, v in r.items()} for r in records], indent=1,
                               ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------ references

def load_reference(path: str | Path) -> list[dict]:
    """Series ``{"label", "source", "bpp", "psnr_db", "ms_ssim"}`` from a JSON file (layouts: module doc)."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"reference {path}: cannot read JSON: {exc}") from None
    out = []
    for index, entry in enumerate(document if isinstance(document, list) else [document]):
        where = f"reference {path} (series {index})"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected an object, got {type(entry).__name__}")
        values = entry.get("results", entry)
        label = entry.get("label") or " ".join(filter(None, (entry.get("name"), entry.get("description"))))
        if not label:
            raise ValueError(f"{where}: no label (or name)")
        bpp = values.get("bpp")
        if not isinstance(bpp, list) or not bpp:
            raise ValueError(f"{where}: no bpp list")
        series = {"label": str(label), "source": str(entry.get("source", "")), "bpp": [float(v) for v in bpp]}
        for metric, keys in _METRIC_KEYS.items():
            found = next((values[k] for k in keys if k in values), None)
            if found is not None and len(found) != len(bpp):
                raise ValueError(f"{where}: {len(found)} {metric} values for {len(bpp)} bpp values")
            series[metric] = None if found is None else [float(v) for v in found]
        if series["psnr_db"] is None and series["ms_ssim"] is None:
            raise ValueError(f"{where}: neither PSNR nor MS-SSIM values")
        out.append(series)
    return out


# --------------------------------------------------------------------------------------------- plots

def plot_rd(curves: dict[str, dict], ylabel: str, path: Path, title: str,
            references: list[tuple[str, list[tuple[float, float]]]] = ()) -> Path:
    """bpp vs one metric: a line per classical codec, learned series highlighted, references dashed grey.

    ``curves`` is :func:`latentzip.pipeline.report.summary.curves` for the metric; ``references`` are (label,
    [(bpp, value)]) pairs. With learned series, the axes show up to 3x their highest bpp (at least 2 bpp),
    where the comparison is; every point is in the tables.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 5.5), dpi=120)
    FigureCanvasAgg(figure)
    axes = figure.subplots()
    learned_index = classical_index = 0
    for codec, curve in curves.items():
        bpp = [p[0] for p in curve["points"]]
        values = [p[1] for p in curve["points"]]
        if curve["kind"] == "learned":
            colour = LEARNED_COLOURS[learned_index % len(LEARNED_COLOURS)]
            learned_index += 1
            axes.plot(bpp, values, "*-", color=colour, markersize=14, markeredgecolor="black", linewidth=2.5,
                      label=f"{codec} (learned)", zorder=5)
            for x, y, lmbda in curve["points"]:
                if math.isfinite(lmbda):
                    axes.annotate(f"λ={lmbda:g}", (x, y), textcoords="offset points", xytext=(8, -12), fontsize=8)
        else:
            colour = CLASSICAL_COLOURS[classical_index % len(CLASSICAL_COLOURS)]
            classical_index += 1
            axes.plot(bpp, values, "o-", color=colour, markersize=4, linewidth=1.2, label=codec, alpha=0.85)
    for label, points in references:
        points = sorted(points)
        axes.plot([p[0] for p in points], [p[1] for p in points], "s--", color="dimgray", markersize=4,
                  linewidth=1.2, label=f"{label} (reference)", zorder=4)
    _zoom(axes, curves, references)
    axes.set_xlabel("bits per pixel (stored bytes)")
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    return path


def _zoom(axes, curves: dict[str, dict], references) -> None:
    learned = [p[0] for c in curves.values() if c["kind"] == "learned" for p in c["points"]]
    if not learned:
        return
    right = max(2.0, 3 * max(learned))
    shown = [p[1] for c in curves.values() for p in c["points"] if p[0] <= right]
    shown += [y for _, points in references for x, y in points if x <= right]
    pad = 0.05 * (max(shown) - min(shown) or 1.0)
    axes.set_xlim(0, right)
    axes.set_ylim(min(shown) - pad, max(shown) + pad)


def reference_points(references: list[dict], metric: str) -> list[tuple[str, list[tuple[float, float]]]]:
    return [(r["label"], list(zip(r["bpp"], r[metric]))) for r in references if r.get(metric)]


# ------------------------------------------------------------------------------------------ Markdown

def fmt(value: float, digits: int) -> str:
    return "n/a" if isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def seconds(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


CONVENTIONS = (
    "bpp is computed from the bytes actually stored (the archive's bitstream containers or, encoding on the "
    "fly, the learned codec's whole container; the classical codecs' whole files), never from likelihoods; "
    "\"mean bpp\" is the mean over images of each image's bpp (as in model cards; `latentzip encode` prints it "
    "beside the pixel-weighted all bytes / all pixels). "
    f"PSNR is over RGB with peak 255, averaged per image. MS-SSIM is NaN (n/a) for images with a side under "
    f"{MS_SSIM_MIN_SIDE} px; its mean is over the images where it is defined. A learned model's encode time is "
    "only measured when it encodes on the fly (not for archives: encoding happened in the encode job). Times "
    "are mean seconds per image (in a Ray Data actor of one CPU, or in this process).")
BD_CONVENTIONS = (
    "Bjontegaard deltas of each learned model (test) against each classical codec (anchor), from the mean "
    "curves above, with the `bjontegaard` package (PCHIP interpolation, integrated over the overlap of the two "
    "curves). **BD-rate < 0 means the learned model needs fewer bits** for the same quality; BD-PSNR / "
    f"BD-MS-SSIM > 0 means it reaches higher quality at the same rate. Each curve needs ≥ {MIN_RATE_POINTS} "
    "rate points (after dropping points that do not raise both rate and quality); with fewer the delta is "
    "n/a rather than extrapolated.")


def summary_markdown(summary: list[dict]) -> list[str]:
    lines = ["| codec | quality | images | mean bpp | mean PSNR (dB) | mean MS-SSIM | MS-SSIM images | "
             "encode s | decode s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in summary:
        codec = f"**{row['codec']}** (learned, λ)" if row["kind"] == "learned" else row["codec"]
        quality = fmt(row["quality"], 4) if row["kind"] == "learned" else f"{row['quality']:g}"
        lines.append(f"| {codec} | {quality} | {row['images']} | {fmt(row['mean_bpp'], 4)} | "
                     f"{fmt(row['mean_psnr_db'], 2)} | {fmt(row['mean_ms_ssim'], 4)} | {row['ms_ssim_images']} | "
                     f"{seconds(row['mean_encode_s'])} | {seconds(row['mean_decode_s'])} |")
    return lines


def write_markdown(summary: list[dict], header: dict, errors: list[dict], plots: list[Path], path: Path,
                   bd=(), coverage=(), references=()) -> Path:
    lines = ["# Rate-distortion report", ""]
    lines += [f"- **{key}**: {value}" for key, value in header.items()]
    lines += ["", CONVENTIONS, ""] + summary_markdown(summary)
    lines += ["", "## BD-rate against the classical codecs", "", BD_CONVENTIONS, ""] + bd_markdown(list(bd))
    if coverage:
        lines += ["", "## Classical sweeps against the learned bpp range", ""] + [f"- {note}" for note in coverage]
    if references:
        lines += ["", "## Reference series (drawn, not measured here)", ""]
        lines += [f"- {r['label']}: {r['source'] or 'no source given'}" for r in references]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    if errors:
        lines += ["", f"## Failures ({len(errors)})", "", "| id | codec | quality | reason |", "|---|---|---:|---|"]
        lines += [f"| {e['id']} | {e['codec']} | {e['quality']:g} | {e['reason']} |" for e in errors]
    path.write_text("\n".join(lines) + "\n")
    return path
