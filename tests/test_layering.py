"""The house's layers, checked on the source: jobs -> pipeline -> codecs, never back.

- codecs/ (the models, bitstreams, classical codecs) imports neither pipeline/ nor jobs/, nor Ray or Zarr:
  a codec runs in any Python process;
- pipeline/ never imports jobs/ (the command-line layer);
- Zarr (and numcodecs, its codecs) is imported only under pipeline/archive/, the storage layer.

Every import counts, the lazy ones inside functions too (they are how the CLI answers fast).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"codecs": "latentzip.codecs", "pipeline": "latentzip.pipeline", "jobs": "latentzip.jobs",
            "src/latentzip": "latentzip"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import statement in a file, absolute names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def violations(folder: str, forbidden) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line}: {module}" for path in sources(folder)
            for line, module in imports(path) if forbidden(path, module)]


def _under(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_tree_has_the_three_layers():
    assert all(sources(folder) for folder in ("codecs", "pipeline", "jobs"))


def test_codecs_import_no_pipeline_jobs_ray_or_zarr():
    assert violations("codecs", lambda _, m: _under(m, "latentzip.pipeline", "latentzip.jobs", "ray", "zarr",
                                                     "numcodecs")) == []


def test_pipeline_never_imports_jobs():
    assert violations("pipeline", lambda _, m: _under(m, "latentzip.jobs")) == []


@pytest.mark.parametrize("folder", ["codecs", "pipeline", "jobs", "src/latentzip"])
def test_zarr_only_under_the_archive_package(folder):
    archive = ROOT / "pipeline" / "archive"

    def outside(path: Path, module: str) -> bool:
        return _under(module, "zarr", "numcodecs") and archive not in path.parents

    assert violations(folder, outside) == []


def test_the_check_sees_lazy_imports(tmp_path):
    """The scan must catch an import inside a function (how most of the tree imports Ray)."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    import zarr\n    from latentzip.jobs import cli\n")
    assert [m for _, m in imports(module)] == ["zarr", "latentzip.jobs", "latentzip.jobs.cli"]
