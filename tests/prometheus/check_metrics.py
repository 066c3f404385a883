#!/usr/bin/env python3
"""Checks Moat's alert rules and Grafana dashboard against the metrics contract.

Usage: check_metrics.py RULES.yaml DASHBOARD.json OUT_RULES.yaml

- Every PromQL expression (rule `expr`, dashboard panel targets, `label_values(...)` variables)
  may name only series Moat exports (the contract below; histograms with _bucket/_count/_sum).
- The dashboard keeps its identity: uid "moat-overview", title "Moat", schemaVersion 39, a
  `datasource` variable of type datasource (prometheus) that every panel and target uses.
- The dashboard's expressions, with Grafana's variables replaced by plain values, are written
  to OUT_RULES.yaml as recording rules so that `promtool check rules` parses each of them.

Exits 1 with a list of problems, 0 otherwise. Needs only the standard library (PyYAML, when
installed, is used to read the rule file; otherwise its `expr:` entries are found by hand).
"""

import json
import re
import sys

GAUGES_AND_COUNTERS = {
    # edge
    "moat_edge_sessions_total",
    "moat_edge_sessions_active",
    "moat_edge_replies_total",
    "moat_edge_tls_handshakes_total",
    "moat_edge_next_hop_failures_total",
    "moat_edge_next_hop_up",
    "moat_edge_policy_version",
    "moat_edge_policy_parts_total",
    "moat_edge_policy_bytes_total",
    "moat_edge_policy_age_seconds",
    "moat_edge_control_connected",
    "moat_edge_restricted_entities",
    "moat_edge_onprem_enforced_servers",
    "moat_edge_onprem_refusals_total",
    # control
    "moat_control_raft_term",
    "moat_control_raft_leader_id",
    "moat_control_raft_is_leader",
    "moat_control_raft_commit_index",
    "moat_control_raft_applied_index",
    "moat_control_raft_voters",
    "moat_control_policy_version",
    "moat_control_policy_parts_sent_total",
    "moat_control_edges_policy_mismatch",
    "moat_control_restricted_entities",
    "moat_control_onprem_servers",
    "moat_control_alert_deliveries_total",
    "moat_control_alerts_undelivered",
    "moat_control_edges_watching",
    "moat_control_signal_batches_total",
}
HISTOGRAMS = {
    "moat_edge_tls_handshake_duration_seconds",
    "moat_edge_transaction_duration_seconds",
    "moat_edge_next_hop_duration_seconds",
    "moat_control_raft_proposal_duration_seconds",
}
CONTRACT = set(GAUGES_AND_COUNTERS)
for h in HISTOGRAMS:
    CONTRACT |= {h + "_bucket", h + "_count", h + "_sum"}

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
}
FUNCTIONS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile",
    # functions used or plausible in these files
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "delta", "deriv", "floor", "histogram_quantile", "idelta", "increase", "irate",
    "label_replace", "label_join", "max_over_time", "min_over_time", "avg_over_time",
    "sum_over_time", "count_over_time", "last_over_time", "quantile_over_time",
    "present_over_time", "predict_linear", "rate", "resets", "round", "scalar", "sort",
    "sort_desc", "time", "timestamp", "vector", "sgn",
}


