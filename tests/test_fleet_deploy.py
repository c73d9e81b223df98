"""The fleet packaging agrees with the code: the flags the container, compose file and Kubernetes manifests pass
exist, the probes and scrape annotations use the ports the server opens, and the Grafana dashboard and the
autoscaler ask only for metrics the cloud (or the edge) exports."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import yaml

from icmh.cloud.cli import build_parser
from icmh.cloud.metrics import CloudMetrics
from icmh.edge.metrics import EdgeMetrics

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported_samples() -> set[str]:
    names = set()
    for registry in (CloudMetrics().registry, EdgeMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def entrypoint() -> list[str]:
    text = (DEPLOY.parent / "Dockerfile").read_text().replace("\\\n", " ")
    return json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M).group(1))


def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") != "Kustomization":
                found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def test_container_compose_and_kubernetes_flags_are_cloud_server_flags() -> None:
    command = entrypoint()
    assert command[0] == "icmh-cloud"
    args = build_parser().parse_args(command[1:])
    assert (args.listen, args.metrics_port) == ("0.0.0.0:50051", 9102)
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    cloud = compose["services"]["cloud"]
    parsed = build_parser().parse_args(command[1:] + cloud["command"])
    assert parsed.cameras_file and parsed.operators_file and parsed.detections_jsonl
    for url in shlex.split(cloud["environment"]["ICMH_PUBLISH"]):
        assert url.split("://")[0] in ("mqtt", "nats")
    assert cloud["environment"]["ICMH_INDEX"].startswith("postgresql://")
    for source in ("cameras", "operators"):
        assert (DEPLOY / compose["configs"][source]["file"]).exists()
    replicas = [build_parser().parse_args(command[1:] + compose["services"][name]["command"])
                for name in ("cloud", "cloud-1")]  # the second replica (profile "replicas") shares the index
    assert [r.replica_id for r in replicas] == ["cloud-0", "cloud-1"]
    assert len({r.advertise_address for r in replicas}) == 2 and compose["services"]["cloud-1"]["profiles"]
    assert compose["services"]["cloud-1"]["environment"]["ICMH_INDEX"] == cloud["environment"]["ICMH_INDEX"]
    assert "ICMH_REPLICA_TOKEN" in cloud["environment"]
    [container] = manifests()[("StatefulSet", "icmh-cloud")]["spec"]["template"]["spec"]["containers"]
    build_parser().parse_args(command[1:] + container["args"])


def test_kubernetes_probes_ports_and_resources_match_the_server() -> None:
    found = manifests()
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (DEPLOY / "k8s" / resource).exists(), resource
    template = found[("StatefulSet", "icmh-cloud")]["spec"]["template"]
    [container] = template["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9102}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == ports["grpc"]  # grpc.health.v1
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == ports["metrics"]
    service_ports = {p["name"]: p["targetPort"] for p in found[("Service", "icmh-cloud")]["spec"]["ports"]}
    assert set(service_ports.values()) <= set(ports)
    secret_keys = {i["key"] for i in template["spec"]["volumes"][1]["secret"]["items"]}
    secrets = [yaml.safe_load((DEPLOY / "k8s" / name).read_text()) for name in ("secret.example.yaml",
                                                                                 "dev/secret.yaml")]
    for secret in secrets:  # the example and the test cluster's hold what the pod reads
        assert secret_keys | {"ICMH_INDEX", "PGPASSWORD"} <= set(secret["stringData"])
    [metric] = found[("HorizontalPodAutoscaler", "icmh-cloud")]["spec"]["metrics"]
    assert metric["pods"]["metric"]["name"] in exported_samples()


def test_grafana_dashboard_asks_for_exported_metrics_only() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "icmh-cloud.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bicmh_[a-z_]+", expr)}
    assert len(exprs) >= 20 and used and used <= exported_samples(), used - exported_samples()
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
