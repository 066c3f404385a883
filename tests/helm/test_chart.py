#!/usr/bin/env python3
"""Renders, lints and validates the Moat Helm chart (deploy/helm/moat).

The chart is rendered by the real Helm engine: helm-python-sdk binds Helm's Go SDK (a
shared library inside the wheel) with ctypes, so neither a helm binary nor a cluster is
needed. Checks:

  * defaults and ci/ha-values.yaml render, and `helm lint --strict` passes on both;
  * every rendered manifest validates against the Kubernetes OpenAPI schemas of
    KUBE_VERSION (kubernetes-validate, strict: unknown fields are errors). CRD kinds
    (cert-manager, Prometheus Operator) have no schema there: they are skipped by kind,
    said so, and checked structurally instead;
  * values.schema.json rejects bad values (control.replicas: 2, an unknown Service type,
    a string where an integer is expected);
  * what the chart promises: quorum-keeping PDBs, externalTrafficPolicy Local, a grace
    period longer than preStop + drain, the edge.toml the edge parses, the dashboard
    ConfigMap, monitoring objects only when asked for, the scale-up path;
  * internal gRPC mutual TLS (on by default): three certificates (control, edge, admin) from
    each source (generated, cert-manager, existing Secrets), wired into the control flags,
    edge.toml's [control-tls], the scale-up Job and the control pods; the generated
    certificates are checked with `openssl` (subject CN, SANs, key usages, chain).

Run: python3 tests/helm/test_chart.py   (dependencies: tests/helm/requirements.txt)
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import tempfile
import time
import tomllib
import unittest
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "moat"
HA_VALUES = CHART / "ci" / "ha-values.yaml"
KUBE_VERSION = "1.30.0"
RELEASE = "moat"
NAMESPACE = "mail"
INTERNAL_TLS = "/etc/moat/internal-tls"
ADMIN_TLS = "/etc/moat/admin-tls"
CONTROL_TLS_FLAGS = (f"--tls-ca {INTERNAL_TLS}/ca.crt --tls-cert {INTERNAL_TLS}/tls.crt "
                     f"--tls-key {INTERNAL_TLS}/tls.key")
ADMIN_TLS_FLAGS = (f"--tls-ca {ADMIN_TLS}/ca.crt --tls-cert {ADMIN_TLS}/tls.crt "
                   f"--tls-key {ADMIN_TLS}/tls.key")

# Custom resources: kubernetes-validate ships only the built-in API's schemas.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def log(message: str) -> None:
    print(f"  - {message}", flush=True)


def load_values(path: Path) -> dict:
    return helm.values_from_yaml(path.read_text())


def render(values: dict | None = None) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` would produce (install mode)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def manifests(rendered: dict[str, str]) -> list[dict]:
    """Every Kubernetes object of a render (NOTES.txt and empty documents left out)."""
    objects = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source", path)
                objects.append(doc)
    return objects


def strip(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "__source"}


def find(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [
        o for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objects: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def edge_toml(objects: list[dict]) -> dict:
    cm = one(objects, "ConfigMap", f"{RELEASE}-edge")
    return tomllib.loads(cm["data"]["edge.toml"])


def control_script(objects: list[dict]) -> str:
    sts = one(objects, "StatefulSet", f"{RELEASE}-control")
    return sts["spec"]["template"]["spec"]["containers"][0]["command"][2]


def secret_volumes(pod_spec: dict) -> dict[str, str]:
    """Mount path -> Secret name, over the pod's first container."""
    secrets = {v["name"]: v["secret"]["secretName"]
               for v in pod_spec.get("volumes", []) if "secret" in v}
    return {m["mountPath"]: secrets[m["name"]]
            for m in pod_spec["containers"][0].get("volumeMounts", [])
            if m["name"] in secrets}


