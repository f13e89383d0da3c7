"""ray_cluster.yaml is a valid Ray cluster-launcher config (Ray's own schema) and keeps our security defaults."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

CONFIG = Path(__file__).resolve().parents[2] / "ray_cluster.yaml"


def test_ray_cluster_yaml_passes_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(CONFIG.read_text())
    validate_config(prepare_config(copy.deepcopy(config)))  # raises jsonschema.ValidationError if not


def test_ray_cluster_yaml_cpu_head_gpu_workers_and_private_dashboard():
    config = yaml.safe_load(CONFIG.read_text())
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head schedules no work
    workers = [spec for name, spec in types.items() if name != config["head_node_type"]]
    assert workers and all(spec["node_config"]["InstanceType"].startswith(("g", "p")) for spec in workers)
    assert all(spec["max_workers"] >= spec["min_workers"] >= 0 for spec in workers)
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in CONFIG.read_text()
    for command in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert all("RAY_AUTH_MODE=token" in line for line in config[command] if "ray start" in line)
    setup = " ".join(config["setup_commands"])
    assert "latentzip-*.whl" in setup and "constraints.txt" in setup
    assert "working_dir" not in CONFIG.read_text()
