"""``latentzip bench startup`` (pipeline/bench/startup.py): every case runs in a fresh process and the
figures land in the results file."""

from __future__ import annotations

import json

import pytest

from latentzip.jobs import bench
from latentzip.pipeline.archive import open_archive
from latentzip.pipeline.bench.startup import DECODE_ID, DECODE_SIZE, build_archive


def test_the_decode_case_reads_a_768x512_image(tmp_path):
    build_archive(tmp_path / "a.zarr")
    item = open_archive(tmp_path / "a.zarr").item(DECODE_ID)
    assert (item.width, item.height) == DECODE_SIZE


@pytest.mark.slow
def test_bench_startup_writes_every_case(tmp_path, capsys):
    out = tmp_path / "startup.json"
    assert bench.main(["startup", "--repeats", "1", "--workdir", str(tmp_path / "work"), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    cases = [row["case"] for row in result["cases"]]
    assert any("--help" in c for c in cases) and any("decode" in c for c in cases) and any("api" in c for c in cases)
    assert all(row["median_s"] > 0 and len(row["runs_s"]) == 1 for row in result["cases"])
    assert (tmp_path / "work" / "x.png").is_file()  # the decode case wrote its PNG
