#!/usr/bin/env python3
"""Checks the rendered Kubernetes manifests of every overlay (called by infra/check/run).

- Built-in kinds against the Kubernetes JSON schemas bundled by `kubernetes-validate`, strictly
  (unknown fields are errors), for each Kubernetes version given.
- KEDA's ScaledObject and TriggerAuthentication for the fields KEDA requires and the values it
  accepts (no KEDA schema is bundled), and every other kind is refused as unknown.
- References between objects: Secret and ConfigMap keys, service accounts, selectors, ports,
  the ScaledObject's target and authentication.
- What must stay consistent with the binaries: targetQueryValue = BLINDFOLD_WORKER_JOBS, CPU
  request = BLINDFOLD_WORKER_THREADS, grace period > BLINDFOLD_WORKER_SHUTDOWN_SECS, bind
  addresses = container ports = scrape annotations, each image runs the right binary.
- Every environment variable the manifests set (and every ConfigMap key) is read by the code: it
  appears as a string literal in the sources of crates/ or workers/ (with --source-root).
- Pod security (non-root, read-only root, no capabilities, RuntimeDefault seccomp, /tmp).
- The autoscaling query: one line in base/worker-scaledobject.yaml, unchanged by overlays;
  written to --query-out/OVERLAY.sql for the database test.
- With --fallback, that infra/check/render.py renders every overlay like the real kustomize.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

import yaml

import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError

KEDA_API = "keda.sh/v1alpha1"
BUILTIN_KINDS = {
    "Namespace", "ServiceAccount", "ConfigMap", "Secret", "Service", "Deployment", "Job",
    "PodDisruptionBudget", "NetworkPolicy",
}
EXPECTED_IMAGES = {"api": "blindfold-api", "worker": "blindfold-worker", "migrate": "blindfold"}
# Least privilege: the Secret key each component's credentials come from. Only the migration Job
# holds the schema owner's database URL; the API and the workers log in as their own roles and
# reach the bucket as their own identities (infra/s3/policies).
CREDENTIALS = {
    "migrate": {"DATABASE_URL": "MIGRATE_DATABASE_URL"},
    "api": {"BLINDFOLD_DATABASE_URL": "API_DATABASE_URL", "BLINDFOLD_S3_ACCESS_KEY": "API_S3_ACCESS_KEY",
            "BLINDFOLD_S3_SECRET_KEY": "API_S3_SECRET_KEY"},
    "worker": {"BLINDFOLD_DATABASE_URL": "WORKER_DATABASE_URL", "BLINDFOLD_S3_ACCESS_KEY": "WORKER_S3_ACCESS_KEY",
               "BLINDFOLD_S3_SECRET_KEY": "WORKER_S3_SECRET_KEY"},
}
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced", "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
POSTGRES_METADATA = {
    "query", "targetQueryValue", "activationTargetQueryValue", "connectionFromEnv", "host", "port",
    "userName", "passwordFromEnv", "dbName", "sslmode",
}
POSTGRES_AUTH_PARAMS = {"connection", "password", "host", "port", "userName", "dbName", "sslmode"}


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def check(self, ok: bool, where: str, message: str) -> bool:
        if not ok:
            self.errors.append(f"{where}: {message}")
        return ok


def load(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def find(docs: list[dict], kind: str, name: str) -> dict | None:
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    return None


def env_map(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def parse_number(value) -> float | None:
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def cpu_cores(quantity) -> float | None:
    text = str(quantity)
    if text.endswith("m"):
        number = parse_number(text[:-1])
        return None if number is None else number / 1000
    return parse_number(text)


def is_int(value, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


# --- schema validation -----------------------------------------------------------------------

def validate_schemas(report: Report, overlay: str, docs: list[dict], versions: list[str]) -> None:
    for doc in docs:
        where = f"{overlay}: {name_of(doc)}"
        if doc.get("apiVersion") == KEDA_API:
            continue  # checked by check_keda
        if not report.check(doc.get("kind") in BUILTIN_KINDS, where, "unexpected kind (add a check for it)"):
            continue
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                report.check(False, where, f"Kubernetes {version} schema: {path}: {error.message}")
            except SchemaNotFoundError:
                report.check(False, where, f"no schema in Kubernetes {version}")


# --- KEDA ------------------------------------------------------------------------------------

def check_behavior(report: Report, where: str, behavior) -> None:
    if not report.check(isinstance(behavior, dict), where, "behavior must be a map"):
        return
    report.check(set(behavior) <= {"scaleUp", "scaleDown"}, where, f"unknown behavior fields {sorted(set(behavior) - {'scaleUp', 'scaleDown'})}")
    for direction, rules in behavior.items():
        here = f"{where}.{direction}"
        if not report.check(isinstance(rules, dict), here, "must be a map"):
            continue
        report.check(set(rules) <= {"stabilizationWindowSeconds", "selectPolicy", "policies", "tolerance"},
                     here, f"unknown fields {sorted(rules)}")
        if "stabilizationWindowSeconds" in rules:
            report.check(is_int(rules["stabilizationWindowSeconds"], 0, 3600), here,
                         "stabilizationWindowSeconds must be an integer in 0..3600")
        if "selectPolicy" in rules:
            report.check(rules["selectPolicy"] in ("Max", "Min", "Disabled"), here, "selectPolicy must be Max, Min or Disabled")
        for policy in rules.get("policies", []):
            report.check(set(policy) == {"type", "value", "periodSeconds"}, here, f"a policy needs exactly type, value, periodSeconds: {policy}")
            report.check(policy.get("type") in ("Pods", "Percent"), here, "policy type must be Pods or Percent")
            report.check(is_int(policy.get("value"), 1, 10**6), here, "policy value must be a positive integer")
            report.check(is_int(policy.get("periodSeconds"), 1, 1800), here, "policy periodSeconds must be in 1..1800")


def check_keda(report: Report, overlay: str, docs: list[dict], secret: dict) -> None:
    keda = [d for d in docs if d.get("apiVersion") == KEDA_API]
    for doc in keda:
        where = f"{overlay}: {name_of(doc)}"
        meta = doc.get("metadata", {})
        report.check(bool(meta.get("name")) and bool(meta.get("namespace")), where, "needs metadata.name and metadata.namespace")
        spec = doc.get("spec")
        if not report.check(isinstance(spec, dict), where, "needs a spec"):
            continue
        if doc["kind"] == "TriggerAuthentication":
            refs = spec.get("secretTargetRef")
            report.check(set(spec) <= {"secretTargetRef", "env", "podIdentity", "hashiCorpVault", "azureKeyVault",
                                       "awsSecretManager", "gcpSecretManager", "configMapTargetRef", "boundServiceAccountToken"},
                         where, f"unknown spec fields {sorted(spec)}")
            if not report.check(isinstance(refs, list) and refs, where, "needs secretTargetRef entries"):
                continue
            for ref in refs:
                report.check(set(ref) == {"parameter", "name", "key"}, where, f"secretTargetRef needs parameter, name, key: {ref}")
                report.check(ref.get("parameter") in POSTGRES_AUTH_PARAMS, where, f"parameter {ref.get('parameter')!r} is not one the postgresql scaler reads")
                report.check(ref.get("name") == secret["metadata"]["name"], where, f"refers to Secret {ref.get('name')!r}, not the template's")
                report.check(ref.get("key") in secret.get("stringData", {}), where, f"key {ref.get('key')!r} is not in the Secret template")
        elif doc["kind"] == "ScaledObject":
            report.check(set(spec) <= SCALED_OBJECT_SPEC, where, f"unknown spec fields {sorted(set(spec) - SCALED_OBJECT_SPEC)}")
            target = spec.get("scaleTargetRef", {})
            report.check(isinstance(target, dict) and target.get("name"), where, "scaleTargetRef.name is required")
            report.check(target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1",
                         where, "scaleTargetRef must be an apps/v1 Deployment")
            report.check(find(docs, "Deployment", target.get("name")) is not None, where, f"scaleTargetRef: no Deployment {target.get('name')!r}")
            for field in ("pollingInterval", "cooldownPeriod", "minReplicaCount", "maxReplicaCount"):
                report.check(is_int(spec.get(field), 0, 10**6), where, f"{field} must be set to a non-negative integer")
            low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 0)
            report.check(low == 0, where, "minReplicaCount must be 0 (scale to zero)")
            report.check(isinstance(high, int) and high >= 1 and high >= low, where, "maxReplicaCount must be at least 1 and at least minReplicaCount")
            report.check(is_int(spec.get("pollingInterval"), 1, 3600), where, "pollingInterval must be in 1..3600 s")
            advanced = spec.get("advanced", {})
            report.check(set(advanced) <= {"horizontalPodAutoscalerConfig", "restoreToOriginalReplicaCount", "scalingModifiers"},
                         where, f"unknown advanced fields {sorted(advanced)}")
            hpa = advanced.get("horizontalPodAutoscalerConfig", {})
            report.check(set(hpa) <= {"name", "behavior"}, where, f"unknown horizontalPodAutoscalerConfig fields {sorted(hpa)}")
            behavior = hpa.get("behavior")
            if report.check(behavior is not None and "scaleDown" in behavior, where, "needs a scaleDown behavior (busy workers)"):
                check_behavior(report, f"{where}: behavior", behavior)
                report.check(behavior["scaleDown"].get("stabilizationWindowSeconds", 300) >= 60, where,
                             "scaleDown.stabilizationWindowSeconds below 60 s stops workers between back-to-back jobs")
            triggers = spec.get("triggers")
            if not report.check(isinstance(triggers, list) and triggers, where, "needs triggers"):
                continue
            for index, trigger in enumerate(triggers):
                here = f"{where}: triggers[{index}]"
                report.check(set(trigger) <= TRIGGER_FIELDS, here, f"unknown fields {sorted(set(trigger) - TRIGGER_FIELDS)}")
                report.check(trigger.get("type") == "postgresql", here, "type must be postgresql")
                report.check(trigger.get("metricType", "AverageValue") == "AverageValue", here,
                             "metricType must be AverageValue (jobs per worker)")
                metadata = trigger.get("metadata", {})
                report.check(set(metadata) <= POSTGRES_METADATA, here, f"unknown metadata {sorted(set(metadata) - POSTGRES_METADATA)}")
                for key, value in metadata.items():
                    report.check(isinstance(value, str), here, f"metadata.{key} must be a string (KEDA reads strings)")
                report.check(isinstance(metadata.get("query"), str) and metadata["query"].strip(), here, "metadata.query is required")
                target_value = parse_number(metadata.get("targetQueryValue", ""))
                report.check(target_value is not None and target_value > 0, here, "metadata.targetQueryValue is required and > 0")
                if "activationTargetQueryValue" in metadata:
                    report.check(parse_number(metadata["activationTargetQueryValue"]) is not None, here, "activationTargetQueryValue must be a number")
                auth = trigger.get("authenticationRef", {})
                report.check(auth.get("kind", "TriggerAuthentication") == "TriggerAuthentication"
                             and find(docs, "TriggerAuthentication", auth.get("name")) is not None,
                             here, f"authenticationRef: no TriggerAuthentication {auth.get('name')!r}")
        else:
            report.check(False, where, "unexpected KEDA kind")
    report.check(sum(d["kind"] == "ScaledObject" for d in keda) == 1, overlay, "exactly one ScaledObject expected")


# --- references, consistency, security --------------------------------------------------------

def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in ("Deployment", "Job"):
        return doc["spec"]["template"]["spec"]
    return None


def check_references(report: Report, overlay: str, docs: list[dict], secret: dict) -> None:
    configmap = find(docs, "ConfigMap", "blindfold-config")
    report.check(configmap is not None, overlay, "no ConfigMap blindfold-config")
    namespaces = {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
    report.check(len(namespaces) == 1, overlay, f"expected one Namespace, got {sorted(namespaces)}")
    for doc in docs:
        if doc["kind"] != "Namespace":
            report.check(doc["metadata"].get("namespace") in namespaces, f"{overlay}: {name_of(doc)}", "not in the rendered Namespace")
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{overlay}: {name_of(doc)}"
        report.check(find(docs, "ServiceAccount", spec.get("serviceAccountName")) is not None, where,
                     f"no ServiceAccount {spec.get('serviceAccountName')!r}")
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        selector = doc["spec"].get("selector", {}).get("matchLabels")
        if selector is not None:
            report.check(all(labels.get(k) == v for k, v in selector.items()), where, "selector does not match the pod labels")
        for container in spec.get("containers", []):
            for source in container.get("envFrom", []):
                ref = source.get("configMapRef") or source.get("secretRef") or {}
                report.check(ref.get("name") == "blindfold-config" and "configMapRef" in source, where,
                             f"envFrom must only read the ConfigMap blindfold-config, not {ref.get('name')!r}")
            for env in container.get("env", []):
                source = env.get("valueFrom", {})
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    report.check(ref.get("name") == secret["metadata"]["name"] and ref.get("key") in secret["stringData"],
                                 where, f"{env['name']}: key {ref.get('key')!r} of Secret {ref.get('name')!r} is not in the template")
                if "configMapKeyRef" in source and configmap is not None:
                    ref = source["configMapKeyRef"]
                    report.check(ref.get("key") in configmap.get("data", {}), where, f"{env['name']}: no key {ref.get('key')!r} in the ConfigMap")
    for kind in ("Service", "PodDisruptionBudget"):
        for doc in (d for d in docs if d["kind"] == kind):
            selector = doc["spec"]["selector"]
            selector = selector.get("matchLabels", selector) if kind == "PodDisruptionBudget" else selector
            pods = [d for d in docs if pod_spec(d) is not None and d["kind"] == "Deployment"
                    and all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in selector.items())]
            report.check(len(pods) == 1, f"{overlay}: {name_of(doc)}", f"selector matches {len(pods)} Deployments, expected 1")
            if kind == "Service" and pods:
                names = {p.get("name") for c in pod_spec(pods[0])["containers"] for p in c.get("ports", [])}
                for port in doc["spec"]["ports"]:
                    report.check(port["targetPort"] in names, f"{overlay}: {name_of(doc)}", f"targetPort {port['targetPort']!r} is not a container port")


def bind_port(address: str) -> int | None:
    match = re.fullmatch(r"(?:0\.0\.0\.0|\[::\]):(\d+)", address or "")
    return int(match.group(1)) if match else None


def check_components(report: Report, overlay: str, docs: list[dict]) -> None:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{overlay}: {name_of(doc)}"
        component = doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component")
        containers = spec.get("containers", [])
        if not report.check(component in EXPECTED_IMAGES and len(containers) == 1, where, "expected one container of api, worker or migrate"):
            continue
        container = containers[0]
        image = container.get("image", "")
        repository = image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]
        report.check(repository == EXPECTED_IMAGES[component], where, f"image {image!r} should be {EXPECTED_IMAGES[component]}")
        report.check("command" not in container, where, "the image's ENTRYPOINT is the binary; do not override it")
        env = env_map(container)
        annotations = doc["spec"]["template"]["metadata"].get("annotations", {})
        ports = {p["containerPort"] for p in container.get("ports", [])}
        secret_keys = {name: e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") for name, e in env.items()
                       if "secretKeyRef" in e.get("valueFrom", {})}
        for name, key in CREDENTIALS[component].items():
            report.check(secret_keys.get(name) == key, where,
                         f"{name} must come from the Secret key {key} (one set of credentials per component)")
        others = {key for c, creds in CREDENTIALS.items() if c != component for key in creds.values()}
        report.check(not (set(secret_keys.values()) & others), where,
                     f"reads another component's credentials: {sorted(set(secret_keys.values()) & others)}")
        report.check(str(env.get("BLINDFOLD_API_MIGRATE", {}).get("value", "false")).lower() in ("false", "0", "no", "off"),
                     where, "migrations run in the migration Job only: leave BLINDFOLD_API_MIGRATE unset")
        if component == "migrate":
            report.check(container.get("args") == ["admin", "migrate", "--no-seed"], where,
                         "the migration Job runs `blindfold admin migrate --no-seed` (the API seeds the built-in models)")
            report.check("DATABASE_URL" in env, where, "`blindfold admin migrate` reads DATABASE_URL")
            continue
        report.check("BLINDFOLD_DATABASE_URL" in env, where, "BLINDFOLD_DATABASE_URL is required")
        if component == "api":
            api_port = bind_port(env.get("BLINDFOLD_API_BIND", {}).get("value"))
            report.check(api_port is not None and api_port in ports, where,
                         "BLINDFOLD_API_BIND must listen on all interfaces on a container port")
        bind_var = "BLINDFOLD_API_METRICS_BIND" if component == "api" else "BLINDFOLD_WORKER_METRICS_BIND"
        port = bind_port(env.get(bind_var, {}).get("value"))
        report.check(port is not None and port in ports, where, f"{bind_var} must listen on all interfaces on a container port")
        if component == "api":
            report.check(port != api_port, where, "/metrics must have a listener of its own, not the public API port")
        report.check(annotations.get("prometheus.io/scrape") == "true" and annotations.get("prometheus.io/port") == str(port)
                     and annotations.get("prometheus.io/path") == "/metrics", where, "Prometheus scrape annotations must name the /metrics port")
        probes = {name: (container.get(name) or {}).get("httpGet", {}).get("path") for name in ("readinessProbe", "livenessProbe")}
        report.check(probes == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}, where, f"probes must be /readyz and /healthz, got {probes}")
        if component == "api":
            report.check(container["resources"]["limits"].get("memory") is not None, where, "needs a memory limit")
            continue
        # The worker.
        report.check("replicas" not in doc["spec"], where, "KEDA owns replicas: leave the field out")
        values = {k: v.get("value") for k, v in env.items()}
        threads, jobs, shutdown = (parse_number(values.get(k)) for k in
                                   ("BLINDFOLD_WORKER_THREADS", "BLINDFOLD_WORKER_JOBS", "BLINDFOLD_WORKER_SHUTDOWN_SECS"))
        requests = container.get("resources", {}).get("requests", {})
        report.check(threads is not None and threads >= 1 and cpu_cores(requests.get("cpu")) == threads, where,
                     f"CPU request {requests.get('cpu')!r} must equal BLINDFOLD_WORKER_THREADS {values.get('BLINDFOLD_WORKER_THREADS')!r}")
        report.check(container["resources"].get("limits", {}).get("memory") == requests.get("memory"), where,
                     "worker memory request and limit must be equal")
        report.check(shutdown is not None and spec.get("terminationGracePeriodSeconds", 30) > shutdown, where,
                     "terminationGracePeriodSeconds must exceed BLINDFOLD_WORKER_SHUTDOWN_SECS")
        report.check(env.get("BLINDFOLD_WORKER_ID", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name",
                     where, "BLINDFOLD_WORKER_ID must be the pod name (downward API)")
        scaled = [d for d in docs if d["kind"] == "ScaledObject" and d["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]]
        for so in scaled:
            target = parse_number(so["spec"]["triggers"][0]["metadata"].get("targetQueryValue", ""))
            report.check(jobs is not None and target == jobs, where,
                         f"ScaledObject targetQueryValue {target} must equal BLINDFOLD_WORKER_JOBS {jobs}")


def check_fleet_memory(report: Report, overlay: str, docs: list[dict]) -> None:
    """The API refuses jobs by what the workers declare, so the two figures must agree."""
    def values(component: str) -> dict:
        for doc in docs:
            spec = pod_spec(doc)
            if spec is not None and doc["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component") == component:
                return {k: v.get("value") for k, v in env_map(spec["containers"][0]).items()}
        return {}
    api, worker = values("api"), values("worker")
    if not api or not worker:
        return
    fleet, budget, jobs = (parse_number(v) for v in (api.get("BLINDFOLD_FLEET_MEMORY_MIB"),
                                                      worker.get("BLINDFOLD_WORKER_MEMORY_MIB"),
                                                      worker.get("BLINDFOLD_WORKER_JOBS", "1")))
    report.check(fleet is not None and budget is not None and fleet == budget, f"{overlay}: blindfold-api",
                 f"BLINDFOLD_FLEET_MEMORY_MIB {fleet} must equal the workers' BLINDFOLD_WORKER_MEMORY_MIB {budget}")


def check_security(report: Report, overlay: str, docs: list[dict]) -> None:
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    report.check(namespace["metadata"].get("labels", {}).get("pod-security.kubernetes.io/enforce") == "restricted",
                 overlay, "the Namespace must enforce the restricted Pod Security Standard")
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        where = f"{overlay}: {name_of(doc)}"
        pod = spec.get("securityContext", {})
        report.check(pod.get("runAsNonRoot") is True and isinstance(pod.get("runAsUser"), int) and pod["runAsUser"] > 0,
                     where, "pod must run as a numeric non-root user")
        report.check(pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", where, "seccompProfile must be RuntimeDefault")
        report.check(spec.get("automountServiceAccountToken") is False, where, "no service-account token (no pod talks to the API server)")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            sc = container.get("securityContext", {})
            report.check(sc.get("readOnlyRootFilesystem") is True, where, f"{container['name']}: readOnlyRootFilesystem")
            report.check(sc.get("allowPrivilegeEscalation") is False, where, f"{container['name']}: allowPrivilegeEscalation false")
            report.check(sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc.get("capabilities", {}).get("add"),
                         where, f"{container['name']}: drop ALL capabilities, add none")
            report.check("privileged" not in sc or sc["privileged"] is False, where, f"{container['name']}: not privileged")
            tmp = [m for m in container.get("volumeMounts", []) if m.get("mountPath") == "/tmp"]
            report.check(len(tmp) == 1 and "emptyDir" in volumes.get(tmp[0]["name"], {}), where,
                         f"{container['name']}: /tmp must be an emptyDir (the root filesystem is read-only)")


def check_env_names(report: Report, overlay: str, docs: list[dict], root: Path) -> None:
    known = {"RUST_LOG"}  # read by tracing-subscriber's EnvFilter
    for source in list(root.glob("crates/*/src/**/*.rs")) + list(root.glob("workers/src/**/*.rs")):
        known |= set(re.findall(r'"([A-Z][A-Z0-9_]+)"', source.read_text()))
    for doc in docs:
        names = []
        if doc["kind"] == "ConfigMap":
            names = [(k, "ConfigMap key") for k in doc.get("data", {})]
        elif pod_spec(doc) is not None:
            names = [(e["name"], "env") for c in pod_spec(doc)["containers"] for e in c.get("env", [])]
        for name, what in names:
            report.check(name in known, f"{overlay}: {name_of(doc)}", f"{what} {name} is not read anywhere in crates/*/src or workers/src")


# --- the autoscaling query ---------------------------------------------------------------------

def check_query(report: Report, overlays: dict[str, list[dict]], base_file: Path, out: Path | None) -> None:
    base = [d for d in load(base_file) if d.get("kind") == "ScaledObject"]
    if not report.check(len(base) == 1, str(base_file), "expected one ScaledObject"):
        return
    query = base[0]["spec"]["triggers"][0]["metadata"].get("query", "")
    report.check(isinstance(query, str) and "\n" not in query.strip(), str(base_file), "the query must be on one line")
    lines = [line for line in base_file.read_text().splitlines() if line.strip().startswith("query:")]
    report.check(len(lines) == 1, str(base_file), "spec.triggers[0].metadata.query must be one `query:` line")
    for overlay, docs in overlays.items():
        rendered = next((d for d in docs if d["kind"] == "ScaledObject"), None)
        if rendered is None:
            continue
        rendered_query = rendered["spec"]["triggers"][0]["metadata"].get("query")
        report.check(rendered_query == query, overlay, "the overlay changes the autoscaling query; change it in base only")
        if out is not None:
            (out / f"{overlay}.sql").write_text(rendered_query.strip().rstrip(";") + ";\n")


# --- the fallback renderer ---------------------------------------------------------------------

def normalize(node):
    if isinstance(node, dict):
        return {k: normalize(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [normalize(v) for v in node]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return node


def compare_fallback(report: Report, overlay: str, real: list[dict], fallback: list[dict]) -> None:
    def keyed(docs):
        return {(d["apiVersion"], d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): normalize(d) for d in docs}
    a, b = keyed(real), keyed(fallback)
    report.check(set(a) == set(b), overlay, f"fallback renderer objects differ: only kustomize {sorted(set(a) - set(b))}, only fallback {sorted(set(b) - set(a))}")
    for key in sorted(set(a) & set(b)):
        report.check(a[key] == b[key], overlay, f"fallback renderer differs from kustomize on {key[1]}/{key[3]}")


def pairs(values: list[str]) -> dict[str, Path]:
    result = {}
    for value in values:
        name, _, path = value.partition("=")
        result[name] = Path(path)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description="Check rendered Blindfold manifests.")
    parser.add_argument("--rendered", action="append", default=[], metavar="OVERLAY=FILE", help="an overlay's rendered manifests")
    parser.add_argument("--fallback", action="append", default=[], metavar="OVERLAY=FILE", help="the same, rendered by render.py")
    parser.add_argument("--secret-template", type=Path, required=True, help="infra/k8s/secret.example.yaml")
    parser.add_argument("--base-scaledobject", type=Path, required=True, help="infra/k8s/base/worker-scaledobject.yaml")
    parser.add_argument("--k8s-version", action="append", default=[], help="Kubernetes version(s) to validate against")
    parser.add_argument("--source-root", type=Path, help="repository root: check env names against the Rust sources")
    parser.add_argument("--query-out", type=Path, help="directory for OVERLAY.sql, the rendered autoscaling query")
    args = parser.parse_args()

    report = Report()
    versions = args.k8s_version or [kubernetes_validate.utils.latest_version()]
    secret_docs = load(args.secret_template)
    secret = secret_docs[0]
    report.check(len(secret_docs) == 1 and secret.get("kind") == "Secret" and isinstance(secret.get("stringData"), dict),
                 str(args.secret_template), "must be one Secret with stringData")
    validate_schemas(report, "secret template", secret_docs, versions)

    overlays = {name: load(path) for name, path in pairs(args.rendered).items()}
    for overlay, docs in overlays.items():
        validate_schemas(report, overlay, docs, versions)
        check_keda(report, overlay, docs, secret)
        check_references(report, overlay, docs, secret)
        check_components(report, overlay, docs)
        check_fleet_memory(report, overlay, docs)
        check_security(report, overlay, docs)
        if args.source_root is not None:
            check_env_names(report, overlay, docs, args.source_root)
        report.check(secret["metadata"].get("namespace") in {d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
                     or overlay != "prod", overlay, "the Secret template's namespace should be prod's")
    check_query(report, overlays, args.base_scaledobject, args.query_out)
    for overlay, path in pairs(args.fallback).items():
        compare_fallback(report, overlay, overlays[overlay], load(path))

    for error in report.errors:
        print(f"FAIL {error}", file=sys.stderr)
    if report.errors:
        return 1
    counts = ", ".join(f"{name}: {len(docs)} objects" for name, docs in overlays.items())
    print(f"manifests ok ({counts}; Kubernetes {', '.join(versions)}; fallback compared: {', '.join(pairs(args.fallback)) or 'no'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
