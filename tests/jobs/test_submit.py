"""`latentzip submit` and `latentzip jobs` against a real `ray start --head` cluster (a local rehearsal).

The cluster is this test module's own: its own temp dir, free ports on 127.0.0.1, its own token (never the
machine's ~/.ray/auth_token), and it is torn down by killing the process group `ray start --block` leads
(plus anything still naming its temp dir), never by a global `ray stop`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from latentzip.jobs import jobs
from latentzip.jobs import submission
from latentzip.pipeline.shards import ingest

pytestmark = pytest.mark.slow

VENV_BIN = Path(sys.executable).parent
START_TIMEOUT_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _without_ray_variables() -> dict[str, str]:
    """This process's environment minus RAY_* (an in-process Ray of another test sets RAY_ADDRESS and more)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("RAY_")}


def _wait_for_dashboard(url: str, token: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            request = urllib.request.Request(f"{url}/api/version", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(request, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the dashboard at {url} did not come up in {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _kill_cluster(process: subprocess.Popen, temp_dir: Path) -> None:
    """SIGTERM the process group we started, a moment's grace, SIGKILL what is left of it, then stragglers."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            pass
    # Ray processes that left the group still name this cluster's temp dir on their command lines.
    marker = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A real Ray head (`ray start --head --block`) with its dashboard on 127.0.0.1 and token auth on."""
    temp_dir = Path(tempfile.mkdtemp(prefix="lz", dir="/tmp"))  # short: unix socket paths max 107 chars
    token = secrets.token_hex(16)
    dashboard_port = free_port()
    env = {**_without_ray_variables(), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `python`/`pip` of this venv
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "RAY_USAGE_STATS_ENABLED": "0"}
    command = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={free_port()}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
               f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
               f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
               f"--ray-client-server-port={free_port()}", "--num-cpus=2", "--include-dashboard=true",
               f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    log = tmp_path_factory.mktemp("ray-head") / "ray-start.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{dashboard_port}"
    try:
        _wait_for_dashboard(url, token, process, log)
        yield {"url": url, "token": token, "temp_dir": temp_dir}
    finally:
        _kill_cluster(process, temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("wheel-cache")


@pytest.fixture
def with_token(monkeypatch):
    """``with_token(token)``: the token this process's `latentzip jobs` calls find (and nothing else)."""
    for name in ("RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(name, raising=False)
    return lambda token: monkeypatch.setenv("RAY_AUTH_TOKEN", token)


def run_cli(args: list[str], token: str | None, cache_dir: Path, home: Path | None = None,
            timeout_s: int = 240) -> subprocess.CompletedProcess:
    env = {**_without_ray_variables(), "LATENTZIP_CACHE": str(cache_dir)}
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    if home is not None:
        env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
    return subprocess.run([sys.executable, "-m", "latentzip.jobs.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def test_wheel_is_cached_and_declares_no_dependencies(cache_dir):
    import zipfile

    first = submission.build_wheel(cache_dir=cache_dir)
    assert submission.build_wheel(cache_dir=cache_dir) == first  # same sources: no rebuild
    with zipfile.ZipFile(first) as wheel:
        names = wheel.namelist()
        metadata = wheel.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist" not in metadata
    assert "latentzip/jobs/submission.py" in names and "latentzip/pipeline/training/trainer.py" in names and "latentzip/codecs/hyperprior.py" in names
    assert not any(name.startswith("codecs/") for name in names)  # never a top-level `codecs`


def test_submit_encode_then_a_failing_job(cluster, cache_dir, tiny_codec_dir, sample_images, tmp_path, capsys,
                                          with_token):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index, image in enumerate(sample_images[:3]):
        image.save(photos / f"p{index}.png")
    shards = tmp_path / "shards"
    ingest(photos, shards, images_per_shard=2)
    archive = tmp_path / "archive.zarr"

    result = run_cli(["submit", "--address", cluster["url"], "encode", str(shards), "--model", str(tiny_codec_dir),
                      "--archive", str(archive), "--batch-size", "2", "--concurrency", "1"],
                     cluster["token"], cache_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "succeeded" in result.stderr
    assert cluster["token"] not in result.stdout + result.stderr
    from latentzip.pipeline.decoding import open_archive, verify_with_model

    report = verify_with_model(archive)
    assert report.ok, report.describe()
    # The job ran the shipped wheel: Ray pip-installed it into the job's py_modules directory.
    installed = [path for path in cluster["temp_dir"].rglob("submission.py") if "py_modules_files" in path.parts]
    assert installed and installed[0].parent.name == "jobs" and installed[0].parent.parent.name == "latentzip"
    opened = open_archive(archive)
    assert sorted(opened.ids) == ["p0.png", "p1.png", "p2.png"]
    assert opened.decode("p1.png").size == sample_images[1].size

    missing = tmp_path / "no-such-shards"  # well-formed arguments, so the job is submitted and fails there
    result = run_cli(["submit", "--address", cluster["url"], "encode", str(missing), "--model", str(tiny_codec_dir),
                      "--archive", str(archive)], cluster["token"], cache_dir)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"input {missing} does not exist" in result.stdout  # the job's own error, streamed
    job_id = result.stderr.split("submitted ", 1)[1].split()[0]
    with_token(cluster["token"])
    assert jobs.main(["--address", cluster["url"], "status", job_id]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert jobs.main(["logs", job_id, "--address", cluster["url"]]) == 0  # options after the action too
    assert "does not exist" in capsys.readouterr().out
    assert jobs.main(["list", "--address", cluster["url"]]) == 0
    listed = capsys.readouterr().out
    assert job_id in listed and "SUCCEEDED" in listed
    assert jobs.main(["--address", cluster["url"], "stop", job_id]) == 0
    assert "not running" in capsys.readouterr().out


def test_wrong_address_and_tokens_have_their_own_exit_codes(cluster, cache_dir, tmp_path, capsys, with_token):
    with_token("not-the-token")
    assert jobs.main(["--address", f"http://127.0.0.1:{free_port()}", "list"]) == 4
    assert "cannot reach a Ray dashboard" in capsys.readouterr().err
    assert jobs.main(["--address", cluster["url"], "list"]) == 5
    printed = capsys.readouterr()
    assert "refused the token" in printed.err and "not-the-token" not in printed.out + printed.err
    with_token(cluster["token"])
    assert jobs.main(["--address", cluster["url"], "status", "latentzip-nope"]) == 6
    # No token anywhere (a fresh process, a HOME without ~/.ray/auth_token).
    missing = run_cli(["submit", "--address", cluster["url"], "verify", "/nowhere"], None, cache_dir, home=tmp_path)
    assert missing.returncode == 5 and "none was found" in missing.stderr


def test_submit_checks_the_jobs_arguments_before_contacting_the_cluster(cache_dir, tiny_codec_dir, tmp_path):
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens: reaching it would exit 4
    bad_option = run_cli(["submit", "--address", nobody, "encode", str(tmp_path), "--model", str(tiny_codec_dir),
                          "--archive", str(tmp_path / "a.zarr"), "--batch-size", "not-a-number"], None, cache_dir)
    assert bad_option.returncode == 2 and "invalid int value: 'not-a-number'" in bad_option.stderr
    assert "latentzip encode" in bad_option.stderr  # the job's own usage
    relative = run_cli(["submit", "--address", nobody, "encode", "shards/", "--model", "mean-scale-q3",
                        "--archive", str(tmp_path / "a.zarr")], None, cache_dir)
    assert relative.returncode == 2, relative.stderr
    assert "relative path(s) 'shards/'" in relative.stderr and str((Path.cwd() / "shards").resolve()) in relative.stderr