def metric_names(expr):
    """Series names an expression selects (with the unknown identifiers it contains)."""
    e = re.sub(r"\$\{?\w+(?::\w+)?\}?", "X", expr)          # Grafana variables
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', e)               # strings
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"\{[^{}]*\}", " ", e)                       # label matchers
    e = re.sub(r"\[[^\[\]]*\]", " ", e)                     # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", e)
    e = re.sub(r"#[^\n]*", " ", e)                          # comments
    names, unknown = set(), set()
    for m in re.finditer(r"(?<![A-Za-z0-9_.:])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call and word in FUNCTIONS:
            continue
        if word in KEYWORDS or word == "X":
            continue
        if word.startswith("moat_"):
            names.add(word)
        else:
            unknown.add(word)
    return names, unknown


def rule_exprs(path):
    text = open(path, encoding="utf-8").read()
    try:
        import yaml  # noqa: PLC0415
    except ImportError:
        yaml = None
    if yaml is not None:
        doc = yaml.safe_load(text)
        return [
            (r.get("alert") or r.get("record"), r["expr"])
            for g in doc["groups"]
            for r in g["rules"]
        ]
    # Without PyYAML: `expr: |` blocks (more indented lines) and one-line `expr: ...`.
    out, lines, i = [], text.splitlines(), 0
    name = "?"
    while i < len(lines):
        line = lines[i]
        m = re.match(r"\s*- (?:alert|record):\s*(\S+)", line)
        if m:
            name = m.group(1)
        m = re.match(r"(\s*)expr:\s*(.*)$", line)
        if m:
            indent, rest = len(m.group(1)), m.group(2)
            if rest.startswith(("|", ">")):
                body, i = [], i + 1
                while i < len(lines) and (not lines[i].strip() or
                                          len(lines[i]) - len(lines[i].lstrip()) > indent):
                    body.append(lines[i])
                    i += 1
                out.append((name, "\n".join(body)))
                continue
            out.append((name, rest))
        i += 1
    return out


def walk_panels(panels):
    for p in panels:
        yield p
        yield from walk_panels(p.get("panels", []))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    rules_path, dash_path, out_path = sys.argv[1:]
    problems = []

    def check(where, expr):
        names, unknown = metric_names(expr)
        for n in sorted(names - CONTRACT):
            problems.append(f"{where}: {n} is not in the metrics contract")
        for u in sorted(unknown):
            problems.append(f"{where}: `{u}` is neither a Moat metric nor a known function")
        if not names and "vector(" not in expr and "absent(" not in expr:
            problems.append(f"{where}: selects no Moat metric")
        return names

    rules = rule_exprs(rules_path)
    if not rules:
        problems.append(f"{rules_path}: no rules found")
    for name, expr in rules:
        check(f"rule {name}", expr)

    with open(dash_path, encoding="utf-8") as f:
        d = json.load(f)
    for key, want in (("uid", "moat-overview"), ("title", "Moat"), ("schemaVersion", 39)):
        if d.get(key) != want:
            problems.append(f"dashboard {key} is {d.get(key)!r}, want {want!r}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        problems.append("dashboard needs a `datasource` variable of type datasource, query prometheus")
    want_ds = {"type": "prometheus", "uid": "${datasource}"}

    exprs, ids, used = [], set(), set()
    for v in variables.values():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != want_ds:
            problems.append(f"variable {v['name']}: datasource is not ${{datasource}}")
        query = v["query"]["query"] if isinstance(v.get("query"), dict) else v.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
        where = f"variable {v['name']}"
        if m:
            used |= check(where, m.group(1))
            exprs.append((where, m.group(1)))
        else:
            used |= check(where, query)
            exprs.append((where, query))
    for p in walk_panels(d.get("panels", [])):
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        if p.get("id") in ids:
            problems.append(f"{where}: duplicate id")
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f"{where}: no gridPos")
        if p.get("datasource") != want_ds:
            problems.append(f"{where}: datasource is not ${{datasource}}")
        targets = p.get("targets", [])
        if not targets:
            problems.append(f"{where}: no targets")
        for t in targets:
            if t.get("datasource") != want_ds:
                problems.append(f"{where} target {t.get('refId')}: datasource is not ${{datasource}}")
            used |= check(f"{where} target {t.get('refId')}", t.get("expr", ""))
            exprs.append((f"{where} target {t.get('refId')}", t.get("expr", "")))

    # Grafana's variables replaced by values promtool accepts.
    def plain(expr):
        expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m")
        expr = expr.replace("$__range", "1h")
        return re.sub(r"\$\{?\w+\}?", ".*", expr)

    with open(out_path, "w", encoding="utf-8") as out:
        out.write("# Generated by check_metrics.py from the dashboard, for promtool.\n")
        out.write("groups:\n  - name: dashboard\n    rules:\n")
        for i, (where, expr) in enumerate(exprs):
            out.write(f"      # {where}\n")
            out.write(f"      - record: dashboard:expr_{i}\n")
            out.write(f"        expr: {json.dumps(plain(expr))}\n")

    if problems:
        print("\n".join(problems))
        sys.exit(1)
    print(
        f"OK: {len(rules)} rules and {len(exprs)} dashboard queries use only contract metrics "
        f"({len(used)} distinct series names in the dashboard)"
    )


if __name__ == "__main__":
    main()
