"""Kubernetes manifests: every kustomization renders with the real kustomize, and every
rendered object validates offline against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail) or, for the CRD kinds, against the checked-in CRD schemas."""

from __future__ import annotations

import copy
import json
import pathlib

import jsonschema
import kubernetes_validate
import pytest
import yaml

from streamweights.config import load_config
from tests.deploy.tools import K8S, OVERLAYS, render, run_tool

#: The Kubernetes version whose schemas the objects are checked against (a current
#: release; kubernetes-validate ships the schemas of 1.25 to 1.37).
KUBERNETES_VERSION = "1.34.0"
CRD_SCHEMAS = {
    (schema["properties"]["apiVersion"]["const"], schema["properties"]["kind"]["const"]): schema
    for schema in (json.loads(path.read_text()) for path in
                   sorted((pathlib.Path(__file__).parent / "crd_schemas").glob("*.json")))}
#: What a pod gets from the downward API and the StatefulSet's env.
POD_ENVIRONMENT = {"POD_NAME": "streamweights-0", "KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}


def validate(document: dict) -> None:
    """Raise if the object does not match its schema (Kubernetes' own or a CRD's)."""
    key = (document["apiVersion"], document["kind"])
    if key in CRD_SCHEMAS:
        jsonschema.Draft7Validator(CRD_SCHEMAS[key]).validate(document)
    else:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _by_kind(documents: list[dict], kind: str) -> list[dict]:
    return [d for d in documents if d["kind"] == kind]


def _one(documents: list[dict], kind: str, name: str) -> dict:
    found = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(name) for name in OVERLAYS}


@pytest.mark.parametrize("name", OVERLAYS)
def test_every_rendered_object_validates(rendered, name):
    """Scenario: render k8s/<name> with kustomize and check each object.
    We expect: every object validates (strict) against Kubernetes 1.34's schemas or its
    CRD's schema; none is of a kind we have no schema for."""
    assert rendered[name], f"k8s/{name} rendered nothing"
    for document in rendered[name]:
        try:
            validate(document)
        except (kubernetes_validate.utils.ValidationError, jsonschema.ValidationError) as error:
            pytest.fail(f"k8s/{name}: {document['kind']}/{document['metadata']['name']}: {error}")


