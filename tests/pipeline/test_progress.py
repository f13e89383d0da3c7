"""Progress of a long job: a bar that moves per image on a terminal, plain lines when redirected."""

import io
import os
import re
import select
import subprocess
import sys

from latentzip.pipeline.progress import Progress


def test_plain_lines_when_not_a_terminal():
    lines = []
    progress = Progress(3, "encode", lines.append, stream=io.StringIO())
    progress.advance(1, line=None)
    progress.advance(2, line="encode: 1/1 units, 3/3 images")
    progress.close()
    assert lines == ["encode: 1/1 units, 3/3 images"]


def _run_in_a_terminal(command: list[str], timeout: float = 600) -> str:
    """Run ``command`` with its stdout and stderr on a pseudo-terminal; everything it wrote."""
    parent, child = os.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "LATENTZIP_EMBEDDED_RAY")}
    process = subprocess.Popen(command, stdout=child, stderr=child, stdin=subprocess.DEVNULL, env=env)
    os.close(child)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([parent], [], [], timeout)
            if not ready:
                raise TimeoutError("".join(chunks)[-2000:])
            try:
                data = os.read(parent, 65536)
            except OSError:  # the child side closed
                break
            if not data:
                break
            chunks.append(data.decode(errors="replace"))
    finally:
        process.wait(timeout=60)
        os.close(parent)
    assert process.returncode == 0, "".join(chunks)[-3000:]
    return "".join(chunks)


def test_encode_progress_bar_moves_per_image_on_a_terminal(tmp_path, tiny_codec_dir, samples_dir):
    binary = os.path.join(os.path.dirname(sys.executable), "latentzip")
    output = _run_in_a_terminal([binary, "encode", str(samples_dir), "--archive", str(tmp_path / "a.zarr"),
                                 "--model", str(tiny_codec_dir), "--batch-size", "1"])
    counts = [int(n) for n in re.findall(r"encode:\s+\d+%\|[^|]*\|\s*(\d+)/6", output)]
    assert counts and counts[-1] == 6, output[-2000:]
    assert len(set(counts)) >= 3, counts  # it moved image by image, not once at the end of the unit
    assert "encoded 6 images" in output
