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
    ConfigMap, monitoring objects only when asked for, the scale-up path.

Run: python3 tests/helm/test_chart.py   (dependencies: tests/helm/requirements.txt)
"""

from __future__ import annotations

import json
import re
import sys
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
        self.assertEqual(find(Rendered.get("defaults"), "Job"), [])
        log("replicas 5 over 3 founding members: pods 3-4 start with --join, hook Job "
            "adds ids 4 and 5; no Job when replicas = founding members")

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
            # Internal mTLS is off by default (the binary does not take its flags yet).
            self.assertNotIn("control-tls", config)
            hpa = one(objects, "HorizontalPodAutoscaler")
            log(f"{label}: LoadBalancer externalTrafficPolicy Local on 25/587/465; grace "
                f"{grace}s > preStop {pre_stop}s + drain {drain:g}s; edge.toml parses "
                f"(listeners mx/submission/smtps); HPA {hpa['spec']['minReplicas']}.."
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
        self.assertEqual(secrets, {f"{RELEASE}-admin-token", f"{RELEASE}-smtp-tls"})
        self.assertEqual(find(defaults, "Certificate"), [])
        self.assertEqual({c["metadata"]["name"] for c in find(ha, "Certificate")},
                         {f"{RELEASE}-smtp"})
        # The internal mTLS plumbing, rendered on request (off by default and in ha).
        internal = manifests(render({"tls": {"internal": {"enabled": True}}}))
        self.assertEqual({s["metadata"]["name"] for s in find(internal, "Secret")},
                         {f"{RELEASE}-admin-token", f"{RELEASE}-smtp-tls",
                          f"{RELEASE}-control-tls", f"{RELEASE}-client-tls"})
        self.assertIn("control-tls", edge_toml(internal))
        ha_values = load_values(HA_VALUES)
        ha_values["tls"]["internal"] = {"enabled": True, "certManager": {"enabled": True}}
        ha = manifests(render(ha_values))
        certs = {c["metadata"]["name"]: c for c in find(ha, "Certificate")}
        self.assertEqual(set(certs), {f"{RELEASE}-smtp", f"{RELEASE}-internal-ca",
                                      f"{RELEASE}-control-tls", f"{RELEASE}-client-tls"})
        self.assertEqual(certs[f"{RELEASE}-smtp"]["spec"]["issuerRef"]["kind"], "ClusterIssuer")
        self.assertIn(f"*.{RELEASE}-control-headless.{NAMESPACE}.svc.cluster.local",
                      certs[f"{RELEASE}-control-tls"]["spec"]["dnsNames"])
        self.assertEqual({s["metadata"]["name"] for s in find(ha, "Secret")},
                         {f"{RELEASE}-admin-token"})
        sts = one(internal, "StatefulSet")
        script = sts["spec"]["template"]["spec"]["containers"][0]["command"][2]
        self.assertIn("--tls-ca /etc/moat/internal-tls/ca.crt", script)
        self.assertIn("--admin-token-file /etc/moat/admin/token", script)
        existing = manifests(render({
            "adminToken": {"existingSecret": "ops-token"},
            "tls": {"smtp": {"existingSecret": "mx-cert"},
                    "internal": {"existingSecret": {"control": "c", "client": "e"}}},
        }))
        self.assertEqual(find(existing, "Secret"), [])
        log("defaults: chart-generated admin token and SMTP Secrets; ha: a cert-manager "
            "Certificate for SMTP from a ClusterIssuer; internal mTLS on request: generated "
            "Secrets, or cert-manager Certificates from a private CA; existing Secrets "
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
