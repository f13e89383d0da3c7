"""Embedded Ray clusters are pinned: two jobs on one host never look each other's cluster up."""

import os
import subprocess
import sys
from importlib.resources import as_file, files

import pytest

from latentzip.pipeline.raycluster import PINNED

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
def test_two_embedded_training_jobs_side_by_side(tmp_path):
    """Two `latentzip train` processes at once, each on its own embedded cluster: both finish."""
    with as_file(files("latentzip.jobs") / "samples") as samples:
        command = ["latentzip", "train", str(samples), "--arch", "scale-hyperprior", "--N", "16", "--M", "16",
                   "--steps", "6", "--patch-size", "64", "--batch-size", "2", "--workers", "1",
                   "--checkpoint-every", "3"]
        binary = os.path.join(os.path.dirname(sys.executable), "latentzip")
        jobs = [subprocess.Popen([binary, *command[1:], "--out", str(tmp_path / name)], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=_clean_env()) for name in ("a", "b")]
        outputs = [job.communicate(timeout=600)[0] for job in jobs]
    for job, output in zip(jobs, outputs):
        assert job.returncode == 0, output[-3000:]
    for name in ("a", "b"):
        assert (tmp_path / name / "codec" / "codec.json").is_file()