def openssl(*args: str, stdin: str | None = None) -> str:
    done = subprocess.run(["openssl", *args], input=stdin, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    assert m, f"not a duration: {text}"
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


class Rendered:
    """Renders once per values set and shares the result between tests."""

    _cache: dict[str, list[dict]] = {}

    @classmethod
    def get(cls, label: str) -> list[dict]:
        if label not in cls._cache:
            values = load_values(HA_VALUES) if label == "ha" else None
            start = time.monotonic()
            cls._cache[label] = manifests(render(values))
            log(f"rendered {label} values: {len(cls._cache[label])} objects "
                f"in {time.monotonic() - start:.2f}s")
        return cls._cache[label]


class EngineTest(unittest.TestCase):
    def test_engine_is_real_helm(self):
        log(f"Helm SDK {helm.helm_sdk_version()} via libhelm_c {helm.helm_c_version()} "
            f"({helm.library_path})")
        self.assertTrue(helm.helm_sdk_version().startswith("v"))


class LintTest(unittest.TestCase):
    def lint(self, label: str, values: dict | None) -> None:
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE,
                           kube_version=f"v{KUBE_VERSION}")
        problems = [m for m in report["messages"] if m["severity"] >= 2]
        self.assertEqual(report["errors"], [], report)
        self.assertEqual(problems, [], report)
        infos = [m["error"] for m in report["messages"] if m["severity"] < 2]
        log(f"helm lint --strict ({label}): no warnings or errors"
            + (f"; info: {', '.join(infos)}" if infos else ""))

    def test_lint_defaults(self):
        self.lint("defaults", None)

    def test_lint_ha(self):
        self.lint("ha-values", load_values(HA_VALUES))


