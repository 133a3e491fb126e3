"""Deployment files: YAML parses, compose and Kubernetes pass their schemas, alerts and dashboard use real metrics.

The schema checkers are dev dependencies that ship their schemas (no network): the
compose-spec schema vendored by ``check-jsonschema`` and the Kubernetes schemas of
``kubernetes-validate``; PromQL is parsed by ``promql-parser``. A missing checker fails
the test with the package to install; nothing is skipped.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from pipeline.config.loader import parse_config
from pipeline.config.model import PipelineConfig
from pipeline.observability.metrics import METRICS, prometheus_series
from pipeline.observability.telemetry_config import TelemetryConfig

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose" / "docker-compose.yaml"
K8S = DEPLOY / "k8s"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "dashboard.json"
ROLES = ("pollers", "rules", "sinks", "webhook")
K8S_VERSION = "1.33.0"  # the oldest Kubernetes these manifests target
PROMETHEUS_BUILTINS = {"up"}  # series Prometheus adds per target
TARGET_LABELS = {"job", "instance", "role"}
LABELS_BY_SERIES = {m.series: set(m.labels) for m in METRICS} | {"up": set(), "target_info": set()}


def need(module: str, package: str) -> ModuleType:
    """Import a checker or fail naming the dev dependency to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.fail(f"{package} is not installed: add it to the dev dependency group and run make lock")


