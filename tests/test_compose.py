"""docker-compose.yml is valid under the compose spec and has what a GPU host needs (no engine needed).

The compose spec's JSON schema is the one docker-compose 1.29.2 (the last Python implementation of the
spec, on PyPI) validates with; its file is taken from that wheel, not copied here. Validation is what
``docker compose config`` does before it runs anything: the YAML (anchors and ``<<`` merges resolved)
against the schema, then the references the schema cannot express.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = "compose/config/compose_spec.json"


@pytest.fixture(scope="module")
def compose_schema() -> dict:
    from tests.pypi import wheel_files

    return json.loads((wheel_files("docker-compose", "1.29.2", (SCHEMA,)) / SCHEMA).read_text())


def problems(spec: dict, schema: dict) -> list[str]:
    import jsonschema

    found = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
             for e in jsonschema.Draft7Validator(schema).iter_errors(spec)]
    services, volumes = spec.get("services", {}), set(spec.get("volumes") or {})
    for name, svc in services.items():
        deps = svc.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                found.append(f"services/{name}/depends_on: no service '{dep}'")
        for v in svc.get("volumes") or []:
            source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
            if source and not source.startswith((".", "/", "~")) and source not in volumes:
                found.append(f"services/{name}/volumes: named volume '{source}' is not declared")
    return found


def test_docker_compose_file_is_valid_under_the_compose_spec(compose_schema):
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert problems(spec, compose_schema) == []


def test_the_validator_finds_what_compose_would_refuse(compose_schema):
    """It can fail: a misspelt key, a wrong type, a dangling depends_on and an undeclared volume."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    spec["services"]["redis"]["helthcheck"] = {}
    spec["services"]["flower"]["ports"] = "5555"
    spec["services"]["worker-gpu0"]["depends_on"] = {"redis": {"condition": "service_healthy"}, "broker": {}}
    spec["services"]["postgres"]["volumes"] = ["pg-data2:/var/lib/postgresql/data"]
    found = "\n".join(problems(spec, compose_schema))
    for expected in ("helthcheck", "services/flower/ports", "no service 'broker'", "'pg-data2' is not declared"):
        assert expected in found, found


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
