"""``latentzip bench startup``: how long commands take from a fresh process, before and after any cache.

Each case is run ``repeats`` times as a new process (``python -m latentzip.jobs.cli ...`` or ``python -c``),
and the median wall-clock time counts: what a user waits for at the shell. The one-id decode reads a
768x512 image from an archive built once (in this process, without Ray) with a zoo model. On a shared
machine the absolute times move with the load; compare cases run together.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

from latentzip.codecs.registry import DEFAULT_ZOO_MODEL

#: The decoded image's size (width, height).
DECODE_SIZE = (768, 512)
DECODE_ID = "photo-768x512.jpg"


def build_archive(path: Path, model_ref: str = DEFAULT_ZOO_MODEL) -> str:
    """An archive at ``path`` holding one 768x512 photo (a bundled sample, resized) as ``DECODE_ID``."""
    from PIL import Image

    from latentzip.codecs.registry import load_learned_codec
    from latentzip.pipeline.archive import ArchiveWriter, Item

    sample = sorted(resources.files("latentzip.jobs").joinpath("samples").iterdir(), key=lambda p: p.name)[0]
    with resources.as_file(sample) as file:
        image = Image.open(file).convert("RGB").resize(DECODE_SIZE)
    codec = load_learned_codec(model_ref, "bench startup")
    writer = ArchiveWriter.open_or_create(path, codec.card, model_ref)
    writer.append([Item(DECODE_ID, codec.encode(image), image.height, image.width, "bench-startup")], unit="bench-startup")
    writer.update_index(force=True)
    return DECODE_ID


def cases(archive: Path, out_png: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "latentzip.jobs.cli"]
    return {
        "latentzip --help": [*cli, "--help"],
        "latentzip zoo": [*cli, "zoo"],
        f"latentzip zoo show {DEFAULT_ZOO_MODEL}": [*cli, "zoo", "show", DEFAULT_ZOO_MODEL],
        "latentzip decode ARCHIVE --id X -o x.png (768x512)": [*cli, "decode", str(archive), "--id", DECODE_ID,
                                                               "-o", str(out_png)],
        "python -c 'import latentzip.api'": [sys.executable, "-c", "import latentzip.api"],
    }


def time_command(command: list[str], repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = subprocess.run(command, capture_output=True, text=True)
        seconds.append(time.perf_counter() - started)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-500:]}")
    return seconds


def bench_startup(repeats: int = 5, workdir: Path | None = None) -> dict:
    """Median (and every) wall-clock seconds of each case, in fresh processes."""
    work = Path(workdir or tempfile.mkdtemp(prefix="latentzip-bench-startup-"))
    archive = work / "startup.zarr"
    if not (archive / "zarr.json").is_file():
        build_archive(archive)
    rows = []
    for name, command in cases(archive, work / "x.png").items():
        seconds = time_command(command, repeats)
        rows.append({"case": name, "median_s": statistics.median(seconds), "runs_s": seconds})
    return {"repeats": repeats, "python": sys.version.split()[0], "cases": rows}


def markdown(result: dict) -> str:
    lines = [f"Fresh processes, median of {result['repeats']} runs each (Python {result['python']}).", "",
             "| command | median (s) | runs (s) |", "|---|---:|---|"]
    for row in result["cases"]:
        runs = ", ".join(f"{s:.2f}" for s in row["runs_s"])
        lines.append(f"| `{row['case']}` | {row['median_s']:.2f} | {runs} |")
    return "\n".join(lines) + "\n"


def write_result(result: dict, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n" if out.suffix == ".json"
                   else "# Cold start\n\n" + markdown(result))
    return out