class KubernetesSchemaTest(unittest.TestCase):
    def validate_all(self, label: str) -> None:
        objects = Rendered.get(label)
        validated, skipped = [], []
        for obj in objects:
            key = (obj["apiVersion"], obj["kind"])
            ident = f"{obj['kind']}/{obj['metadata']['name']}"
            if key in CRD_KINDS:
                # No schema in kubernetes-validate: check the shape a CRD object needs.
                for field in ("apiVersion", "kind", "metadata", "spec"):
                    self.assertIn(field, obj, f"{ident} ({obj['__source']})")
                self.assertTrue(obj["metadata"].get("name"), ident)
                self.assertIsInstance(obj["spec"], dict, ident)
                skipped.append(ident)
                continue
            try:
                kubernetes_validate.validate(strip(obj), KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                self.fail(f"{ident} from {obj['__source']}: {e.message} "
                          f"at {'/'.join(str(p) for p in e.path)}")
            validated.append(ident)
        log(f"{label}: {len(validated)} objects valid against Kubernetes {KUBE_VERSION} "
            f"(strict): {', '.join(sorted(validated))}")
        if skipped:
            log(f"{label}: CRD objects not schema-validated (no schema in kubernetes-validate), "
                f"checked structurally: {', '.join(sorted(skipped))}")

    def test_defaults_validate(self):
        self.validate_all("defaults")

    def test_ha_validates(self):
        self.validate_all("ha")


class ValuesSchemaTest(unittest.TestCase):
    BAD = [
        ({"control": {"replicas": 2}}, "/control/replicas", "control.replicas: 2"),
        ({"edge": {"service": {"type": "Foo"}}}, "/edge/service/type",
         'edge.service.type: "Foo"'),
        ({"edge": {"drainTimeoutSeconds": "30"}}, "/edge/drainTimeoutSeconds",
         'edge.drainTimeoutSeconds: "30" (string for integer)'),
    ]

    def test_bad_values_are_rejected(self):
        for values, pointer, label in self.BAD:
            with self.subTest(label):
                with self.assertRaises(helm.HelmValuesError) as caught:
                    render(values)
                message = str(caught.exception)
                self.assertIn("schema", message)
                self.assertIn(pointer, message)
                report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
                self.assertTrue(any(pointer in e for e in report["errors"]), report)
                first = [line for line in message.splitlines() if pointer in line][0].strip()
                log(f"{label} rejected by values.schema.json (render and lint): {first}")

    def test_every_value_is_typed(self):
        # Each key of values.yaml has a schema node with a type; free-form maps (resources,
        # security contexts, labels...) end the walk.
        schema = json.loads((CHART / "values.schema.json").read_text())
        self.assertEqual(schema["$schema"], "http://json-schema.org/draft-07/schema#")
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        checked = 0

        def walk(value, node, path):
            nonlocal checked
            self.assertIn("type", node, f"{path}: no type in values.schema.json")
            checked += 1
            if isinstance(value, dict) and "properties" in node:
                self.assertIs(node.get("additionalProperties"), False, path)
                for key, sub in value.items():
                    self.assertIn(key, node["properties"], f"{path}.{key}: not in the schema")
                    walk(sub, node["properties"][key], f"{path}.{key}")

        walk(values, schema, "")
        log(f"{checked} values of values.yaml typed in values.schema.json (draft-07), "
            f"unknown keys rejected")

    def test_good_variants_are_accepted(self):
        for values in ({"control": {"replicas": 1}}, {"control": {"replicas": 5}},
                       {"edge": {"service": {"type": "NodePort"}}}):
            with self.subTest(json.dumps(values)):
                with helm.Chart.load(CHART) as chart:
                    chart.validate_schema(values)
        log("control.replicas 1 and 5, edge.service.type NodePort accepted")


class SemanticsTest(unittest.TestCase):
    def test_control_plane(self):
        for label, replicas, quorum in (("defaults", 3, 2), ("ha", 5, 3)):
            objects = Rendered.get(label)
            sts = one(objects, "StatefulSet", f"{RELEASE}-control")
            self.assertEqual(sts["spec"]["replicas"], replicas)
            pdb = one(objects, "PodDisruptionBudget", f"{RELEASE}-control")
            self.assertEqual(pdb["spec"]["minAvailable"], quorum)
            headless = one(objects, "Service", f"{RELEASE}-control-headless")
            self.assertEqual(headless["spec"]["clusterIP"], "None")
            self.assertTrue(headless["spec"]["publishNotReadyAddresses"])
            claims = sts["spec"]["volumeClaimTemplates"]
            self.assertEqual([c["metadata"]["name"] for c in claims], ["data"])
            script = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
            peers = re.findall(r"--peer (\d+)=(\S+)", script)
            self.assertEqual([int(i) for i, _ in peers], list(range(1, replicas + 1)))
            self.assertIn(f'-lt {replicas} ]', script)
            log(f"{label}: StatefulSet replicas {replicas}, PDB minAvailable {quorum} "
                f"(quorum), headless Service publishes not-ready pods, "
                f"{len(peers)} founding --peer flags")
        one_node = manifests(render({"control": {"replicas": 1}}))
        self.assertEqual(one(one_node, "PodDisruptionBudget",
                             f"{RELEASE}-control")["spec"]["minAvailable"], 1)
        log("control.replicas 1: PDB minAvailable 1")

    def test_console(self):
        objects = Rendered.get("defaults")
        self.assertNotIn("--console-listen", control_script(objects))
        self.assertFalse([o for o in objects if o["kind"] == "Service"
                          and o["metadata"]["name"] == f"{RELEASE}-control-console"])
        on = manifests(render({"control": {"console": {"enabled": True, "port": 8443}},
                               "networkPolicy": {"enabled": True}}))
        self.assertIn('--console-listen "0.0.0.0:8443"', control_script(on))
        svc = one(on, "Service", f"{RELEASE}-control-console")
        self.assertEqual(svc["spec"]["ports"][0]["port"], 8443)
        self.assertEqual(svc["spec"]["ports"][0]["targetPort"], "console")
        self.assertEqual(svc["spec"]["sessionAffinity"], "ClientIP")
        ports = one(on, "StatefulSet", f"{RELEASE}-control")["spec"]["template"]["spec"][
            "containers"][0]["ports"]
        self.assertIn({"name": "console", "containerPort": 8443, "protocol": "TCP"}, ports)
        rules = one(on, "NetworkPolicy", f"{RELEASE}-control")["spec"]["ingress"]
        self.assertTrue(any(p.get("port") == "console" for r in rules for p in r["ports"]))
        log("console: off by default; enabled, --console-listen, a container port, a "
            "ClientIP-affine Service and a NetworkPolicy rule")

    def test_anti_affinity(self):
        soft = one(Rendered.get("defaults"), "StatefulSet")["spec"]["template"]["spec"]
        hard = one(Rendered.get("ha"), "StatefulSet")["spec"]["template"]["spec"]
        self.assertIn("preferredDuringSchedulingIgnoredDuringExecution",
                      soft["affinity"]["podAntiAffinity"])
        self.assertIn("requiredDuringSchedulingIgnoredDuringExecution",
                      hard["affinity"]["podAntiAffinity"])
        log("control anti-affinity: preferred by default, required in ha-values")

    def test_scale_up_joins(self):
        objects = manifests(render({"control": {"replicas": 5, "foundingMembers": 3}}))
        sts = one(objects, "StatefulSet")
        script = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
        self.assertEqual(len(re.findall(r"--peer \d+=", script)), 3)
        self.assertIn("--join", script)
        job = one(objects, "Job")
        self.assertIn("post-upgrade", job["metadata"]["annotations"]["helm.sh/hook"])
        job_script = job["spec"]["template"]["spec"]["containers"][0]["command"][2]
        added = re.findall(r"^\s*add (\d+) (\S+)$", job_script, re.M)
        self.assertEqual([int(i) for i, _ in added], [4, 5])
        self.assertEqual(job["spec"]["template"]["metadata"]["labels"]
                         ["app.kubernetes.io/component"], "admin")
        # Control nodes refuse admin calls without mutual TLS: every `moat admin` of the Job
        # carries the admin certificate (CN moat-admin), never the edge or control one.
        calls = re.findall(r"moat admin\b[^;\n]*", job_script)
        self.assertEqual(len(calls), 2, job_script)
        for call in calls:
            self.assertIn(f"moat admin {ADMIN_TLS_FLAGS} cluster ", call)
        self.assertEqual(secret_volumes(job["spec"]["template"]["spec"]),
                         {ADMIN_TLS: f"{RELEASE}-admin-tls"})
        self.assertEqual(find(Rendered.get("defaults"), "Job"), [])
        log("replicas 5 over 3 founding members: pods 3-4 start with --join, hook Job "
            f"adds ids 4 and 5 with the admin certificate ({RELEASE}-admin-tls at {ADMIN_TLS}, "
            "--tls-ca/--tls-cert/--tls-key); no Job when replicas = founding members")

    def test_edges(self):
        for label in ("defaults", "ha"):
            objects = Rendered.get(label)
            svc = one(objects, "Service", f"{RELEASE}-edge")
            self.assertEqual(svc["spec"]["type"], "LoadBalancer")
            self.assertEqual(svc["spec"]["externalTrafficPolicy"], "Local")
            self.assertEqual(sorted(p["port"] for p in svc["spec"]["ports"]), [25, 465, 587])
            pod = one(objects, "Deployment", f"{RELEASE}-edge")["spec"]["template"]["spec"]
            container = pod["containers"][0]
            pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
            config = edge_toml(objects)
            drain = duration_seconds(config["drain-timeout"])
            grace = pod["terminationGracePeriodSeconds"]
            self.assertGreater(grace, pre_stop + drain)
            self.assertEqual(sorted(l["kind"] for l in config["listener"]),
                             ["mx", "smtps", "submission"])
            self.assertTrue(all(l["proxy-protocol"] is False for l in config["listener"]))
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            for listener in config["listener"]:
                self.assertEqual(listener["address"], f"0.0.0.0:{ports[listener['name']]}")
            args = container["args"]
            control = [a for a in args if a.startswith("--control=")][0]
            self.assertEqual(len(control.split(",")), 5 if label == "ha" else 3)
            # Internal mTLS (on by default): the edge certificate through [control-tls].
            self.assertEqual(config["control-tls"], {"ca": f"{INTERNAL_TLS}/ca.crt",
                                                     "cert": f"{INTERNAL_TLS}/tls.crt",
                                                     "key": f"{INTERNAL_TLS}/tls.key"})
            self.assertEqual(secret_volumes(pod)[INTERNAL_TLS], f"{RELEASE}-edge-tls")
            hpa = one(objects, "HorizontalPodAutoscaler")
            log(f"{label}: LoadBalancer externalTrafficPolicy Local on 25/587/465; grace "
                f"{grace}s > preStop {pre_stop}s + drain {drain:g}s; edge.toml parses "
                f"(listeners mx/submission/smtps, [control-tls] with the {RELEASE}-edge-tls "
                f"Secret); HPA {hpa['spec']['minReplicas']}.."
                f"{hpa['spec']['maxReplicas']}")
        hpa = one(Rendered.get("ha"), "HorizontalPodAutoscaler")
        self.assertEqual((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]), (3, 20))

    def test_proxy_protocol(self):
        config = edge_toml(manifests(render({"edge": {"proxyProtocol": True}})))
        self.assertTrue(all(l["proxy-protocol"] is True for l in config["listener"]))
        log("edge.proxyProtocol: true sets proxy-protocol on every listener")

    def test_grace_period_must_exceed_drain(self):
        with self.assertRaises(helm.HelmRenderError) as caught:
            render({"edge": {"terminationGracePeriodSeconds": 20}})
        self.assertIn("must exceed", str(caught.exception))
        log("terminationGracePeriodSeconds <= preStop + drain fails the render")

    def test_monitoring(self):
        defaults, ha = Rendered.get("defaults"), Rendered.get("ha")
        for label, objects in (("defaults", defaults), ("ha", ha)):
            dashboard = one(objects, "ConfigMap", f"{RELEASE}-dashboard")
            self.assertEqual(dashboard["metadata"]["labels"]["grafana_dashboard"], "1")
            parsed = json.loads(dashboard["data"]["moat.json"])
            self.assertIn("panels", parsed)
        self.assertEqual(find(defaults, "PrometheusRule"), [])
        self.assertEqual(find(defaults, "ServiceMonitor"), [])
        rule = one(ha, "PrometheusRule")
        self.assertTrue(rule["spec"]["groups"])
        monitors = find(ha, "ServiceMonitor")
        self.assertEqual(len(monitors), 2)
        for monitor in monitors:
            selector = monitor["spec"]["selector"]["matchLabels"]
            services = [s for s in find(ha, "Service")
                        if selector.items() <= s["metadata"]["labels"].items()]
            self.assertEqual(len(services), 1, monitor["metadata"]["name"])
            port_names = [p["name"] for p in services[0]["spec"]["ports"]]
            self.assertIn(monitor["spec"]["endpoints"][0]["port"], port_names)
        log(f"grafana dashboard ConfigMap (grafana_dashboard: \"1\", valid JSON) in both; "
            f"PrometheusRule and ServiceMonitors absent by default, present in ha "
            f"({len(rule['spec']['groups'])} rule groups; each ServiceMonitor selects one "
            f"Service with a status port)")

    def test_tls_sources(self):
        defaults, ha = Rendered.get("defaults"), Rendered.get("ha")
        secrets = {s["metadata"]["name"] for s in find(defaults, "Secret")}
        self.assertEqual(secrets, {f"{RELEASE}-admin-token", f"{RELEASE}-smtp-tls",
                                   f"{RELEASE}-generated-ca", f"{RELEASE}-control-tls",
                                   f"{RELEASE}-edge-tls", f"{RELEASE}-admin-tls"})
        self.assertEqual(find(defaults, "Certificate"), [])
        # ha: cert-manager for SMTP (a ClusterIssuer) and for internal mTLS (a private CA).
        certs = {c["metadata"]["name"]: c for c in find(ha, "Certificate")}
        self.assertEqual(set(certs), {f"{RELEASE}-smtp", f"{RELEASE}-internal-ca",
                                      f"{RELEASE}-control-tls", f"{RELEASE}-edge-tls",
                                      f"{RELEASE}-admin-tls"})
        self.assertEqual(certs[f"{RELEASE}-smtp"]["spec"]["issuerRef"]["kind"], "ClusterIssuer")
        self.assertEqual({s["metadata"]["name"] for s in find(ha, "Secret")},
                         {f"{RELEASE}-admin-token"})
        existing = manifests(render({
            "adminToken": {"existingSecret": "ops-token"},
            "tls": {"smtp": {"existingSecret": "mx-cert"},
                    "internal": {"existingSecret": {"control": "c", "edge": "e",
                                                    "admin": "a"}}},
        }))
        self.assertEqual(find(existing, "Secret"), [])
        log("defaults: chart-generated admin token, SMTP and internal mTLS Secrets (CA, "
            "control, edge, admin); ha: cert-manager Certificates for SMTP from a "
            "ClusterIssuer and for internal mTLS from a private CA; existing Secrets "
            "replace every generated one")

    def test_network_policy(self):
        objects = Rendered.get("defaults")
        control = one(objects, "NetworkPolicy", f"{RELEASE}-control")
        grpc_rule = control["spec"]["ingress"][0]
        components = sorted(p["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                            for p in grpc_rule["from"])
        self.assertEqual(components, ["admin", "control", "edge"])
        self.assertEqual(grpc_rule["ports"][0]["port"], "grpc")
        edge = one(objects, "NetworkPolicy", f"{RELEASE}-edge")
        smtp_rule = edge["spec"]["ingress"][0]
        self.assertNotIn("from", smtp_rule)
        log("NetworkPolicy: control gRPC from control/edge/admin pods only; SMTP from anywhere")


class InternalTlsTest(unittest.TestCase):
    """Internal gRPC mutual TLS: control, edge and admin certificates from one CA."""

    ROLES = {"control": "moat-control", "edge": "moat-edge", "admin": "moat-admin"}

    def assert_wired(self, objects: list[dict], secrets: dict[str, str]) -> None:
        """Control flags and mounts, edge.toml and mounts, for role -> Secret name."""
        sts = one(objects, "StatefulSet", f"{RELEASE}-control")["spec"]["template"]["spec"]
        self.assertIn(f'set -- "$@" {CONTROL_TLS_FLAGS}\n', control_script(objects))
        self.assertEqual(
            {k: v for k, v in secret_volumes(sts).items() if k != "/etc/moat/admin"},
            {INTERNAL_TLS: secrets["control"], ADMIN_TLS: secrets["admin"]})
        env = {e["name"]: e.get("value") for e in sts["containers"][0]["env"]}
        self.assertEqual({k: v for k, v in env.items() if k.startswith("MOAT_TLS_")},
                         {"MOAT_TLS_CA": f"{ADMIN_TLS}/ca.crt",
                          "MOAT_TLS_CERT": f"{ADMIN_TLS}/tls.crt",
                          "MOAT_TLS_KEY": f"{ADMIN_TLS}/tls.key"})
        edge = one(objects, "Deployment", f"{RELEASE}-edge")["spec"]["template"]["spec"]
        self.assertEqual(edge_toml(objects)["control-tls"],
                         {"ca": f"{INTERNAL_TLS}/ca.crt", "cert": f"{INTERNAL_TLS}/tls.crt",
                          "key": f"{INTERNAL_TLS}/tls.key"})
        self.assertEqual(secret_volumes(edge)[INTERNAL_TLS], secrets["edge"])
        self.assertNotIn(ADMIN_TLS, secret_volumes(edge))

    def test_generated_by_default(self):
        objects = Rendered.get("defaults")
        names = {role: f"{RELEASE}-{role}-tls" for role in self.ROLES}
        self.assert_wired(objects, names)
        secrets = {s["metadata"]["name"]: s for s in find(objects, "Secret")}
        ca_secret = secrets[f"{RELEASE}-generated-ca"]
        self.assertEqual(ca_secret["type"], "kubernetes.io/tls")
        ca_pem = base64.b64decode(ca_secret["data"]["tls.crt"]).decode()
        self.assertIn("CA:TRUE", openssl("x509", "-noout", "-ext", "basicConstraints",
                                         stdin=ca_pem))
        with tempfile.TemporaryDirectory() as tmp:
            ca_file = Path(tmp) / "ca.crt"
            ca_file.write_text(ca_pem)
            for role, cn in self.ROLES.items():
                with self.subTest(role):
                    secret = secrets[names[role]]
                    self.assertEqual(secret["type"], "kubernetes.io/tls")
                    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
                    self.assertEqual(set(data), {"tls.crt", "tls.key", "ca.crt"})
                    self.assertEqual(data["ca.crt"], ca_pem)
                    self.assertIn("PRIVATE KEY", data["tls.key"])
                    text = openssl("x509", "-noout", "-subject", "-nameopt", "RFC2253",
                                   "-ext", "subjectAltName,extendedKeyUsage",
                                   stdin=data["tls.crt"])
                    self.assertRegex(text, rf"(?m)^subject=CN={cn}$")
                    self.assertIn("TLS Web Client Authentication", text)
                    leaf = Path(tmp) / f"{role}.crt"
                    leaf.write_text(data["tls.crt"])
                    # The key belongs to the certificate.
                    self.assertEqual(
                        openssl("x509", "-noout", "-pubkey", stdin=data["tls.crt"]),
                        openssl("pkey", "-pubout", stdin=data["tls.key"]))
                    # Issued by the CA, valid for client authentication.
                    openssl("verify", "-CAfile", str(ca_file), "-purpose", "sslclient",
                            str(leaf))
                    if role == "control":
                        sans = re.findall(r"DNS:([^,\s]+)", text)
                        self.assertEqual(sans[0], "moat-control")
                        self.assertIn(f"*.{RELEASE}-control-headless.{NAMESPACE}.svc."
                                      "cluster.local", sans)
                        self.assertIn(f"{RELEASE}-control.{NAMESPACE}.svc.cluster.local",
                                      sans)
                        self.assertIn("TLS Web Server Authentication", text)
                        # What every client checks: the name moat-control, as a server.
                        openssl("verify", "-CAfile", str(ca_file), "-purpose", "sslserver",
                                "-verify_hostname", "moat-control", str(leaf))
                    else:
                        self.assertNotIn("DNS:", text)
                        with self.assertRaises(AssertionError):
                            openssl("verify", "-CAfile", str(ca_file), "-verify_hostname",
                                    "moat-control", str(leaf))
        log("defaults: a generated CA and three certificates issued by it (openssl verify): "
            "CN moat-control with DNS SAN moat-control and the headless/Service names "
            "(server+client auth), CN moat-edge and CN moat-admin (client auth, no SAN: "
            "not valid as moat-control); control args carry --tls-ca/--tls-cert/--tls-key, "
            "control pods mount the admin certificate with MOAT_TLS_*, edges read "
            "[control-tls]")

    def test_cert_manager(self):
        objects = Rendered.get("ha")
        names = {role: f"{RELEASE}-{role}-tls" for role in self.ROLES}
        self.assert_wired(objects, names)
        certs = {c["metadata"]["name"]: c["spec"] for c in find(objects, "Certificate")}
        issuers = {i["metadata"]["name"]: i["spec"] for i in find(objects, "Issuer")}
        self.assertEqual(set(issuers), {f"{RELEASE}-selfsigned", f"{RELEASE}-internal-ca"})
        self.assertTrue(certs[f"{RELEASE}-internal-ca"]["isCA"])
        self.assertEqual(issuers[f"{RELEASE}-internal-ca"]["ca"]["secretName"],
                         certs[f"{RELEASE}-internal-ca"]["secretName"])
        for role, cn in self.ROLES.items():
            with self.subTest(role):
                spec = certs[names[role]]
                self.assertEqual(spec["secretName"], names[role])
                self.assertEqual(spec["commonName"], cn)
                self.assertEqual(spec["issuerRef"]["name"], f"{RELEASE}-internal-ca")
                self.assertIn("client auth", spec["usages"])
                if role == "control":
                    self.assertEqual(spec["dnsNames"][0], "moat-control")
                    self.assertIn(f"*.{RELEASE}-control-headless.{NAMESPACE}.svc."
                                  "cluster.local", spec["dnsNames"])
                    self.assertIn("server auth", spec["usages"])
                else:
                    self.assertNotIn("dnsNames", spec)
                    self.assertNotIn("server auth", spec["usages"])
        # An issuer of one's own: no private CA objects.
        values = load_values(HA_VALUES)
        values["tls"]["internal"]["certManager"]["issuerRef"] = {
            "name": "internal-ca", "kind": "ClusterIssuer"}
        own = manifests(render(values))
        self.assertEqual(find(own, "Issuer"), [])
        self.assertEqual({c["metadata"]["name"] for c in find(own, "Certificate")},
                         {f"{RELEASE}-smtp", *names.values()})
        for cert in find(own, "Certificate"):
            if cert["metadata"]["name"] != f"{RELEASE}-smtp":
                self.assertEqual(cert["spec"]["issuerRef"]["name"], "internal-ca")
        log("ha (cert-manager): self-signed Issuer -> CA Certificate -> CA Issuer, then "
            "Certificates with commonName moat-control (dnsNames moat-control, headless "
            "and Service names; server+client auth), moat-edge and moat-admin (client auth); "
            "with issuerRef.name set, no private CA objects")

    def test_existing_secrets(self):
        existing = {"control": "ops-control", "edge": "ops-edge", "admin": "ops-admin"}
        values = {"control": {"replicas": 5, "foundingMembers": 3},
                  "tls": {"internal": {"existingSecret": existing,
                                       "certManager": {"enabled": True}}}}
        objects = manifests(render(values))
        self.assertEqual({s["metadata"]["name"] for s in find(objects, "Secret")},
                         {f"{RELEASE}-admin-token", f"{RELEASE}-smtp-tls"})
        self.assertEqual(find(objects, "Certificate"), [])
        self.assertEqual(find(objects, "Issuer"), [])
        self.assert_wired(objects, existing)
        job = one(objects, "Job")["spec"]["template"]["spec"]
        self.assertEqual(secret_volumes(job), {ADMIN_TLS: "ops-admin"})
        for partial in ({"control": "c", "edge": "", "admin": "a"},
                        {"control": "c", "edge": "e", "admin": ""}):
            with self.subTest(json.dumps(partial)):
                with self.assertRaises(helm.HelmRenderError) as caught:
                    render({"tls": {"internal": {"existingSecret": partial}}})
                self.assertIn("set all three of control, edge and admin", str(caught.exception))
        with self.assertRaises(helm.HelmValuesError) as caught:
            render({"tls": {"internal": {"existingSecret": {"client": "c"}}}})
        self.assertIn("/tls/internal/existingSecret", str(caught.exception))
        log("existingSecret control/edge/admin: no generated Secret or Certificate (even "
            "with certManager.enabled), the named Secrets mounted in control pods, edges and "
            "the Job; only some of the three fails the render; the old `client` key is "
            "refused by the schema")

    def test_disabled(self):
        values = {"control": {"replicas": 5, "foundingMembers": 3},
                  "tls": {"internal": {"enabled": False}}}
        objects = manifests(render(values))
        self.assertEqual({s["metadata"]["name"] for s in find(objects, "Secret")},
                         {f"{RELEASE}-admin-token", f"{RELEASE}-smtp-tls"})
        self.assertNotIn("--tls-", control_script(objects))
        sts = one(objects, "StatefulSet")["spec"]["template"]["spec"]
        self.assertEqual(set(secret_volumes(sts)), {"/etc/moat/admin"})
        self.assertFalse([e for e in sts["containers"][0]["env"]
                          if e["name"].startswith("MOAT_TLS_")])
        self.assertNotIn("control-tls", edge_toml(objects))
        edge = one(objects, "Deployment")["spec"]["template"]["spec"]
        self.assertEqual(set(secret_volumes(edge)), {"/etc/moat/tls"})
        job = one(objects, "Job")["spec"]["template"]["spec"]
        self.assertNotIn("--tls-", job["containers"][0]["command"][2])
        self.assertEqual(secret_volumes(job), {})
        notes = render(values)[f"{RELEASE}/templates/NOTES.txt"]
        self.assertIn("control nodes refuse every admin call", notes)
        log("tls.internal.enabled false: no internal Secrets, no --tls-* flags, no "
            "[control-tls], no certificate mounts (NOTES warn that admin calls are refused)")


def main() -> int:
    print(f"Moat Helm chart: {CHART.relative_to(ROOT)} (Kubernetes {KUBE_VERSION})", flush=True)
    start = time.monotonic()
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"elapsed {time.monotonic() - start:.1f}s")
    print(f"helm: {passed} passed, {failed} failed")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