def test_validation_rejects_a_misspelt_field_and_a_wrong_type(rendered):
    """The validators are strict: a typo or a wrong type in a manifest fails CI."""
    statefulset = _one(rendered["base"], "StatefulSet", "streamweights")
    typo = copy.deepcopy(statefulset)
    typo["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        validate(typo)
    wrong = copy.deepcopy(statefulset)
    wrong["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.utils.ValidationError):
        validate(wrong)
    scaled = copy.deepcopy(_one(rendered["overlays/prod"], "ScaledObject", "streamweights"))
    del scaled["spec"]["triggers"]
    with pytest.raises(jsonschema.ValidationError):
        validate(scaled)
    monitor = copy.deepcopy(_one(rendered["overlays/prod"], "ServiceMonitor", "streamweights"))
    monitor["spec"]["endpoints"][0]["interval"] = "15 seconds"
    with pytest.raises(jsonschema.ValidationError):
        validate(monitor)


def test_base_applies_without_crds_and_prod_brings_monitoring_and_keda(rendered):
    """What needs the Prometheus Operator or KEDA lives in components, so the base (and
    the dev overlay) apply on a bare cluster."""
    bare = {"v1", "apps/v1", "policy/v1", "batch/v1", "networking.k8s.io/v1"}
    for name in ("base", "overlays/dev"):
        versions = {d["apiVersion"] for d in rendered[name]}
        assert versions <= bare, f"k8s/{name} needs CRDs: {versions - bare}"
    kinds = {d["kind"] for d in rendered["overlays/prod"]}
    assert {"ServiceMonitor", "PrometheusRule", "ScaledObject"} <= kinds


def test_the_workload_is_hardened_and_probed(rendered):
    """Non-root, read-only root, no capabilities, resources, /healthz and /readyz probes,
    a PodDisruptionBudget, in every overlay."""
    for name, documents in rendered.items():
        statefulset = _one(documents, "StatefulSet", "streamweights")
        pod = statefulset["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        container = next(c for c in pod["containers"] if c["name"] == "streamweights")
        assert container["securityContext"]["readOnlyRootFilesystem"] is True, name
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        env = {e["name"]: e for e in container["env"]}
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", name
        assert env["OPENBLAS_CORETYPE"]["value"], name   # same rounding on every node
        assert _by_kind(documents, "PodDisruptionBudget"), name
        service = _one(documents, "Service", "streamweights")
        assert statefulset["spec"]["serviceName"] == service["metadata"]["name"]


def test_only_prometheus_and_the_namespace_reach_the_http_port(rendered):
    """Every overlay carries the base's NetworkPolicy: it selects the service's pods,
    restricts ingress (not egress: the brokers), and admits on the http port only pods
    of the same namespace and Prometheus pods of the monitoring namespace."""
    for name, documents in rendered.items():
        policy = _one(documents, "NetworkPolicy", "streamweights")
        spec = policy["spec"]
        statefulset = _one(documents, "StatefulSet", "streamweights")
        pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items(), name
        assert spec["policyTypes"] == ["Ingress"], name
        (rule,) = spec["ingress"]
        assert rule["ports"] == [{"port": "http", "protocol": "TCP"}], name
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        assert {p["name"] for p in container["ports"]} == {"http"}, name
        peers = rule["from"]
        assert {"podSelector": {}} in peers, name
        assert {"namespaceSelector": {"matchLabels": {
                    "kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
                } in peers, name
        assert len(peers) == 2, name   # nothing else: no ipBlock, no bare namespaceSelector


def test_the_http_token_comes_from_an_optional_secret(rendered):
    """/v1's bearer token reaches the pod from the Secret streamweights-http-token when
    it exists (optional: the pods start without it), never as a literal value."""
    for name, documents in rendered.items():
        container = _one(documents, "StatefulSet", "streamweights")["spec"]["template"][
            "spec"]["containers"][0]
        env = {e["name"]: e for e in container["env"]}
        token = env["STREAMWEIGHTS_HTTP_TOKEN"]
        assert "value" not in token, name
        assert token["valueFrom"]["secretKeyRef"] == {
            "name": "streamweights-http-token", "key": "token", "optional": True}, name


def _service_config(documents: list[dict], environment: dict[str, str], tmp_path) -> object:
    statefulset = _one(documents, "StatefulSet", "streamweights")
    volume = next(v for v in statefulset["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "config")
    config_map = _one(documents, "ConfigMap", volume["configMap"]["name"])
    path = tmp_path / "config.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    return load_config(path, environ=environment)


@pytest.mark.parametrize("name", OVERLAYS)
def test_the_mounted_config_validates_and_uses_the_pod_name(rendered, name, tmp_path):
    """The ConfigMap the StatefulSet mounts is a valid streamweights config once the pod's
    environment fills it in; the pod name becomes the static-membership id and the
    transactional id, so both survive a restart of the same pod."""
    config = _service_config(rendered[name], POD_ENVIRONMENT, tmp_path)
    assert config.kafka is not None and config.source.kind == "kafka"
    assert config.kafka.bootstrap_servers == "kafka:9092"
    assert config.kafka.client["group_instance_id"] == "streamweights-0"
    assert config.kafka.transactional_id == "streamweights-streamweights-0"
    assert config.http_host == "0.0.0.0"
    container = _one(rendered[name], "StatefulSet", "streamweights")["spec"]["template"][
        "spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == config.http_port


def test_replicas_never_exceed_partitions(rendered, tmp_path):
    """A replica beyond the partition count owns no task: prod's replicas and KEDA's
    maximum stay at or below kafka.partitions; scale-down waits 30 minutes."""
    documents = rendered["overlays/prod"]
    config = _service_config(documents, POD_ENVIRONMENT, tmp_path)
    statefulset = _one(documents, "StatefulSet", "streamweights")
    scaled = _one(documents, "ScaledObject", "streamweights")
    assert 1 < statefulset["spec"]["replicas"] <= config.kafka.partitions
    assert scaled["spec"]["maxReplicaCount"] <= config.kafka.partitions
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                "name": statefulset["metadata"]["name"]}
    behavior = scaled["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 1800
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["metadata"]["consumerGroup"] == config.kafka.group_id
    assert trigger["metadata"]["topic"] == config.kafka.predictions_topic
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["preferredDuringSchedulingIgnoredDuringExecution"]


def test_dev_overlay_brings_kafka_producer_prometheus_and_grafana(rendered):
    documents = rendered["overlays/dev"]
    assert _one(documents, "StatefulSet", "streamweights")["spec"]["replicas"] == 1
    kafka = _one(documents, "StatefulSet", "kafka")
    assert kafka["spec"]["replicas"] == 1
    assert kafka["spec"]["template"]["spec"]["enableServiceLinks"] is False
    env = {e["name"]: e["value"] for e in kafka["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"   # KRaft, no ZooKeeper
    job = _one(documents, "Job", "streamweights-demo-producer")
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == _one(documents, "StatefulSet", "streamweights")["spec"]["template"][
        "spec"]["containers"][0]["image"]
    for name in ("prometheus", "grafana"):
        _one(documents, "Deployment", name)
    dashboards = next(d for d in documents if d["kind"] == "ConfigMap"
                      and d["metadata"]["name"].startswith("grafana-dashboards"))
    assert json.loads(dashboards["data"]["streamweights-dashboard.json"])["uid"] == "streamweights"
    rules = next(d for d in documents if d["kind"] == "ConfigMap"
                 and d["metadata"]["name"].startswith("prometheus-config"))
    assert rules["data"]["streamweights.rules.yml"] == (
        K8S / "prometheus" / "streamweights.rules.yml").read_text()
    assert {d["metadata"].get("namespace") for d in documents
            if d["kind"] != "Namespace"} == {"streamweights-dev"}


def test_dev_prometheus_config_passes_promtool():
    """The dev Prometheus's config (and the rules file it loads) is valid."""
    result = run_tool("promtool", "check", "config", "prometheus.yml", cwd=K8S / "prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr
    document = yaml.safe_load((K8S / "prometheus" / "prometheus.yml").read_text())
    assert document["scrape_configs"][0]["job_name"] == "streamweights"
