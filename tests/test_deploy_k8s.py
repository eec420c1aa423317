"""The Kubernetes manifests (deploy/k8s/), checked offline: every overlay is rendered by
`kubectl kustomize`, validated strictly against the Kubernetes 1.37 schemas, and held to the
deployment's policies and to the service's own settings."""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from dataclasses import dataclass

import kubernetes_validate
import pytest
import yaml

from service.metrics import Metrics
from service.server import LIVENESS, SERVICE_NAME
from tests.deploy_checks import (
    DEPLOY,
    SETTING_FLAGS,
    SHUTDOWN_MARGIN_SECONDS,
    image_pinned,
    image_tag,
    kustomize,
    project_version,
    read_dockerfile,
    settings_from_env,
    unknown_settings,
)
from tests.helpers import promtool

K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
KUBERNETES_VERSION = "1.37.0"
# no schema in kubernetes-validate: test_service_monitors and test_the_grpc_port_serves_tls_from_a_cert_manager_certificate
# check them
CRD_KINDS = {"ServiceMonitor", "Certificate"}
GPU = "nvidia.com/gpu"


@dataclass
class Rendered:
    overlay: str
    docs: list[dict]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def get(self, kind: str, name: str) -> dict:
        (found,) = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        return found

    def pods(self) -> list[tuple[str, dict]]:
        return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in self.of_kind("Deployment")]

    def containers(self, init: bool = True) -> list[tuple[str, dict, dict]]:
        """(deployment, pod spec, container) for every container (init containers too)."""
        return [(name, pod, c) for name, pod in self.pods()
                for c in pod["containers"] + (pod.get("initContainers", []) if init else [])]

    @property
    def frontend(self) -> dict:
        return self.get("Deployment", "sdedit")["spec"]["template"]["spec"]["containers"][0]

    def frontend_env(self) -> dict[str, str]:
        """The front-end's environment: its ConfigMap, then its own env (Secrets as a placeholder)."""
        env: dict[str, str] = {}
        for source in self.frontend.get("envFrom", []):
            env.update(self.get("ConfigMap", source["configMapRef"]["name"])["data"])
        for var in self.frontend.get("env", []):
            env[var["name"]] = var.get("value", "from-a-secret")
        return env


@functools.cache
def render(overlay: str) -> Rendered:
    return Rendered(overlay, [d for d in yaml.safe_load_all(kustomize(K8S / "overlays" / overlay)) if d])


