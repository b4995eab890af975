"""docker-compose.yml is valid and has what a GPU host needs (the client validates; no engine needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_is_valid():
    cmd = compose_command()
    if cmd is None:
        pytest.skip("no docker compose client on this machine")
    res = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*cmd, "-f", str(ROOT / "docker-compose.yml"), "--profile", "postgres", "config", "-q"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_services_redis_gpu_worker_flower_and_optional_postgres():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    assert {"redis", "worker-gpu0", "flower", "postgres"} <= set(services)
    assert services["postgres"]["profiles"] == ["postgres"]
    worker = services["worker-gpu0"]
    device = worker["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"] and device["device_ids"] == ["0"]
    assert worker["command"] == ["worker", "--gpu", "0"]
    assert worker["environment"]["SAEJOBS_BROKER"].startswith("redis://redis:6379")
