"""The Kubernetes manifests under deploy/kubernetes/ validated against the Kubernetes OpenAPI schema
(``kubernetes-validate``, which ships the schemas: offline), and the Grafana dashboard checked structurally against
the server's real metric names."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from slimsplit.server.metrics import ServerMetrics

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "slimsplit.json"
K8S_VERSION = "1.30.0"
# CRDs (ServiceMonitor) are not in the core schema.
CORE_ONLY = {"servicemonitor.yaml"}


def _docs() -> list[tuple[str, dict[str, object]]]:
    out: list[tuple[str, dict[str, object]]] = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name in CORE_ONLY or path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((str(path.relative_to(ROOT)), doc))
    return out


@pytest.mark.parametrize(("name", "doc"), _docs(), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_matches_kubernetes_schema(name: str, doc: dict[str, object]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) not installed")
    kv.validate(doc, K8S_VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate (dev extra) not installed")
    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    doc["spec"]["replicas"] = "three"
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_configmap_sets_a_max_connection_age() -> None:
    import tomllib

    cm = yaml.safe_load((K8S / "configmap.yaml").read_text())
    grpc = tomllib.loads(cm["data"]["server.toml"])["grpc"]
    assert 0 < grpc["max_connection_age_s"] <= 900, "round_robin clients rebalance only on reconnect"


def _metric_names() -> set[str]:
    metrics = ServerMetrics()
    names: set[str] = set()
    for family in metrics.registry.collect():
        names.update(s.name for s in family.samples)
        names.add(family.name)
        names.update(f"{family.name}{sfx}" for sfx in ("_total", "_bucket", "_sum", "_count"))
    return names


def test_dashboard_is_valid_and_uses_real_metric_names() -> None:
    dash = json.loads(DASHBOARD.read_text())
    panels = dash["panels"]
    assert len(panels) >= 5
    known = _metric_names()
    seen: set[str] = set()
    for panel in panels:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b(slimsplit_[a-z_]+|process_[a-z_]+)\b", target["expr"]):
                seen.add(name)
                assert name in known, f"{panel['title']}: {name} is not a server metric"
    for needed in (
        "slimsplit_frames_total",
        "slimsplit_in_flight",
        "slimsplit_batch_size_sum",
        "slimsplit_frame_latency_seconds_bucket",
        "slimsplit_device_bytes_total",
    ):
        assert needed in seen
