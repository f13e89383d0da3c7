"""Submitting latentzip jobs to a Ray cluster through Ray's Job Submission API (the dashboard's HTTP API).

The project travels as a wheel in ``runtime_env["py_modules"]``, never as ``working_dir``: a working
directory puts the repository root on the workers' ``PYTHONPATH``, where our top-level ``codecs/`` folder
would shadow the standard library's ``codecs``. The wheel is built from the source tree (``pip wheel``,
no build isolation, so no network) and cached under a hash of the sources. Ray installs a py_modules
wheel with ``pip install --target`` *including its dependencies*, which would download torch and Ray
into every job's environment; so the shipped copy declares none (``Requires-Dist`` lines removed) and
the cluster's Python provides the pinned dependencies (``ray_cluster.yaml`` installs them on every node).

Authentication: Ray 2.60 clusters use token authentication (``RAY_AUTH_MODE=token``). The client sends
``Authorization: Bearer <token>``; the token comes from ``--token-file``, ``$RAY_AUTH_TOKEN``,
``$RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (Ray's own order) and is never printed or logged.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import uuid
import zipfile
from collections.abc import Callable
from pathlib import Path

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
#: What a wheel is built from, relative to the source root (pyproject.toml maps the folders).
SOURCE_ITEMS = ("pyproject.toml", "README.md", "src", "codecs", "pipeline", "jobs")
#: Job states after which nothing changes.
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


class SubmitError(Exception):
    """A submission that could not go ahead; ``exit_code`` is what the CLI exits with."""
    exit_code = 2


class ClusterUnreachableError(SubmitError):
    """Nothing answers as a Ray dashboard at the address."""
    exit_code = 4


class AuthenticationFailedError(SubmitError):
    """The cluster wants a token and got none, or refused the one sent."""
    exit_code = 5


class JobNotFoundError(SubmitError):
    """No job with this submission id on the cluster."""
    exit_code = 6


# ---------------------------------------------------------------------------------------------- the wheel

def find_source_root(start: Path | None = None) -> Path:
    """The latentzip source tree: the folder holding pyproject.toml and jobs/submission.py (found from this module)."""
    candidates = [start] if start is not None else [Path(__file__).resolve().parent, Path.cwd()]
    for candidate in candidates:
        for folder in (candidate, *candidate.parents):
            if (folder / "pyproject.toml").is_file() and (folder / "jobs" / "submission.py").is_file():
                return folder
    raise SubmitError("cannot find the latentzip source tree (pyproject.toml) to build a wheel from; "
                      "pass --wheel with a built wheel instead")


def _source_files(root: Path) -> list[Path]:
    files = []
    for item in SOURCE_ITEMS:
        path = root / item
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in path.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return sorted(files)


def source_hash(root: Path) -> str:
    """SHA-256 over the relative paths and bytes of every file a wheel is built from."""
    digest = hashlib.sha256()
    for path in _source_files(root):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("LATENTZIP_CACHE") or Path.home() / ".cache" / "latentzip") / "wheels"


def build_wheel(root: Path | None = None, cache_dir: Path | None = None) -> Path:
    """The dependency-free wheel of the source tree, built once per source hash (later calls reuse it)."""
    root = find_source_root() if root is None else Path(root)
    cache_dir = default_cache_dir() if cache_dir is None else Path(cache_dir)
    target = cache_dir / source_hash(root)[:20]
    built = sorted(target.glob("*.whl"))
    if built:
        return built[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as scratch:
        # Build from a copy of exactly the hashed files: nothing in the source tree is touched (no
        # build/ or egg-info beside the editable install), and the hash names what is inside.
        source = Path(scratch) / "src"
        for path in _source_files(root):
            destination = source / path.relative_to(root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        out = Path(scratch) / "out"
        command = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                   "-w", str(out), str(source)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        wheels = sorted(out.glob("*.whl"))
        if result.returncode != 0 or len(wheels) != 1:
            raise SubmitError(f"building the latentzip wheel failed:\n{result.stdout}{result.stderr}")
        staged = Path(scratch) / "staged"
        staged.mkdir()
        strip_requirements(wheels[0], staged / wheels[0].name)
        try:
            staged.rename(target)
        except OSError:  # another process cached the same sources first
            pass
    return min(target.glob("*.whl"))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def strip_requirements(wheel: Path, out: Path) -> Path:
    """Copy ``wheel`` to ``out`` without ``Requires-Dist`` in its METADATA (and RECORD updated to match)."""
    with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as target:
        names = source.namelist()
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        record_name = next(n for n in names if n.endswith(".dist-info/RECORD"))
        metadata = b"".join(line for line in source.read(metadata_name).splitlines(keepends=True)
                            if not line.startswith(b"Requires-Dist:"))
        record = []
        for line in source.read(record_name).decode().splitlines():
            if line.startswith(metadata_name + ","):
                line = f"{metadata_name},{_record_hash(metadata)},{len(metadata)}"
            record.append(line)
        for info in source.infolist():
            if info.filename == metadata_name:
                target.writestr(info, metadata)
            elif info.filename == record_name:
                target.writestr(info, "\n".join(record) + "\n")
            else:
                target.writestr(info, source.read(info))
    return out


# ------------------------------------------------------------------------------------------ the cluster

def load_token(token_file: Path | None = None) -> str | None:
    """The cluster token: ``token_file``, ``$RAY_AUTH_TOKEN``, ``$RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``."""
    if token_file is not None:
        try:
            return Path(token_file).read_text().strip() or None
        except OSError as exc:
            raise AuthenticationFailedError(f"cannot read the token file {token_file}: {exc.strerror}") from None
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    for path in (os.environ.get("RAY_AUTH_TOKEN_PATH"), Path.home() / ".ray" / "auth_token"):
        if path and Path(path).is_file():
            return Path(path).read_text().strip() or None
    return None


def default_address() -> str:
    return os.environ.get("RAY_API_SERVER_ADDRESS") or DEFAULT_ADDRESS


class Cluster:
    """A Job Submission client that turns Ray's errors into ours (exit codes 4, 5, 6)."""

    def __init__(self, address: str | None = None, token: str | None = None):
        from ray.job_submission import JobSubmissionClient

        self.address = address or default_address()
        self._has_token = token is not None
        headers = {"Authorization": f"Bearer {token}"} if token else None
        # Ray lets $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, override the address it is given (and an
        # embedded cluster of this process exports RAY_ADDRESS: pipeline/cluster.py); the address this
        # client was given is the one it talks to.
        saved = os.environ.get("RAY_API_SERVER_ADDRESS")
        os.environ["RAY_API_SERVER_ADDRESS"] = self.address
        try:
            self.client = self._call(JobSubmissionClient, self.address, headers=headers)
        finally:
            if saved is None:
                os.environ.pop("RAY_API_SERVER_ADDRESS", None)
            else:
                os.environ["RAY_API_SERVER_ADDRESS"] = saved

    def _call(self, function: Callable, *args, **kwargs):
        import requests
        from ray.exceptions import AuthenticationError

        try:
            return function(*args, **kwargs)
        except AuthenticationError:
            if self._has_token:
                raise AuthenticationFailedError(
                    f"the cluster at {self.address} refused the token (wrong token for this cluster; check "
                    "--token-file / $RAY_AUTH_TOKEN / $RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token)") from None
            raise AuthenticationFailedError(
                f"the cluster at {self.address} requires a token and none was found: pass --token-file, or set "
                "$RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH (on the head node: `ray get-auth-token`)") from None
        except (ConnectionError, requests.exceptions.RequestException) as exc:
            raise ClusterUnreachableError(
                f"cannot reach a Ray dashboard at {self.address} ({_first_line(exc)}); is the cluster up and "
                "the port forwarded (`ray dashboard ray_cluster.yaml`)?") from None
        except RuntimeError as exc:
            if "does not exist" in str(exc) or "not found" in str(exc).lower():
                raise JobNotFoundError(_first_line(exc)) from None
            raise

    def submit(self, entrypoint: str, runtime_env: dict, submission_id: str, metadata: dict) -> str:
        return self._call(self.client.submit_job, entrypoint=entrypoint, runtime_env=runtime_env,
                          submission_id=submission_id, metadata=metadata)

    def status(self, job_id: str) -> str:
        return str(self._call(self.client.get_job_status, job_id).value)

    def info(self, job_id: str):
        return self._call(self.client.get_job_info, job_id)

    def logs(self, job_id: str) -> str:
        return self._call(self.client.get_job_logs, job_id)

    def list(self) -> list:
        return self._call(self.client.list_jobs)

    def stop(self, job_id: str) -> bool:
        return self._call(self.client.stop_job, job_id)

    def follow(self, job_id: str, write: Callable[[str], object] = sys.stdout.write) -> str:
        """Stream the job's logs until it ends; return its final status."""

        async def tail() -> None:
            async for lines in self.client.tail_job_logs(job_id):
                write(lines)
                sys.stdout.flush()

        self._call(asyncio.run, tail())
        status = self.status(job_id)
        while status not in TERMINAL:  # the log stream can close a moment before the state is final
            self._call(asyncio.run, asyncio.sleep(0.5))
            status = self.status(job_id)
        return status


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def make_runtime_env(wheel: Path, pip: list[str] | None = None, env: dict[str, str] | None = None) -> dict:
    """The job's runtime environment: the wheel as a py_module (never working_dir), extra pip, env vars."""
    runtime_env: dict = {"py_modules": [str(wheel)]}
    if pip:
        runtime_env["pip"] = list(pip)
    if env:
        runtime_env["env_vars"] = dict(env)
    return runtime_env


def make_entrypoint(command: str, args: list[str]) -> str:
    return shlex.join(["python", "-m", f"latentzip.jobs.{command}", *args])


def new_submission_id(command: str) -> str:
    return f"latentzip-{command}-{uuid.uuid4().hex[:10]}"


def exit_code(status: str) -> int:
    """0 succeeded, 1 failed, 3 stopped (2, 4, 5, 6 are the client's own errors)."""
    return {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}.get(status, 1)
