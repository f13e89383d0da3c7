"""Import hygiene: the `codecs/` folder never shadows the standard library, and latentzip.codecs is light.

Each check runs in a fresh interpreter so modules imported by other tests (or by pytest) cannot hide
a problem.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CODECS_MODULES = {"bitstream", "checkpoint", "classical", "hyperprior", "images", "learned", "metrics", "registry"}


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=900)  # a hang guard, generous for a loaded machine
    assert result.returncode == 0, result.stderr
    return result


def test_repo_root_is_where_the_codecs_folder_is():
    assert (REPO_ROOT / "codecs" / "bitstream.py").is_file()
    assert (REPO_ROOT / "pyproject.toml").is_file()


@pytest.mark.parametrize("where", ["repo-root", "codecs-folder", "tmp-dir"])
def test_stdlib_codecs_is_not_shadowed(where, tmp_path):
    cwd = {"repo-root": REPO_ROOT, "codecs-folder": REPO_ROOT / "codecs", "tmp-dir": tmp_path}[where]
    code = (
        "import codecs, latentzip.codecs, sysconfig, os, json; codecs.lookup('utf-8'); "
        "import latentzip.codecs.bitstream; "
        "print(json.dumps({'file': codecs.__file__, 'stdlib': sysconfig.get_paths()['stdlib'], "
        "'has_lookup': hasattr(codecs, 'lookup'), 'ours': latentzip.codecs.__name__, "
        "'utf8': codecs.encode('\u00e9', 'utf-8').hex()}))"
    )
    info = json.loads(_run(code, cwd).stdout)
    stdlib = os.path.realpath(info["stdlib"])
    assert os.path.realpath(os.path.dirname(info["file"])) == stdlib
    assert os.path.basename(info["file"]) == "codecs.py"
    assert info["has_lookup"] and info["ours"] == "latentzip.codecs"
    assert info["utf8"] == "c3a9"


def test_codecs_package_imports_neither_ray_nor_zarr(tmp_path):
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import latentzip.codecs as package\n"
        "names = sorted(m.name for m in pkgutil.iter_modules(package.__path__))\n"
        "for name in names:\n"
        "    importlib.import_module('latentzip.codecs.' + name)\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'zarr'))\n"
        "print(json.dumps({'modules': names, 'heavy': heavy}))\n"
    )
    info = json.loads(_run(code, tmp_path).stdout)
    assert CODECS_MODULES <= set(info["modules"])
    assert info["heavy"] == []


def test_bare_latentzip_import_is_cheap(tmp_path):
    # src/latentzip/__init__.py promises no torch, ray or zarr until the API is used.
    code = (
        "import json, sys, latentzip\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray', 'zarr'))))\n"
    )
    assert json.loads(_run(code, tmp_path).stdout) == []


#: Modules a codec never needs: CompressAI's datasets (point clouds, torch_geometric: seconds to import) and
#: Ray (jobs start it when they need it).
UNNEEDED = ("compressai.datasets", "torch_geometric", "ray")


def _loaded(prefixes=UNNEEDED) -> str:
    return (f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {prefixes!r} "
            f"or m.startswith({prefixes!r}))))\n")


def test_loading_and_using_a_codec_imports_neither_compressai_datasets_nor_ray(tmp_path):
    code = (
        "import json, sys\n"
        "from PIL import Image\n"
        "from latentzip.api import load_codec, open_archive\n"
        "codec = load_codec('mean-scale-q5')\n"
        "assert codec.decode(codec.encode(Image.new('RGB', (64, 64), 'gray'))).size == (64, 64)\n"
        + _loaded()
    )
    assert json.loads(_run(code, tmp_path).stdout) == []


def test_scipy_stats_is_imported_only_when_a_prior_table_is_derived(tmp_path):
    # compressai.entropy_models imports scipy.stats (about a second) for GaussianConditional.update() only.
    code = (
        "import sys, types\n"
        "from PIL import Image\n"
        "from latentzip.api import load_codec\n"
        "codec = load_codec('mean-scale-q5')\n"
        "codec.decode(codec.encode(Image.new('RGB', (64, 64), 'gray')))\n"
        "loaded = lambda: type(sys.modules.get('scipy.stats')) is types.ModuleType\n"
        "print(loaded())\n"
        "codec.model.gaussian_conditional.update_scale_table(codec.model.gaussian_conditional.scale_table, force=True)\n"
        "print(loaded())\n"
    )
    assert _run(code, tmp_path).stdout.split() == ["False", "True"]


def test_zoo_listing_and_help_import_no_torch(tmp_path):
    code = (
        "import contextlib, io, json, sys\n"
        "from latentzip.jobs import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    assert cli.main(['zoo']) == 0 and cli.main(['zoo', 'show', 'mean-scale-q3']) == 0\n"
        "    assert cli.main(['--help']) == 0\n"
        "assert 'mean-scale-q3' in out.getvalue()\n"
        + _loaded(("torch", "torch_geometric", "ray", "zarr"))  # compressai: at most its deferred packages
    )
    assert json.loads(_run(code, tmp_path).stdout) == []
