"""docker-compose.yaml, the Dockerfiles and the RunPod start script, checked without a Docker engine: parsed, with
Compose's variable interpolation applied the way `docker compose config` does."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yaml"
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[-?])([^}]*))?\}")


class MissingVariable(Exception):
    pass


def interpolate(value, env):
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?error}` and `${VAR?error}`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match):
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        empty = current is None or (op and op.startswith(":") and current == "")
        if op in (":?", "?") and empty:
            raise MissingVariable(f"{name}: {arg}")
        if op in (":-", "-") and empty:
            return arg
        return current or ""

    return VARIABLE.sub(one, value)


@pytest.fixture
def compose():
    return yaml.safe_load(COMPOSE.read_text())


ENV = {"REDIS_PASSWORD": "pw-from-env", "ALIGNLAB_DASHBOARD_PASSWORD": "dash-from-env"}


def test_services_volumes_healthchecks_and_restart_policies(compose):
    config = interpolate(compose, ENV)
    services = config["services"]
    assert set(services) == {"redis", "dashboard", "recorder", "worker"}
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    assert set(config["volumes"]) == {"redis-data", "alignlab-data"}
    assert "redis-data:/data" in services["redis"]["volumes"]
    for name in ("dashboard", "recorder", "worker"):
        assert "alignlab-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["REDIS_URL"] == "redis://:pw-from-env@redis:6379/0", name
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name
    assert services["recorder"]["healthcheck"]["test"][-2:] == ["workers.health", "recorder"]
    assert services["worker"]["healthcheck"]["test"][-2:] == ["workers.health", "worker"]


def test_redis_cannot_start_without_a_password_and_keeps_an_append_only_file(compose):
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        interpolate(compose["services"]["redis"], {})
    with pytest.raises(MissingVariable, match="REDIS_PASSWORD"):
        interpolate(compose["services"]["redis"], {"REDIS_PASSWORD": ""})
    command = interpolate(compose["services"]["redis"], ENV)["command"]
    assert command[command.index("--requirepass") + 1] == "pw-from-env"
    assert command[command.index("--appendonly") + 1] == "yes"


def test_ports_bind_loopback_and_the_dashboard_requires_a_login(compose):
    config = interpolate(compose, ENV)
    published = [p for s in config["services"].values() for p in s.get("ports", [])]
    assert published and all(p.startswith("127.0.0.1:") for p in published)
    assert config["services"]["dashboard"]["environment"]["ALIGNLAB_DASHBOARD_PASSWORD"] == "dash-from-env"
    with pytest.raises(MissingVariable, match="ALIGNLAB_DASHBOARD_PASSWORD"):
        interpolate(compose["services"]["dashboard"], {"REDIS_PASSWORD": "x"})


def test_the_worker_reserves_a_gpu_and_gets_tokens_only_from_the_environment(compose):
    worker = interpolate(compose, ENV)["services"]["worker"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert worker["environment"]["HF_TOKEN"] == ""  # unset in the environment: empty, never a literal in the file
    assert worker["stop_grace_period"] == "30s"
    raw = yaml.safe_load(COMPOSE.read_text())
    secrets = {
        f"{name}.{key}": value
        for name, service in raw["services"].items()
        for key, value in (service.get("environment") or {}).items()
        if re.search(r"PASSWORD|TOKEN|KEY|AUTH", key)
    }
    secrets["redis.requirepass"] = raw["services"]["redis"]["command"][2]
    assert secrets and all(re.fullmatch(r"\$\{[A-Z_]+[^}]*\}", v) for v in secrets.values()), secrets


def test_dockerfiles_copy_what_exists_and_keep_the_worker_torch():
    for name in ("app.Dockerfile", "worker.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        for line in text.splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    assert (ROOT / source).exists(), f"{name}: COPY {source} does not exist"
    app = (ROOT / "docker" / "app.Dockerfile").read_text()
    worker = (ROOT / "docker" / "worker.Dockerfile").read_text()
    assert "'.[cpu,postgres]'" in app and "server.address=0.0.0.0" in app
    base = next(line for line in worker.splitlines() if line.startswith("FROM "))
    assert "cuda" in base and "'.[gpu,postgres]'" in worker and "[cpu" not in worker


def test_runpod_start_script_is_valid_bash_and_refuses_to_start_without_redis_url(tmp_path):
    script = ROOT / "scripts" / "runpod_start.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    out = subprocess.run(
        ["bash", str(script)],
        env={"PATH": "/usr/bin:/bin", "ALIGNLAB_VOLUME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and "REDIS_URL" in out.stderr