def yaml_files() -> list[Path]:
    """Every YAML file we ship under deploy/ (not the Kafka jar cache)."""
    files = [p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml") and ".cache" not in p.parts]
    assert files
    return sorted(files)


def docs(path: Path) -> list[Any]:
    """The non-empty YAML documents of a file."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_parses(path: Path) -> None:
    """Each YAML file under deploy/ parses and has content."""
    assert docs(path), f"{path} is empty"


# ------------------------------------------------------------------------------- compose
def compose() -> dict[str, Any]:
    """The compose file (merge keys resolved)."""
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_compose_matches_the_compose_spec_schema() -> None:
    """docker-compose.yaml validates against the compose-spec JSON schema (vendored by check-jsonschema)."""
    jsonschema = need("jsonschema", "jsonschema")
    need("check_jsonschema", "check-jsonschema")
    from importlib.resources import files

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    validator = cls(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    broken = {"services": {"x": {"image": "a", "command": 5, "imagee": "typo"}}}
    assert len(list(validator.iter_errors(broken))) == 2, "the compose schema missed a wrong type or an unknown key"


def test_compose_runs_kafka_the_roles_and_a_collector() -> None:
    """Kafka (apache/kafka 4.x, KRaft), one service per role, the OTel collector with our config."""
    services = compose()["services"]
    assert re.search(r"apache/kafka:4\.\d+\.\d+", services["kafka"]["image"])
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for role in ROLES:
        svc = services[role]
        assert svc["command"] == ["run", "--config", "/etc/instantly-audit/config.yaml", "--role", role]
        assert svc["read_only"] is True and svc["user"].split(":")[0] != "0"
        assert svc["cap_drop"] == ["ALL"]
        assert "./config.yaml:/etc/instantly-audit/config.yaml:ro" in svc["volumes"]
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["webhook"]["ports"][0].endswith(":8080")
    col = services["otel-collector"]
    assert "otel/opentelemetry-collector-contrib:" in col["image"]
    mount = col["volumes"][0].split(":")[0]
    assert (COMPOSE.parent / mount).resolve() == DEPLOY / "otel" / "collector.yaml"
    for name, spec in compose()["secrets"].items():
        assert spec["file"].startswith("./secrets/"), name


def test_collector_pipelines_reference_defined_components() -> None:
    """Every receiver/processor/exporter a collector pipeline names is defined; OTLP/HTTP is on 4318."""
    (cfg,) = docs(DEPLOY / "otel" / "collector.yaml")
    for name, pipe in cfg["service"]["pipelines"].items():
        for kind in ("receivers", "processors", "exporters"):
            for comp in pipe.get(kind, []):
                assert comp in cfg[kind], f"pipeline {name}: {kind[:-1]} {comp} is not defined"
    assert cfg["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")


def _with_dummy_secret_files(node: Any, tmp: Path) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if isinstance(k, str) and k.endswith("_file"):
                f = tmp / f"secret-{len(list(tmp.iterdir()))}"
                f.write_text("dummy-value-for-validation-only-00000\n")
                out[k] = str(f)
            else:
                out[k] = _with_dummy_secret_files(v, tmp)
        return out
    if isinstance(node, list):
        return [_with_dummy_secret_files(v, tmp) for v in node]
    return node


DEPLOY_ENV = {
    "WEBHOOK_SECRET": "w" * 32,
    "WEBHOOK_SECRET_NEXT": "n" * 32,
    "INSTANTLY_WORKSPACE_ID": "019cc043-e2f1-7def-8b07-0aab88328dad",
}


def validate_pipeline_config(text: str, tmp: Path) -> None:
    """Validate a shipped config like ``config validate`` does (secret files replaced by dummies).

    The telemetry block goes through its own model until PipelineConfig has the field.
    """
    raw = yaml.safe_load(text)
    raw = _with_dummy_secret_files(raw, tmp)
    if "telemetry" not in PipelineConfig.model_fields:
        TelemetryConfig.model_validate(raw.pop("telemetry", {}))
    cfg = parse_config(yaml.safe_dump(raw), env=DEPLOY_ENV, base_dir=tmp)
    assert cfg.config_dir == tmp  # every section was validated at load


def test_supervisors_wait_longer_than_a_clean_stop() -> None:
    """compose's stop_grace_period and each Deployment's terminationGracePeriodSeconds leave the process
    the time ``run`` takes to stop cleanly (monitor, then the tasks' batches) plus a margin to close the
    bus: a SIGKILL before that cuts a commit short, and the batch is delivered again after the restart."""
    from pipeline.topology import MONITOR_STOP_SECS, TASKS_STOP_SECS

    needed = MONITOR_STOP_SECS + TASKS_STOP_SECS + 5
    services = compose()["services"]
    for role in ROLES:
        grace = services[role]["stop_grace_period"]
        assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= needed, (role, grace)
    for role in ROLES:
        (dep,) = docs(K8S / f"deployment-{role}.yaml")
        assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= needed, role


def test_compose_config_is_valid(tmp_path: Path) -> None:
    """deploy/compose/config.yaml passes the pipeline's own validation."""
    validate_pipeline_config((DEPLOY / "compose" / "config.yaml").read_text(), tmp_path)


def test_prometheus_config_loads_the_alerts() -> None:
    """prometheus.yml names the alert file and the job the alerts select on."""
    (cfg,) = docs(DEPLOY / "prometheus" / "prometheus.yml")
    assert cfg["rule_files"] == ["/etc/prometheus/alerts.yaml"]
    assert [j["job_name"] for j in cfg["scrape_configs"]] == ["instantly-audit"]
    assert cfg["scrape_configs"][0]["dns_sd_configs"][0]["names"] == list(ROLES)


# ---------------------------------------------------------------------------- kubernetes
def k8s_objects() -> Iterator[tuple[Path, dict[str, Any]]]:
    """Every Kubernetes object in deploy/k8s (the kustomization excluded)."""
    for path in sorted(K8S.glob("*.yaml")):
        for d in docs(path):
            if d["kind"] != "Kustomization":
                yield path, d


def test_k8s_manifests_match_the_kubernetes_schemas() -> None:
    """Each object validates (strict: unknown fields are errors) against the Kubernetes OpenAPI schemas."""
    kv = need("kubernetes_validate.utils", "kubernetes-validate")
    problems = []
    count = 0
    for path, obj in k8s_objects():
        count += 1
        try:
            kv.validate(obj, K8S_VERSION, strict=True)
        except kv.ValidationError as err:
            where = ".".join(map(str, err.path))
            problems.append(f"{path.name}: {obj['kind']}/{obj['metadata']['name']}: {where}: {err.message}")
        except kv.SchemaNotFoundError as err:
            problems.append(f"{path.name}: {err.message}")
    assert count >= 15
    assert not problems, "\n".join(problems)
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}, "spec": {"replicas": "two"}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    """kustomization.yaml includes every manifest file, and only existing ones."""
    (kust,) = docs(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"} - {p.name for p in examples()}
    assert listed == present


def examples() -> list[Path]:
    """Manifests shipped as examples, never applied (``*.example.yaml``)."""
    return sorted(K8S.glob("*.example.yaml"))


def test_kustomization_deploys_no_secret() -> None:
    """``kubectl apply -k`` ships no placeholder secret: no listed manifest is a Secret; the example is unlisted."""
    (kust,) = docs(K8S / "kustomization.yaml")
    kinds = {d["kind"] for name in kust["resources"] for d in docs(K8S / name)}
    assert "Secret" not in kinds
    assert [p.name for p in examples()] == ["secret.example.yaml"]
    assert {d["kind"] for d in docs(K8S / "secret.example.yaml")} == {"Secret"}
    assert "kubectl -n instantly-audit create secret" in (K8S / "secret.example.yaml").read_text()


def deployments() -> dict[str, dict[str, Any]]:
    """The Deployments by role."""
    out = {}
    for _, obj in k8s_objects():
        if obj["kind"] == "Deployment":
            out[obj["metadata"]["labels"]["app.kubernetes.io/component"]] = obj
    return out


def test_one_deployment_per_role_hardened_and_probed() -> None:
    """Per role: --role X, probes on the service port, limits, non-root, read-only root, no privilege."""
    deps = deployments()
    assert set(deps) == set(ROLES)
    for role, dep in deps.items():
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["automountServiceAccountToken"] is False
        (c,) = pod["containers"]
        assert c["args"] == ["run", "--config", "/etc/instantly-audit/config.yaml", "--role", role]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["service"] == 9464
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "service"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "service"}
        assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(
            c["resources"]["limits"]
        )
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert {"/etc/instantly-audit", "/tmp"} <= mounts
        assert ("/run/secrets/instantly-audit" in mounts) == (role != "rules"), role  # the rules read no secret
    # pollers share workspaces (a rolling update hands them over); rules and each sink: one active writer
    assert deps["pollers"]["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deps["rules"]["spec"]["replicas"] == 1 and deps["sinks"]["spec"]["replicas"] == 1
    assert {p["name"] for p in deps["webhook"]["spec"]["template"]["spec"]["containers"][0]["ports"]} == {
        "service",
        "webhook",
    }


def test_network_policy_limits_traffic() -> None:
    """Default deny; egress: DNS, Kafka, collector, Instantly 443, sink ports; ingress: webhook and metrics."""
    policies = [o for _, o in k8s_objects() if o["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if "ingress" not in p["spec"] and "egress" not in p["spec"]]
    assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports, ingress_ports = set(), set()
    for p in policies:
        for rule in p["spec"].get("egress", []):
            assert rule.get("ports"), f"{p['metadata']['name']}: an egress rule without ports allows everything"
            egress_ports |= {r["port"] for r in rule["ports"]}
        for rule in p["spec"].get("ingress", []):
            assert rule.get("ports") and rule.get("from"), f"{p['metadata']['name']}: an ingress rule is too wide"
            ingress_ports |= {r["port"] for r in rule["ports"]}
    assert egress_ports <= {53, 9092, 9093, 4318, 443, 8088, 9200, 6514}
    assert ingress_ports == {"service", "webhook"}
    pollers = next(p for p in policies if p["metadata"]["name"].endswith("pollers-instantly"))
    assert [r["port"] for r in pollers["spec"]["egress"][0]["ports"]] == [443]


def test_k8s_config_is_valid(tmp_path: Path) -> None:
    """The ConfigMap's config.yaml validates; every secret file it names is mounted in the role that reads it."""
    (cm,) = [o for _, o in k8s_objects() if o["kind"] == "ConfigMap"]
    text = cm["data"]["config.yaml"]
    validate_pipeline_config(text, tmp_path)
    live = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    files = set(re.findall(r"/run/secrets/instantly-audit/([a-z-]+)", live))
    mounted = {key for role in ROLES for key in secret_items(role)}
    assert files <= mounted, files - mounted


def secret_items(role: str) -> set[str]:
    """The Secret keys a role's pod mounts (only those listed under ``items``)."""
    pod = deployments()[role]["spec"]["template"]["spec"]
    keys: set[str] = set()
    for vol in pod.get("volumes", []):
        if "secret" in vol:
            items = vol["secret"].get("items")
            assert items, f"{role}: a Secret volume without items: would mount every key"
            keys |= {i["key"] for i in items}
    for env in pod["containers"][0].get("env", []):
        if "secretKeyRef" in env.get("valueFrom", {}):
            keys.add(env["valueFrom"]["secretKeyRef"]["key"])
    return keys


def test_each_role_mounts_only_its_own_secrets() -> None:
    """The internet-facing webhook pods hold no Instantly key and no sink token; the pollers no webhook secret."""
    assert secret_items("webhook") == {"webhook-secrets"}
    assert secret_items("pollers") == {"instantly-api-key"}
    assert "instantly-api-key" not in secret_items("sinks") and not secret_items("rules")
    names = {
        vol["secret"]["secretName"]
        for role in ROLES
        for vol in deployments()[role]["spec"]["template"]["spec"].get("volumes", [])
        if "secret" in vol
    }
    assert len(names) == 3, names  # one Secret per role that reads one


def mounted_secrets() -> dict[str, set[str]]:
    """The Secrets the Deployments mount, by name, with the keys they mount (``items``)."""
    out: dict[str, set[str]] = {}
    for role in ROLES:
        for vol in deployments()[role]["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in vol:
                out.setdefault(vol["secret"]["secretName"], set()).update(i["key"] for i in vol["secret"]["items"])
    return out


def test_the_secret_example_creates_what_the_pods_mount() -> None:
    """secret.example.yaml (and its ``kubectl create secret`` lines, and every page that names a Secret
    to create) gives each Secret a pod mounts, with the keys it mounts. It described one
    ``instantly-audit-secrets`` with ``webhook-secret`` that no pod mounted: followed as written,
    every pod waited forever for ``instantly-audit-pollers`` / ``-webhook``."""
    want = mounted_secrets()
    example = {d["metadata"]["name"]: set(d.get("stringData", {}) | d.get("data", {}))
               for d in docs(K8S / "secret.example.yaml")}  # fmt: skip
    assert example == want
    commands: dict[str, set[str]] = {}
    for text in [(K8S / "secret.example.yaml").read_text(), (ROOT / "docs" / "operations.md").read_text()]:
        for m in re.finditer(r"create secret generic (\S+)((?:\s*\\?\s*--from-file=[\w-]+=\S+)+)", text):
            commands.setdefault(m.group(1), set()).update(re.findall(r"--from-file=([\w-]+)=", m.group(2)))
    assert commands == want
    for path in [K8S / "kustomization.yaml", ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "instantly-audit-secrets" not in path.read_text(), f"{path.name}: no pod mounts instantly-audit-secrets"


def test_kustomization_ships_no_secret() -> None:
    """``kubectl apply -k deploy/k8s`` never creates or overwrites a Secret (they are created with kubectl)."""
    (kust,) = docs(K8S / "kustomization.yaml")
    kinds = {docs(K8S / r)[0]["kind"] for r in kust["resources"]}
    assert "Secret" not in kinds
    assert not kust.get("secretGenerator")


# ---------------------------------------------------------------------- PromQL references
def promql() -> ModuleType:
    """The PromQL parser."""
    return need("promql_parser", "promql-parser")


def references(expr: str) -> tuple[set[str], set[str]]:
    """Metric names and label names an expression uses (parsed, not grepped)."""
    pq = promql()
    names: set[str] = set()
    labels: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, pq.VectorSelector):
            if node.name:
                names.add(node.name)
            labels.update(m.name for m in node.matchers.matchers if m.name != "__name__")
        if isinstance(node, pq.AggregateExpr) and node.modifier is not None:
            labels.update(node.modifier.labels)
        if isinstance(node, pq.BinaryExpr) and node.modifier is not None and node.modifier.matching is not None:
            labels.update(node.modifier.matching.labels)
        return True

    pq.walk(pq.parse(expr), visit)
    return names, labels


def check_expr(expr: str, where: str) -> set[str]:
    """Every metric referenced exists in telemetry.py, and every label exists on some referenced metric."""
    names, labels = references(expr)
    unknown = names - prometheus_series() - PROMETHEUS_BUILTINS
    assert not unknown, f"{where}: {sorted(unknown)} not defined in pipeline/telemetry.py (METRICS)"
    known_labels = set().union(*(LABELS_BY_SERIES[n] for n in names)) | TARGET_LABELS
    assert labels <= known_labels, f"{where}: labels {sorted(labels - known_labels)} exist on none of {sorted(names)}"
    return names


def test_references_sees_through_functions() -> None:
    """The reference extractor finds names in nested functions and labels in by/on clauses."""
    names, labels = references('sum by (sink) (rate(a_total{x="1"}[5m])) > on (sink) max_over_time(b[1h])')
    assert names == {"a_total", "b"} and labels == {"sink", "x"}


def alert_rules() -> list[dict[str, Any]]:
    """Every rule in alerts.yaml."""
    (cfg,) = docs(ALERTS)
    return [r for g in cfg["groups"] for r in g["rules"]]


def test_alert_rules_parse_and_use_defined_metrics() -> None:
    """Each alert parses as PromQL, has a valid `for`, a severity, a summary and a description."""
    pq = promql()
    (cfg,) = docs(ALERTS)
    assert all(set(g) == {"name", "rules"} for g in cfg["groups"])
    used: set[str] = set()
    for rule in alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert {"summary", "description"} <= set(rule["annotations"])
        if "for" in rule:
            pq.parse_duration(rule["for"])
        used |= check_expr(rule["expr"], rule["alert"])
    assert "up" in used


def test_alerts_cover_the_pipeline_failures() -> None:
    """Down, lag growing, cursor stale, circuit open, 401 on the poller key, webhook rejection spike."""
    by_name = {r["alert"]: r["expr"] for r in alert_rules()}
    wanted = {
        "InstantlyAuditDown": "up",
        "InstantlyAuditConsumerLagGrowing": "pipeline_bus_consumer_lag",
        "InstantlyAuditCursorStale": "pipeline_source_cursor_age_seconds",
        "InstantlyAuditSinkCircuitOpen": "pipeline_sink_circuit_open",
        "InstantlyAuditPollerUnauthorized": "pipeline_instantly_api_requests_total",
        "InstantlyAuditWebhookRejectionsSpike": "pipeline_webhook_rejections_total",
    }
    for alert, metric in wanted.items():
        assert metric in references(by_name[alert])[0], alert
    assert 'http_response_status_code="401"' in by_name["InstantlyAuditPollerUnauthorized"]


def test_dead_letter_alert_counts_dead_letters_not_deliberate_drops() -> None:
    """DeadLettersGrowing reads the dead-letter counter: records dropped on purpose (an audit record
    older than the overlap window at a restart's full re-read, ``too_old``; a delivery outside the
    window; a duplicate) are no dead letters, and a process's first dead letter (a new series, which
    ``increase()`` alone cannot see) fires it too."""
    expr = {r["alert"]: r["expr"] for r in alert_rules()}["InstantlyAuditDeadLettersGrowing"]
    names, _labels = references(expr)
    assert names == {"pipeline_dead_letters_total"}, names
    assert "offset" in expr and "unless" in expr


def test_alerts_name_workspaces_by_alias_and_id() -> None:
    """An alert on a workspace metric keeps both workspace labels and its summary shows both."""
    workspace_series = {m.series for m in METRICS if "workspace" in m.labels}
    for rule in alert_rules():
        names, labels = references(rule["expr"])
        if not names & workspace_series:
            continue
        if "workspace" in labels:
            assert "workspace_id" in labels, rule["alert"]
        summary = rule["annotations"]["summary"]
        if "$labels.workspace " in summary:
            assert "$labels.workspace_id" in summary, rule["alert"]


# ---------------------------------------------------------------------------- dashboard
GRAFANA_VARS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title, expr) for every query in the dashboard, Grafana variables substituted."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    out = []
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for var, value in GRAFANA_VARS.items():
                expr = expr.replace(var, value)
            assert "$__" not in expr, f"{panel['title']}: unknown Grafana variable in {expr}"
            out.append((panel["title"], expr))
    for var in dash["templating"]["list"]:
        q = var.get("definition", "")
        m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", q)
        if q:
            assert m, q
            out.append((f"variable {var['name']}", f"{m.group(1)}{{{m.group(2)}!=''}}"))
    return out


def test_dashboard_uses_only_defined_metrics() -> None:
    """Every dashboard query parses and references only metrics (and labels) telemetry.py defines."""
    used: set[str] = set()
    for title, expr in dashboard_exprs():
        used |= check_expr(expr, f"panel {title!r}")
    missing = {m.series for m in METRICS} - used
    assert not missing, f"metrics without a panel: {sorted(missing)}"


def test_dashboard_workspace_variable_is_the_alias_every_filtered_metric_carries() -> None:
    """The workspace variable lists the ``workspace`` label (the config alias); every panel filtered
    by it filters that label, on a metric that carries both ``workspace`` and ``workspace_id``."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    (var,) = [v for v in dash["templating"]["list"] if v["name"] == "workspace"]
    assert var["definition"].endswith(", workspace)")
    by_series = {m.series: set(m.labels) for m in METRICS}
    filtered = 0
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            for metric, label in re.findall(r'(\w+)\{(\w+)=~"\$workspace"', target["expr"]):
                assert label == "workspace", panel["title"]
                assert {"workspace", "workspace_id"} <= by_series[metric], (panel["title"], metric)
                filtered += 1
    assert filtered >= 5
    cursor = [t["expr"] for p in dash["panels"] if p["title"] == "Cursor age" for t in p["targets"]]
    assert cursor and all('workspace=~"$workspace"' in e for e in cursor)


def test_dashboard_is_well_formed() -> None:
    """Unique panel ids, a datasource variable, panels within the 24-column grid."""
    dash = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert dash["uid"] == "instantly-audit"
    assert any(v["type"] == "datasource" for v in dash["templating"]["list"])
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]


# ---------------------------------------------------------------------------- Dockerfile
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def test_dockerfile_is_slim_pinned_multistage_and_non_root() -> None:
    """Pinned python:3.11.x-slim-bookworm, two stages, deps from the hashed runtime lock, the project
    itself with --no-deps, non-root USER, HEALTHCHECK on /healthz."""
    ins = dockerfile()
    args = {rest.split("=", 1)[0]: rest.split("=", 1)[1] for op, rest in ins if op == "ARG" and "=" in rest}
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", args["PYTHON_IMAGE"])
    froms = [rest for op, rest in ins if op == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    runs = [rest for op, rest in ins if op == "RUN"]
    assert any("pip install --require-hashes" in r and "-r requirements/runtime.lock" in r for r in runs)
    assert any("pip install --no-deps ." in r for r in runs)
    installs = [c.strip() for r in runs for c in r.split("&&") if "pip install" in c]
    unlocked = [c for c in installs if not ("--require-hashes" in c or "--no-deps" in c or c.endswith("--upgrade pip"))]
    assert unlocked == [], "every dependency comes from the hashed lock"
    users = [rest for op, rest in ins if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    (health,) = [rest for op, rest in ins if op == "HEALTHCHECK"]
    assert '"instantly-audit", "health", "--config", "/etc/instantly-audit/config.yaml"' in health
    assert not any("SERVICE_PORT" in rest for _, rest in ins), "the app reads its port from the config, not env"
    exposed = {int(p) for op, rest in ins if op == "EXPOSE" for p in rest.split()}
    assert exposed == {9464, 8088}  # service.port and webhook.port defaults
    assert ("ENTRYPOINT", '["instantly-audit"]') in ins
    assert not any(op == "ADD" for op, _ in ins), "use COPY"
    for op, rest in ins:
        if op == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} does not exist"


def test_dockerignore_keeps_the_context_small() -> None:
    """The build context excludes everything but the packages, the project metadata and the runtime lock."""
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "**"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {
        "pyproject.toml",
        "hatch_build.py",
        "README.md",
        "LICENSE",
        "requirements/runtime.lock",
        "schemas",
        "pipeline",
        "connectors",
    }


def test_check_expr_rejects_unknown_metrics_and_labels() -> None:
    """A misspelt metric or a label the metric does not carry is reported."""
    with pytest.raises(AssertionError, match="not defined"):
        check_expr("rate(pipeline_sink_delivery_total[5m])", "typo")
    with pytest.raises(AssertionError, match="labels"):
        check_expr('pipeline_sink_deliveries_total{workspace="a"}', "label")
