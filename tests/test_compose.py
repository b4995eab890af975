"""docker-compose.yml is valid under the compose spec and has what a GPU host needs (no engine needed).

The compose spec's JSON schema is the one docker-compose 1.29.2 (the last Python implementation of the
spec, on PyPI) validates with; its file is taken from that wheel, not copied here. Validation is what
``docker compose config`` does before it runs anything: the YAML (anchors and ``<<`` merges resolved)
against the schema, then the references the schema cannot express.
"""

from __future__ import annotations

import json
import re
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
    assert re.fullmatch(r"redis://:\$\{SAEJOBS_REDIS_PASSWORD:\?[^}]+\}@redis:6379/0",
                        worker["environment"]["SAEJOBS_BROKER"])


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution, the forms this file uses: ``${VAR:?message}`` (required: an error
    when unset or empty), ``${VAR:-default}``, ``${VAR}``, ``$$`` for a literal ``$``."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if op == ":?" and not env.get(name):
            raise KeyError(f"required variable {name} is missing a value: {arg}")
        return env.get(name) or (arg if op == ":-" else "")
    return re.sub(r"\$\$|\$\{(\w+)(?:(:\?|:-)([^}]*))?\}", one, value)


def test_no_password_is_baked_in_redis_asks_for_one_and_flower_for_basic_auth():
    """Redis runs with requirepass, every broker URL carries it, Flower is on 127.0.0.1 behind basic auth;
    each secret comes from a required variable with no default, so compose refuses to start without them."""
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = spec["services"]
    with pytest.raises(KeyError, match="SAEJOBS_REDIS_PASSWORD"):
        interpolate(services, {})
    with pytest.raises(KeyError, match="SAEJOBS_FLOWER_AUTH"):
        interpolate(services, {"SAEJOBS_REDIS_PASSWORD": "p"})
    env = {"SAEJOBS_REDIS_PASSWORD": "0f1e2d3c4b5a", "SAEJOBS_FLOWER_AUTH": "admin:9a8b7c"}
    up = interpolate(services, env)

    redis_cmd = up["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--requirepass") + 1] == "0f1e2d3c4b5a"
    assert up["redis"]["environment"]["REDISCLI_AUTH"] == "0f1e2d3c4b5a"  # the healthcheck authenticates
    assert "PONG" in " ".join(up["redis"]["healthcheck"]["test"])  # and only an accepted password is healthy
    assert up["redis"]["ports"] == ["127.0.0.1:6379:6379"]
    for name in ("downloads", "worker-gpu0"):
        assert up[name]["environment"]["SAEJOBS_BROKER"] == "redis://:0f1e2d3c4b5a@redis:6379/0"
    flower = up["flower"]
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == "admin:9a8b7c"
    assert flower["environment"]["CELERY_BROKER_URL"] == "redis://:0f1e2d3c4b5a@redis:6379/0"
    assert not any("redis://" in part for part in flower["command"])  # not in its argv (ps, logs)
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{SAEJOBS_(REDIS_PASSWORD|FLOWER_AUTH):-", text)  # never a default


def test_each_worker_container_is_named_and_the_workers_take_no_remote_control():
    spec = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    workers = {n: s for n, s in spec["services"].items() if s.get("command", [None])[0] == "worker"}
    assert set(workers) == {"downloads", "worker-gpu0"}
    assert len({s["hostname"] for s in workers.values()}) == len(workers)
    for s in workers.values():
        assert "SAEJOBS_HOST" in s["environment"]
        assert s["environment"].get("SAEJOBS_REMOTE_CONTROL", "0") in ("0", "")  # the default: off