@pytest.fixture(params=OVERLAYS)
def rendered(request) -> Rendered:
    return copy.deepcopy(render(request.param))


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def pod_labels(rendered: Rendered, deployment: str) -> dict:
    return rendered.get("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


# --- rendering and schemas ------------------------------------------------------------------------

def test_the_overlays_are_the_ones_documented():
    assert sorted(p.name for p in (K8S / "overlays").iterdir()) == sorted(OVERLAYS)


def test_every_overlay_renders_and_validates_strictly_against_kubernetes_schemas(rendered):
    kinds = {d["kind"] for d in rendered.docs}
    assert {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "ServiceMonitor", "NetworkPolicy"} <= kinds
    for doc in rendered.docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # raises ValidationError on a bad or unknown field, SchemaNotFoundError on an unknown kind
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_everything_lands_in_one_namespace(rendered):
    for doc in rendered.docs:
        if doc["kind"] == "Namespace":
            assert doc["metadata"]["name"] == "sdedit"
        else:
            assert doc["metadata"].get("namespace") == "sdedit", f"{doc['kind']}/{doc['metadata']['name']}"


def test_the_validation_is_strict_enough_to_catch_a_typo():
    deployment = render("cpu").get("Deployment", "sdedit")
    container = copy.deepcopy(deployment)
    container["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 50051}}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(container, KUBERNETES_VERSION, strict=True)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong_type, KUBERNETES_VERSION, strict=True)


SERVICE_MONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel", "targetLabels", "podTargetLabels",
                        "sampleLimit", "targetLimit", "labelLimit", "attachMetadata"}
SERVICE_MONITOR_ENDPOINT = {"port", "targetPort", "path", "scheme", "params", "interval", "scrapeTimeout", "honorLabels",
                            "honorTimestamps", "metricRelabelings", "relabelings", "tlsConfig", "authorization",
                            "basicAuth", "oauth2", "bearerTokenSecret", "followRedirects", "enableHttp2", "filterRunning",
                            "proxyUrl", "trackTimestampsStaleness"}
DURATION = re.compile(r"^(\d+(ms|s|m|h))+$")


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", duration))


def test_service_monitors_select_one_service_and_name_its_port(rendered):
    """No schema for this CRD offline: its required fields, its known fields, and its target."""
    monitors = rendered.of_kind("ServiceMonitor")
    assert {m["metadata"]["name"] for m in monitors} == ({"sdedit", "triton"} if rendered.overlay == "gpu" else {"sdedit"})
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["namespace"] == "sdedit"
        spec = monitor["spec"]
        assert set(spec) <= SERVICE_MONITOR_SPEC, set(spec) - SERVICE_MONITOR_SPEC
        services = [s for s in rendered.of_kind("Service") if selects(spec["selector"], s["metadata"].get("labels", {}))]
        assert len(services) == 1, f"{monitor['metadata']['name']} selects {len(services)} Services (scraped twice?)"
        port_names = {p["name"] for p in services[0]["spec"]["ports"]}
        assert spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT, set(endpoint) - SERVICE_MONITOR_ENDPOINT
            assert endpoint["port"] in port_names
            assert endpoint["path"].startswith("/")
            assert DURATION.match(endpoint["interval"]) and DURATION.match(endpoint["scrapeTimeout"])
            assert _seconds(endpoint["scrapeTimeout"]) <= _seconds(endpoint["interval"])


# --- the service's settings -------------------------------------------------------------------------

def test_every_setting_flag_and_port_named_for_the_service_exists(rendered):
    env = rendered.frontend_env()
    assert not unknown_settings(env), unknown_settings(env)
    flags = [a.split("=")[0] for a in rendered.frontend.get("args", []) + rendered.frontend.get("command", [])
             if a.startswith("--")]
    assert set(flags) <= SETTING_FLAGS, set(flags) - SETTING_FLAGS
    settings = settings_from_env(env)  # what `sdedit serve` would run with; raises on a bad value
    ports = {p["name"]: p["containerPort"] for p in rendered.frontend["ports"]}
    assert ports == {"grpc": settings.port, "http": settings.http_port, "metrics": settings.metrics_port,
                     "health": settings.health_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the plaintext health port: see below
        assert rendered.frontend[probe]["grpc"]["port"] == settings.health_port
    for service in ("sdedit", "sdedit-headless"):
        for port in rendered.get("Service", service)["spec"]["ports"]:
            assert port["targetPort"] in ports  # by name: a renamed container port breaks this, not traffic
    assert settings.backend == {"cpu": "onnx", "gpu": "triton"}[rendered.overlay]


def test_the_redis_password_comes_from_a_secret(rendered):
    for _, _, container in rendered.containers():
        for var in container.get("env", []):
            if "PASSWORD" in var["name"]:
                assert set(var) == {"name", "valueFrom"} and var["valueFrom"]["secretKeyRef"]["name"] == "sdedit-redis"
    env = rendered.frontend_env()
    assert "SDEDIT_REDIS_PASSWORD" in {v["name"] for v in rendered.frontend["env"]}
    assert settings_from_env(env).cache == "redis" and "@" not in env["SDEDIT_REDIS_URL"]  # no password in the URL
    assert not rendered.of_kind("Secret")  # created by the operator, never committed
    assert "kubectl -n sdedit create secret generic sdedit-redis --from-literal=password=" in (DEPLOY / "README.md").read_text()
    redis = rendered.get("Deployment", "redis")["spec"]["template"]["spec"]["containers"][0]
    referenced = set(re.findall(r"\$\((\w+)\)", " ".join(redis["args"])))
    assert referenced == {"REDIS_PASSWORD"} <= {v["name"] for v in redis["env"]}


def test_the_pods_outlive_the_services_drain(rendered):
    settings = settings_from_env(rendered.frontend_env())
    pod = rendered.get("Deployment", "sdedit")["spec"]["template"]["spec"]
    pre_stop = rendered.frontend["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + settings.grace_seconds + SHUTDOWN_MARGIN_SECONDS
    if rendered.overlay == "gpu":
        triton = rendered.get("Deployment", "triton")["spec"]["template"]["spec"]
        exit_timeout = next(int(a.split("=")[1]) for a in triton["containers"][0]["args"] if a.startswith("--exit-timeout-secs="))
        assert triton["terminationGracePeriodSeconds"] >= exit_timeout + SHUTDOWN_MARGIN_SECONDS


# --- probes, resources, security, images ------------------------------------------------------------

def test_probes_are_native_grpc_health_checks_with_room_to_start(rendered):
    settings = settings_from_env(rendered.frontend_env())
    probes = {name: rendered.frontend[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert all(set(p) & {"grpc", "httpGet", "exec", "tcpSocket"} == {"grpc"} for p in probes.values())
    assert probes["readinessProbe"]["grpc"]["service"] in ("", SERVICE_NAME)  # follows the backend
    assert probes["livenessProbe"]["grpc"]["service"] == LIVENESS  # does not: Triton down is no reason to restart
    assert probes["startupProbe"]["grpc"]["service"] == LIVENESS
    startup = probes["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert budget >= 120 and (settings.backend != "triton" or budget > settings.triton_startup_seconds)
    for name, _, container in rendered.containers(init=False):
        assert "readinessProbe" in container and "livenessProbe" in container, f"{name}/{container['name']}"


def test_every_container_has_requests_and_limits(rendered):
    units = {"m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}

    def amount(quantity) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(m|Ki|Mi|Gi)?", str(quantity)).groups()
        return float(number) * units.get(unit, 1)

    for name, _, container in rendered.containers():
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert amount(resources["requests"][kind]) <= amount(resources["limits"][kind]), f"{name}/{container['name']} {kind}"
    if rendered.overlay == "cpu":  # ONNX Runtime's threads fit the pod, not the node
        assert settings_from_env(rendered.frontend_env()).onnx_threads == amount(rendered.frontend["resources"]["limits"]["cpu"])


def test_every_container_runs_unprivileged_on_a_read_only_root(rendered):
    for name, pod in rendered.pods():
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
    for name, _, container in rendered.containers():
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, f"{name}/{container['name']}"
        assert security["readOnlyRootFilesystem"] is True and security["runAsNonRoot"] is True
        assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    # the service writes temporary files (HOME=/tmp in the image): an emptyDir there
    pod = rendered.get("Deployment", "sdedit")["spec"]["template"]["spec"]
    tmp = next(m for m in rendered.frontend["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    # the image's numeric USER is the pod's user: runAsNonRoot can check it
    (user,) = read_dockerfile(DEPLOY / "docker" / "Dockerfile")[-1].all("USER")
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])


def test_images_are_pinned_and_the_service_image_is_this_version(rendered):
    for name, _, container in rendered.containers():
        assert image_pinned(container["image"]), f"{name}/{container['name']}: {container['image']}"
    ours = [c["image"] for _, _, c in rendered.containers() if c["image"].split(":")[0].endswith("sdedit-service")]
    assert len(ours) == {"cpu": 1, "gpu": 2}[rendered.overlay]  # the front-end; Triton's model copier
    assert {image_tag(image) for image in ours} == {project_version()}


def test_gpus_are_requested_in_limits_and_only_by_triton(rendered):
    for name, _, container in rendered.containers():
        assert GPU not in container["resources"].get("requests", {}), f"{name}/{container['name']}"
        if container["name"] != "triton":
            assert GPU not in container["resources"]["limits"], f"{name}/{container['name']}"
    if rendered.overlay == "cpu":
        assert not any(name == "triton" for name, _ in rendered.pods())
        return
    triton = rendered.get("Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    assert triton["resources"]["limits"][GPU] == 1
    assert settings_from_env(rendered.frontend_env()).triton_url == "triton:8001"
    assert {p["name"]: p["port"] for p in rendered.get("Service", "triton")["spec"]["ports"]} == {"grpc": 8001, "metrics": 8002}
    assert {p["containerPort"] for p in triton["ports"]} >= {8001, 8002} and "--metrics-port=8002" in triton["args"]


def test_triton_serves_the_models_the_init_container_copies():
    rendered = render("gpu")
    pod = rendered.get("Deployment", "triton")["spec"]["template"]["spec"]
    (copier,) = pod["initContainers"]
    (triton,) = pod["containers"]
    repository = next(a.split("=", 1)[1] for a in triton["args"] if a.startswith("--model-repository="))
    mounted = {m["mountPath"]: m["name"] for m in triton["volumeMounts"]}
    assert mounted[repository] in {m["name"] for m in copier["volumeMounts"]}
    target = next(m["mountPath"] for m in copier["volumeMounts"] if m["name"] == mounted[repository])
    stages = read_dockerfile(DEPLOY / "docker" / "Dockerfile")
    image_repository = dict(e.split("=", 1) for args in stages[-1].all("ENV") for e in args.split())["SDEDIT_MODEL_REPOSITORY"]
    assert copier["command"] == ["cp", "-R", f"{image_repository}/.", f"{target}/"]


def test_the_autoscaler_follows_edits_in_flight_not_cpu(rendered):
    settings = settings_from_env(rendered.frontend_env())
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sdedit"}
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
    pods_metric = hpa["spec"]["metrics"][0]["pods"]
    assert pods_metric["metric"]["name"] == "sdedit_edits_in_flight"
    # the target is the pod's edit slots: above it edits queue; it must be reachable (slots + queue)
    assert int(pods_metric["target"]["averageValue"]) == settings.max_active_edits
    assert settings.max_active_edits < settings.max_active_edits + settings.max_queue
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert "replicas" not in rendered.get("Deployment", "sdedit")["spec"]  # the HPA owns it


def test_the_autoscaling_metric_is_a_gauge_the_service_exports():
    families = {m.name: m.type for m in Metrics().registry.collect()}
    assert families["sdedit_edits_in_flight"] == "gauge"
    for overlay in OVERLAYS:
        (hpa,) = render(overlay).of_kind("HorizontalPodAutoscaler")
        assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= set(families)


def _readme_yaml_block(starting: str) -> dict:
    """The ```yaml block of deploy/README.md whose first line starts with `starting`."""
    blocks = re.findall(r"```yaml\n(.*?)```", (DEPLOY / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if b.startswith(starting)]
    return yaml.safe_load(block)


def test_the_documented_prometheus_config_and_adapter_rule_are_valid(tmp_path):
    """deploy/README.md's scrape config (for clusters without the operator) keeps exactly the
    Services' metrics ports and passes promtool; its prometheus-adapter rule is valid PromQL."""
    documented = _readme_yaml_block("scrape_configs:")
    (job,) = documented["scrape_configs"]
    (discovery,) = job.pop("kubernetes_sd_configs")
    assert discovery == {"role": "endpoints", "namespaces": {"names": ["sdedit"]}}
    keep = next(r for r in job["relabel_configs"] if r["action"] == "keep")
    assert keep["source_labels"] == ["__meta_kubernetes_service_name", "__meta_kubernetes_endpoint_port_name"]
    services = render("gpu").of_kind("Service")
    kept = {s["metadata"]["name"] for s in services for port in s["spec"]["ports"]
            if re.fullmatch(keep["regex"], f"{s['metadata']['name']};{port['name']}")}
    assert kept == {s["metadata"]["name"] for s in services if "metrics" in {p["name"] for p in s["spec"]["ports"]}}
    # Debian's promtool is built without Kubernetes discovery: check the rest with a static target
    job["static_configs"] = [{"targets": ["sdedit:9464"]}]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump(documented))
    checked = subprocess.run([promtool(), "check", "config", str(config)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (rule,) = _readme_yaml_block("rules:")["rules"]["custom"]
    assert rule["seriesQuery"].startswith("sdedit_edits_in_flight{") and rule["name"]["as"] == "sdedit_edits_in_flight"
    expr = rule["metricsQuery"].replace("<<.Series>>", "sdedit_edits_in_flight").replace(
        "<<.LabelMatchers>>", 'namespace="sdedit",pod=~"sdedit-.*"')
    rules = tmp_path / "rules.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": [{"record": "adapter:q", "expr": expr}]}]}))
    checked = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_disruption_budgets_leave_the_front_end_serving(rendered):
    budgets = {p["metadata"]["name"]: p for p in rendered.of_kind("PodDisruptionBudget")}
    assert set(budgets) == ({"sdedit", "triton"} if rendered.overlay == "gpu" else {"sdedit"})
    (hpa,) = rendered.of_kind("HorizontalPodAutoscaler")
    assert budgets["sdedit"]["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]
    for name, budget in budgets.items():
        assert budget["apiVersion"] == "policy/v1" and selects(budget["spec"]["selector"], pod_labels(rendered, name))


def test_only_the_front_end_reaches_triton_and_redis(rendered):
    policies = {p["metadata"]["name"]: p for p in rendered.of_kind("NetworkPolicy") if p["metadata"]["name"] != "sdedit"}
    assert set(policies) == ({"redis", "triton"} if rendered.overlay == "gpu" else {"redis"})
    frontend = pod_labels(rendered, "sdedit")
    for name, policy in policies.items():
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"] and selects(spec["podSelector"], pod_labels(rendered, name))
        container_ports = {p["containerPort"] for p in rendered.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for rule in spec["ingress"]:
            ports = {p["port"] for p in rule["ports"]}
            assert ports <= container_ports
            (source,) = rule["from"]
            if "podSelector" in source:
                assert selects(source["podSelector"], frontend) and "namespaceSelector" not in source
            else:  # Prometheus, on the metrics port only
                assert ports == {8002} and set(source) == {"namespaceSelector"}


# --- security: TLS, tokens, who reaches the front-end --------------------------------------------

def _mounts(rendered: Rendered) -> dict[str, tuple[str, dict]]:
    """volume name -> (mount path, volume) of the front-end container."""
    pod = rendered.get("Deployment", "sdedit")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["name"]: (m["mountPath"], volumes[m["name"]]) for m in rendered.frontend["volumeMounts"]}


def test_the_grpc_port_serves_tls_from_a_cert_manager_certificate(rendered):
    settings = settings_from_env(rendered.frontend_env())
    (certificate,) = rendered.of_kind("Certificate")
    assert certificate["apiVersion"] == "cert-manager.io/v1"
    spec = certificate["spec"]
    assert {"secretName", "dnsNames", "issuerRef"} <= set(spec) and "server auth" in spec["usages"]
    service = rendered.get("Service", "sdedit")["metadata"]["name"]
    assert f"{service}.sdedit.svc" in spec["dnsNames"] and f"{service}.sdedit.svc.cluster.local" in spec["dnsNames"]
    path, volume = _mounts(rendered)["tls"]
    assert volume["secret"]["secretName"] == spec["secretName"]
    assert settings.tls_cert_file == f"{path}/tls.crt" and settings.tls_key_file == f"{path}/tls.key"
    # the mount is the whole Secret (no subPath): the kubelet swaps renewed files in, the service re-reads them
    assert all("subPath" not in m for m in rendered.frontend["volumeMounts"])


def test_tenants_and_tokens_come_from_a_secret_the_operator_creates(rendered):
    settings = settings_from_env(rendered.frontend_env())
    path, volume = _mounts(rendered)["tokens"]
    assert volume["secret"]["secretName"] == "sdedit-tokens"
    assert settings.auth_tokens_file == f"{path}/tokens.json"
    assert not rendered.of_kind("Secret")  # never committed
    assert "kubectl -n sdedit create secret generic sdedit-tokens --from-file=tokens.json" in (DEPLOY / "README.md").read_text()


def test_probes_use_the_plaintext_health_port_since_kubelet_grpc_probes_cannot_speak_tls(rendered):
    settings = settings_from_env(rendered.frontend_env())
    ports = {p["name"]: p["containerPort"] for p in rendered.frontend["ports"]}
    assert settings.health_port == ports["health"] and settings.port == ports["grpc"] != ports["health"]
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert rendered.frontend[name]["grpc"]["port"] == settings.health_port
    assert settings.metrics_host != "0.0.0.0"
    (host_var,) = [v for v in rendered.frontend["env"] if v["name"] == "SDEDIT_METRICS_HOST"]
    assert host_var["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"


def test_only_labelled_clients_reach_the_grpc_port_and_prometheus_the_metrics_port(rendered):
    settings = settings_from_env(rendered.frontend_env())
    policy = rendered.get("NetworkPolicy", "sdedit")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress"] and selects(spec["podSelector"], pod_labels(rendered, "sdedit"))
    rules = {frozenset(p["port"] for p in rule["ports"]): rule["from"] for rule in spec["ingress"]}
    assert set(rules) == {frozenset({settings.port, settings.http_port}), frozenset({settings.metrics_port})}
    (clients,) = rules[frozenset({settings.port, settings.http_port})]
    assert clients["podSelector"]["matchLabels"] == {"sdedit.example/client": "true"}
    (prometheus,) = rules[frozenset({settings.metrics_port})]
    assert set(prometheus) == {"namespaceSelector"} and prometheus["namespaceSelector"]["matchLabels"]
    monitor = rendered.of_kind("ServiceMonitor")[0]
    service_ports = {p["name"]: p.get("targetPort", p["port"]) for p in rendered.get("Service", "sdedit")["spec"]["ports"]}
    scraped = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert all(service_ports[name] in (settings.metrics_port, "metrics") for name in scraped)
