"""The Kubernetes manifests in deploy/kubernetes/: valid against the Kubernetes API schemas,
wired together (selectors, ports, Secrets, volumes), and the PrometheusRule in sync with the
shipped rule files.

Core kinds (Deployment, Service, PodDisruptionBudget, PersistentVolumeClaim, Secret) are
validated by `kubernetes-validate` (the API's OpenAPI schemas, strict: unknown fields fail)
for the oldest and the newest Kubernetes version it knows. It has no schemas for the
Prometheus Operator's custom resources, so PodMonitor and PrometheusRule are checked against
the schema below, written from the operator's API reference (monitoring.coreos.com/v1) for
the fields the manifests use, unknown fields refused; and the PrometheusRule's groups go
through `promtool check rules`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from dashboards import ROOT, RULES_DIR, rule_groups

DEPLOY = ROOT / "deploy" / "kubernetes"
GENERATOR = DEPLOY / "generate_prometheusrule.py"
KUBERNETES_VERSIONS = ("1.25.0", "1.37.0")
CORE_KINDS = {"Deployment", "Service", "PodDisruptionBudget", "PersistentVolumeClaim", "Secret", "Ingress"}
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "labels": LABELS, "annotations": LABELS},
    "additionalProperties": False,
}
SELECTOR = {"type": "object", "properties": {"matchLabels": LABELS}, "additionalProperties": False}


def custom_resource(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
        "additionalProperties": False,
    }


CUSTOM_SCHEMAS: dict[str, dict[str, Any]] = {
    "PodMonitor": custom_resource(
        "PodMonitor",
        {
            "type": "object",
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": SELECTOR,
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": DURATION},
                        },
                        "additionalProperties": False,
                    },
                },
            },
            "additionalProperties": False,
        },
    ),
    "PrometheusRule": custom_resource(
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": {"type": "string", "pattern": DURATION},
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": {"type": "string", "pattern": DURATION},
                                        "labels": LABELS,
                                        "annotations": LABELS,
                                    },
                                    "additionalProperties": False,
                                },
                            },
                        },
                        "additionalProperties": False,
                    },
                }
            },
            "additionalProperties": False,
        },
    ),
}


def manifests() -> dict[Path, dict[str, Any]]:
    """Every Kubernetes object under deploy/kubernetes/ (kustomizations aside), by file."""
    found = {}
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            found[path] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return found


def setup(name: str) -> dict[str, dict[str, Any]]:
    """The objects `kubectl apply -k deploy/kubernetes/<name>` creates, by kind."""
    objects: dict[str, dict[str, Any]] = {}
    for path in kustomized(DEPLOY / name):
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["kind"] not in objects, f"{name}: two {document['kind']} objects"
        objects[document["kind"]] = document
    return objects


def kustomized(directory: Path) -> list[Path]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    paths: list[Path] = []
    for resource in kustomization["resources"]:
        target = (directory / resource).resolve()
        assert target.exists(), f"{directory.name}/kustomization.yaml: {resource} does not exist"
        paths += kustomized(target) if target.is_dir() else [target]
    return paths


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def environment(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container(deployment)["env"]}


# -- schemas ---------------------------------------------------------------------------------


def test_there_are_manifests_of_every_kind_the_setups_need() -> None:
    kinds = {document["kind"] for document in manifests().values()}
    assert kinds == CORE_KINDS | set(CUSTOM_SCHEMAS)
    applied = {path for name in ("ha", "single", "webhooks") for path in kustomized(DEPLOY / name)}
    unused = {path.name for path in manifests() if path not in applied}
    assert unused == {"secret.example.yaml"}, f"manifests no kustomization applies: {unused}"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_core_manifests_are_valid_against_the_kubernetes_api(version: str) -> None:
    checked = 0
    for document in manifests().values():
        if document["kind"] in CORE_KINDS:
            kubernetes_validate.validate(document, version, strict=True)
            checked += 1
    assert checked >= 8


def test_the_validator_refuses_an_unknown_field() -> None:
    """The check above can fail: strict validation rejects a misspelt field."""
    deployment = setup("ha")["Deployment"]
    container(deployment)["livenesProbe"] = container(deployment).pop("livenessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[-1], strict=True)


def test_custom_resources_are_valid_against_their_schema() -> None:
    for document in manifests().values():
        if document["kind"] in CUSTOM_SCHEMAS:
            jsonschema.validate(document, CUSTOM_SCHEMAS[document["kind"]])
    broken = setup("ha")["PodMonitor"]
    broken["spec"]["podMetricsEndpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, CUSTOM_SCHEMAS["PodMonitor"])


# -- the PrometheusRule ----------------------------------------------------------------------


def test_the_prometheusrule_is_generated_from_the_shipped_rules() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    rule = setup("ha")["PrometheusRule"]
    assert rule["spec"]["groups"] == rule_groups()


def test_the_prometheusrule_holds_the_slo_rules() -> None:
    names = [group["name"] for group in setup("ha")["PrometheusRule"]["spec"]["groups"]]
    for kind in ("sli-recordings", "meta-recordings", "alerts"):
        assert f"sloth-slo-{kind}-bem-calls-availability" in names


def test_the_prometheusrule_groups_pass_promtool(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": setup("ha")["PrometheusRule"]["spec"]["groups"]}), encoding="utf-8")
    binary = shutil.which("promtool") or "/usr/bin/promtool"
    result = subprocess.run([binary, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list(RULES_DIR.glob("*.yaml"))) >= 2


# -- wiring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ha", "single"])
def test_selectors_ports_and_probes_agree(name: str) -> None:
    objects = setup(name)
    deployment = objects["Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "PodMonitor"):
        if kind not in objects:
            continue
        spec = objects[kind]["spec"]
        selector = spec["selector"].get("matchLabels", spec["selector"])
        assert selector.items() <= pod_labels.items(), f"{name}: the {kind} selects no pod of the Deployment"
    port = container(deployment)["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http-metrics", 9877)
    assert environment(deployment)["BEM_LISTEN"]["value"].endswith(":9877")
    assert objects["Service"]["spec"]["ports"][0]["targetPort"] == "http-metrics"
    monitor = objects["PodMonitor"]["spec"]
    assert monitor["podMetricsEndpoints"][0]["port"] == "http-metrics"
    assert pod_labels[monitor["jobLabel"]] == "bem-exporter", "the shipped alerts expect job=bem-exporter"
    probes = container(deployment)
    assert probes["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert probes["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert {"requests", "limits"} <= set(container(deployment)["resources"])


@pytest.mark.parametrize("name", ["ha", "single"])
def test_secrets_come_from_the_secret_and_match_its_example(name: str) -> None:
    deployment = setup(name)["Deployment"]
    example = yaml.safe_load((DEPLOY / name / "secret.example.yaml").read_text(encoding="utf-8"))
    assert "Secret" not in setup(name), "real secrets are created by hand, never applied from the repository"
    keys = set(example["stringData"])
    pod = deployment["spec"]["template"]["spec"]
    volume = next(volume for volume in pod["volumes"] if "secret" in volume)
    assert volume["secret"]["secretName"] == example["metadata"]["name"]
    mounted = {item["key"] for item in volume["secret"]["items"]}
    assert mounted <= keys
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == volume["name"])
    env = environment(deployment)
    assert env["BEM_API_KEY_FILE"]["value"] == f"{mount['mountPath']}/api-key"
    assert "BEM_API_KEY" not in env
    for entry in env.values():
        reference = entry.get("valueFrom", {}).get("secretKeyRef")
        if reference:
            assert reference["name"] == example["metadata"]["name"] and reference["key"] in keys


def test_the_ha_setup_runs_two_replicas_on_postgresql() -> None:
    objects = setup("ha")
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    env = environment(deployment)
    assert env["BEM_STATE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "state-url"
    assert env["BEM_STATE_PATH"]["value"] == "", "the image's SQLite default must not apply"
    assert env["BEM_STATE_PASSWORD_FILE"]["value"].endswith("/state-password")
    assert re.fullmatch(r"\d+s", env["BEM_LEADER_LEASE"]["value"])
    assert objects["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert "kubernetes.io/hostname" in {constraint["topologyKey"] for constraint in spread}
    assert "PersistentVolumeClaim" not in objects


def test_the_single_setup_runs_one_replica_on_a_volume() -> None:
    objects = setup("single")
    deployment = objects["Deployment"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}, "two pods must never share the SQLite file"
    pod = deployment["spec"]["template"]["spec"]
    claim = next(volume for volume in pod["volumes"] if "persistentVolumeClaim" in volume)
    assert claim["persistentVolumeClaim"]["claimName"] == objects["PersistentVolumeClaim"]["metadata"]["name"]
    mount = next(m for m in container(deployment)["volumeMounts"] if m["name"] == claim["name"])
    state_path = environment(deployment)["BEM_STATE_PATH"]["value"]
    assert Path(state_path).parent == Path(mount["mountPath"])
    assert "BEM_STATE_URL" not in environment(deployment)
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


def test_the_webhook_listener_is_exposed_alone_through_its_own_service_and_ingress() -> None:
    deployment = setup("ha")["Deployment"]
    exposed = setup("webhooks")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    ports = {port["name"]: port["containerPort"] for port in container(deployment)["ports"]}
    env = environment(deployment)
    assert env["BEM_WEBHOOK_LISTEN"]["value"] == f"0.0.0.0:{ports['http-webhooks']}"
    assert env["BEM_WEBHOOK_SECRET_FILE"]["value"] == "/run/secrets/bem-exporter/webhook-secret"
    assert "BEM_WEBHOOK_SECRET" not in env and "BEM_WEBHOOK_ALLOW_UNSIGNED" not in env
    items = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if "secret" in v)["secret"]["items"]
    assert {"key": "webhook-secret", "path": "webhook-secret"} in items
    service = exposed["Service"]
    assert service["metadata"]["name"] != setup("ha")["Service"]["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http-webhooks"]
    rules = exposed["Ingress"]["spec"]["rules"]
    paths = [path for rule in rules for path in rule["http"]["paths"]]
    assert [(path["path"], path["pathType"]) for path in paths] == [("/webhook", "Exact")]
    backend = paths[0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http-webhooks"}}
    assert exposed["Ingress"]["spec"]["tls"], "bem posts to an https:// URL"


@pytest.mark.parametrize("name", ["ha", "single"])
def test_pods_run_locked_down(name: str) -> None:
    deployment = setup(name)["Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    security = container(deployment)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
