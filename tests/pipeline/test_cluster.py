"""Embedded Ray clusters are pinned: two jobs on one host never look each other's cluster up."""

import os
import subprocess
import sys

import pytest

from latentzip.pipeline.cluster import PINNED

ANOTHER_CLUSTER = """
import sys, ray
ray.init(address="local", num_cpus=1, include_dashboard=False)
print(ray.get_runtime_context().gcs_address, flush=True)
sys.stdin.read()
"""


def _clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", PINNED)}


def test_processes_of_an_embedded_cluster_find_it_with_another_cluster_on_the_host(ray_local):
    ray = ray_local
    ours = ray.get_runtime_context().gcs_address
    other = subprocess.Popen([sys.executable, "-c", ANOTHER_CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True, env=_clean_env())
    try:
        theirs = other.stdout.readline().strip()
        assert theirs and theirs != ours

        @ray.remote(num_cpus=0)
        def lookup():
            # What Ray's own code without an address resolves to (Ray Train's placement-group cleaner
            # asks the state API this way whether the controller is alive).
            from ray._private.services import get_ray_address_from_environment

            return get_ray_address_from_environment(None, None)

        assert ray.get(lookup.remote()) == ours
        # A child of the driver resolves to it too ...
        child = subprocess.run([sys.executable, "-c", "from ray._private.services import "
                                "get_ray_address_from_environment as f; print(f(None, None))"],
                               capture_output=True, text=True, check=True)
        assert child.stdout.strip() == ours
        # ... but a child latentzip command does not read the pin as the user's --address.
        assert os.environ["RAY_ADDRESS"] == os.environ[PINNED] == ours
    finally:
        other.stdin.close()
        other.wait(timeout=60)


@pytest.mark.slow
def test_two_embedded_training_jobs_side_by_side(tmp_path, samples_dir):
    """Two `latentzip train` processes at once, each on its own embedded cluster: both finish."""
    command = ["train", str(samples_dir), "--arch", "scale-hyperprior", "--N", "16", "--M", "16", "--steps", "6",
               "--patch-size", "64", "--batch-size", "2", "--workers", "1", "--checkpoint-every", "3"]
    binary = os.path.join(os.path.dirname(sys.executable), "latentzip")
    jobs = [subprocess.Popen([binary, *command, "--out", str(tmp_path / name)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=_clean_env()) for name in ("a", "b")]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output[-3000:]
    for name in ("a", "b"):
        assert (tmp_path / name / "codec" / "codec.json").is_file()


QUIET_PROBE = """
import ray
from latentzip.pipeline.cluster import ensure_ray

ensure_ray(num_cpus=2)

class Double:
    def __call__(self, batch):
        print("from the actor")
        return {"x": batch["x"] * 2}

rows = ray.data.range(4).map_batches(lambda b: {"x": b["id"]}).map_batches(
    Double, compute=ray.data.ActorPoolStrategy(size=1), batch_size=2).take_all()
print("rows", sorted(r["x"] for r in rows))
"""


def _probe_output(**env) -> str:
    result = subprocess.run([sys.executable, "-c", QUIET_PROBE], capture_output=True, text=True, timeout=300,
                            env={**_clean_env(), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def test_redirected_output_is_quiet_and_uncoloured_unless_verbose():
    quiet = _probe_output()
    assert "rows [0, 2, 4, 6]" in quiet and "from the actor" in quiet  # the job's own output stays
    assert "\x1b[" not in quiet  # no ANSI colour codes: the output is not a terminal
    for noise in ("Token authentication is enabled", "Started a local Ray instance", "Running Dataset",
                  "Starting execution of Dataset", "execution finished"):
        assert noise not in quiet, noise
    verbose = _probe_output(LATENTZIP_VERBOSE="1")
    assert "Started a local Ray instance" in verbose and "execution finished" in verbose


def test_verbose_is_taken_anywhere_on_the_command_line(monkeypatch, capsys):
    from latentzip.jobs import cli

    monkeypatch.delenv("LATENTZIP_VERBOSE", raising=False)
    assert cli.main(["zoo", "--verbose"]) == 0
    assert os.environ["LATENTZIP_VERBOSE"] == "1" and "mean-scale-q5" in capsys.readouterr().out
