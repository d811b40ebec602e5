#!/usr/bin/env python3
"""Structural and cross-file checks for deploy/ (called by deploy/check.sh).

Parses every YAML/JSON file, checks the dashboard and alert rules against passgate's metric
contract, and checks that the Kubernetes manifests agree with each other and with the config.
Writes, into OUTDIR, the dashboard's queries as a rule file (for `promtool check rules`) and the
ConfigMap's passgate.yaml (for `passgate check`). Usage: check_structure.py REPO_ROOT OUTDIR
"""
import json
import os
import re
import sys

import yaml

ROOT, OUT = sys.argv[1], sys.argv[2]
D = os.path.join(ROOT, "deploy")
errors = []


def err(msg):
    errors.append(msg)
    print(f"  - {msg}")


def load_yaml(rel):
    with open(os.path.join(D, rel)) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# The metric contract: names and label sets the gateway exports (docs/operations.md, "Metrics").
# Histograms are listed by base name; _bucket/_sum/_count are accepted.
CONTRACT = {
    "passgate_requests_total": {"route", "decision", "reason"},
    "passgate_request_duration_seconds": {"decision"},
    "passgate_stage_duration_seconds": {"stage"},
    "passgate_upstream_responses_total": {"class"},
    "passgate_rate_limited_total": {"policy", "scope"},
    "passgate_app_token_refreshes_total": {"result"},
    "passgate_jwks_refreshes_total": {"result"},
    "passgate_device_facts_cache_total": {"result"},
    "passgate_audit_records_total": set(),
    "passgate_audit_fsync_duration_seconds": set(),
    "passgate_audit_write_failures_total": {"kind"},
    "passgate_config_reloads_total": {"result"},
    "passgate_config_last_reload_success_timestamp_seconds": set(),
    "passgate_build_info": {"version"},
    "passgate_in_flight_requests": set(),
    "passgate_state_duration_seconds": {"backend", "op"},
    "passgate_state_errors_total": {"backend", "kind"},
    "passgate_config_restart_required": set(),
    "passgate_unauthenticated_throttled_total": {"reason"},
    "passgate_unauthenticated_throttled_clients": set(),
    "passgate_audit_free_bytes": set(),
    "passgate_audit_min_free_bytes": set(),
    "passgate_approval_events_total": {"event"},
    "passgate_approval_notifications_total": {"result"},
    "passgate_break_glass_total": {"policy"},
    "passgate_console_events_total": {"event", "result"},
    "passgate_report_policy_decisions_total": {"policy", "decision", "reason"},
    "passgate_graph_requests_in_flight": set(),
    "passgate_graph_max_concurrent_requests": set(),
    "passgate_max_requests_in_flight": set(),
    "passgate_shed_requests_total": {"listener"},
}
HISTOGRAMS = {"passgate_request_duration_seconds", "passgate_stage_duration_seconds",
              "passgate_audit_fsync_duration_seconds", "passgate_state_duration_seconds"}
METRIC_RE = re.compile(r"\bpassgate_[a-z_]+\b")
# Label matchers directly following a metric name: name{a="x", b=~"y"}.
SELECTOR_RE = re.compile(r"\b(passgate_[a-z_]+)\{([^}]*)\}")
TARGET_LABELS = {"job", "instance", "le"}


def base_name(m):
    for suffix in ("_bucket", "_sum", "_count"):
        if m.endswith(suffix) and m[: -len(suffix)] in HISTOGRAMS:
            return m[: -len(suffix)]
    return m


def check_exprs(where, expr):
    """Every passgate_* name must be in the contract, with only its labels matched."""
    used = set()
    for m in METRIC_RE.findall(expr):
        b = base_name(m)
        if b not in CONTRACT:
            err(f"{where}: unknown metric {m} (not in passgate's metric contract)")
        elif m != b and m.rsplit("_", 1)[1] not in ("bucket", "sum", "count"):
            err(f"{where}: bad histogram series {m}")
        used.add(b)
    for name, matchers in SELECTOR_RE.findall(expr):
        b = base_name(name)
        for label in re.findall(r"([a-zA-Z_]+)\s*(?:=~|!~|!=|=)", matchers):
            allowed = CONTRACT.get(b, set()) | TARGET_LABELS
            if label not in allowed:
                err(f"{where}: {name} has no label {label!r}")
    return used


# ---- every file parses ------------------------------------------------------------------------
for dirpath, _, files in os.walk(D):
    for fn in files:
        p = os.path.join(dirpath, fn)
        rel = os.path.relpath(p, D)
        try:
            if fn.endswith((".yaml", ".yml")):
                with open(p) as f:
                    list(yaml.safe_load_all(f))
            elif fn.endswith(".json"):
                with open(p) as f:
                    json.load(f)
        except Exception as e:  # noqa: BLE001 - report any parse error as a failure
            err(f"{rel}: does not parse: {e}")

# ---- Grafana dashboard ------------------------------------------------------------------------
with open(os.path.join(D, "grafana/passgate-dashboard.json")) as f:
    dash = json.load(f)
if dash.get("schemaVersion") != 39:
    err("dashboard: schemaVersion must be 39")
tvars = {v["name"]: v for v in dash.get("templating", {}).get("list", [])}
if tvars.get("DS_PROMETHEUS", {}).get("type") != "datasource":
    err("dashboard: needs a datasource variable DS_PROMETHEUS")
ids, dash_used, rules = set(), set(), []
for p in dash["panels"]:
    if p["id"] in ids:
        err(f"dashboard: duplicate panel id {p['id']}")
    ids.add(p["id"])
    g = p["gridPos"]
    if g["x"] + g["w"] > 24:
        err(f"dashboard: panel {p['title']!r} is wider than the grid")
    for q in dash["panels"]:
        h = q["gridPos"]
        if q["id"] < p["id"] and (g["x"] < h["x"] + h["w"] and h["x"] < g["x"] + g["w"]
                                  and g["y"] < h["y"] + h["h"] and h["y"] < g["y"] + g["h"]):
            err(f"dashboard: panels {p['title']!r} and {q['title']!r} overlap")
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
        err(f"dashboard: panel {p['title']!r} does not use ${{DS_PROMETHEUS}}")
    if not p.get("targets"):
        err(f"dashboard: panel {p['title']!r} has no query")
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${DS_PROMETHEUS}":
            err(f"dashboard: a query of {p['title']!r} does not use ${{DS_PROMETHEUS}}")
        where = f"dashboard panel {p['title']!r}"
        dash_used |= check_exprs(where, t["expr"])
        concrete = (t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
                    .replace("$__interval", "1m").replace("$job", "passgate").replace("$instance", ".*"))
        if "$" in concrete:
            err(f"{where}: unknown variable in {t['expr']!r}")
        rules.append({"record": f"dashboard:q{len(rules)}", "expr": concrete})
missing = set(CONTRACT) - dash_used
if missing:
    err(f"dashboard: no panel shows {sorted(missing)}")
with open(os.path.join(OUT, "dashboard-queries.rules.yaml"), "w") as f:
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)

# ---- alert rules -------------------------------------------------------------------------------
(alerts,) = load_yaml("prometheus/passgate-alerts.yaml")
names = set()
for g in alerts["groups"]:
    for r in g["rules"]:
        a = r.get("alert", "?")
        if a in names:
            err(f"alerts: duplicate alert {a}")
        names.add(a)
        if "for" not in r:
            err(f"alerts: {a} has no `for:`")
        if r.get("labels", {}).get("severity") not in ("critical", "warning"):
            err(f"alerts: {a} needs severity critical|warning")
        ann = r.get("annotations", {})
        if not ann.get("summary") or not ann.get("description"):
            err(f"alerts: {a} needs summary and description annotations")
        check_exprs(f"alert {a}", r["expr"])
        if "passgate_" in r["expr"] and 'job="passgate"' not in r["expr"]:
            err(f"alerts: {a} should select job=\"passgate\"")
(tests,) = load_yaml("prometheus/passgate-alerts.test.yaml")
with open(os.path.join(D, "prometheus/passgate-alerts.test.yaml")) as f:
    tested = set(re.findall(r'alertname="([A-Za-z]+)", alertstate="firing"', f.read()))
tested |= {t["alertname"] for tc in tests["tests"] for t in tc.get("alert_rule_test", [])}
if names - tested:
    err(f"alerts: no unit test expects {sorted(names - tested)} to fire")

# ---- Kubernetes --------------------------------------------------------------------------------
K = "kubernetes"
(cm,) = load_yaml(f"{K}/configmap.yaml")
cfg_text = cm["data"]["passgate.yaml"]
cfg = yaml.safe_load(cfg_text)
with open(os.path.join(OUT, "configmap-passgate.yaml"), "w") as f:
    f.write(cfg_text)
if cfg.get("admin", {}).get("listen") != "0.0.0.0:9090":
    err("configmap: admin.listen must be 0.0.0.0:9090 (probes and Prometheus reach the pod IP)")
if cfg["server"]["listen"] != "0.0.0.0:8443":
    err("configmap: server.listen must be 0.0.0.0:8443 (the containerPort)")
if not cfg["audit"]["path"].startswith("/var/lib/passgate/"):
    err("configmap: audit.path must be on the /var/lib/passgate volume")
secret_ref = cfg["app"].get("client_secret", "")

(deploy,) = load_yaml(f"{K}/deployment.yaml")
sts_docs = load_yaml(f"{K}/statefulset.yaml")
sts = next(d for d in sts_docs if d["kind"] == "StatefulSet")
secrets = {d["metadata"]["name"]: d for d in load_yaml(f"{K}/secret.yaml")}

for s in secrets.values():
    for k, v in s.get("stringData", {}).items():
        if "REPLACE-ME" not in v:
            err(f"secret.yaml: {s['metadata']['name']}/{k} must stay a REPLACE-ME placeholder")
    if "data" in s:
        err(f"secret.yaml: {s['metadata']['name']} must use stringData placeholders, not data")

for wl in (deploy, sts):
    kind = wl["kind"]
    spec = wl["spec"]["template"]["spec"]
    if wl["spec"]["replicas"] != 2:
        err(f"{kind}: 2 replicas expected")
    psc = spec.get("securityContext", {})
    if not psc.get("runAsNonRoot") or psc.get("runAsUser") != 65532:
        err(f"{kind}: pod must run as non-root uid 65532")
    (c,) = spec["containers"]
    sc = c.get("securityContext", {})
    want = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True}
    for k, v in want.items():
        if sc.get(k) != v:
            err(f"{kind}: container securityContext.{k} must be {v}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        err(f"{kind}: capabilities.drop must be [ALL]")
    if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err(f"{kind}: seccompProfile RuntimeDefault required")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports != {"gateway": 8443, "admin": 9090}:
        err(f"{kind}: ports must be gateway 8443, admin 9090")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        hg = c.get(probe, {}).get("httpGet", {})
        if hg.get("path") != path or hg.get("port") != "admin":
            err(f"{kind}: {probe} must GET {path} on the admin port")
    env = {e["name"]: e for e in c.get("env", [])}
    if secret_ref.startswith("env:"):
        name = secret_ref[4:]
        ref = env.get(name, {}).get("valueFrom", {}).get("secretKeyRef", {})
        if ref.get("name") not in secrets or ref.get("key") not in secrets[ref.get("name")].get("stringData", {}):
            err(f"{kind}: env {name} (config app.client_secret) must come from a key of a Secret in secret.yaml")
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    if "/var/lib/passgate" not in mounts:
        err(f"{kind}: /var/lib/passgate must be a volume (read-only root filesystem)")
    etc = vols.get(mounts.get("/etc/passgate"), {})
    projected = {}
    for src in etc.get("projected", {}).get("sources", []):
        (kind_src, body), = src.items()
        for it in body.get("items", []):
            projected["/etc/passgate/" + it["path"]] = (kind_src, body["name"], it["key"])
    if projected.get("/etc/passgate/passgate.yaml", (None, None))[:2] != ("configMap", cm["metadata"]["name"]):
        err(f"{kind}: /etc/passgate/passgate.yaml (the image CMD's config) must come from the ConfigMap")
    for key in ("cert_file", "key_file"):
        path = cfg["server"]["tls"][key]
        src = projected.get(path)
        if not src or src[0] != "secret" or src[1] not in secrets:
            err(f"{kind}: server.tls.{key} {path} is not mounted from a Secret in secret.yaml")

dt = json.loads(json.dumps(deploy["spec"]["template"]))
dt["spec"]["volumes"] = [v for v in dt["spec"]["volumes"] if v["name"] != "state"]
if dt != sts["spec"]["template"]:
    err("deployment.yaml and statefulset.yaml pod templates differ (beyond the state volume)")
if [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])] != ["state"]:
    err("statefulset: needs volumeClaimTemplates [state] for the audit log")
if sts["spec"]["serviceName"] not in {d["metadata"]["name"] for d in sts_docs if d["kind"] == "Service"}:
    err("statefulset: serviceName must name the headless Service defined beside it")

svcs = {d["metadata"]["name"]: d for d in load_yaml(f"{K}/service.yaml")}
gw_ports = {p.get("targetPort") for p in svcs["passgate"]["spec"]["ports"]}
if gw_ports != {"gateway"} or svcs["passgate"]["spec"]["ports"][0]["port"] != 443:
    err("service passgate: must expose only 443 → gateway")
adm = svcs.get("passgate-admin", {}).get("spec", {})
if adm.get("type", "ClusterIP") != "ClusterIP" or [p["name"] for p in adm.get("ports", [])] != ["admin"]:
    err("service passgate-admin: ClusterIP with the admin port only")
(sm,) = load_yaml(f"{K}/servicemonitor.yaml")
adm_labels = svcs["passgate-admin"]["metadata"]["labels"]
if any(adm_labels.get(k) != v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
    err("servicemonitor: selector does not match Service passgate-admin")
if adm_labels.get(sm["spec"].get("jobLabel", ""), "") != "passgate":
    err("servicemonitor: jobLabel must yield job=\"passgate\" (the alert rules' job)")
ep = sm["spec"]["endpoints"][0]
if (ep.get("port"), ep.get("path"), ep.get("interval")) != ("admin", "/metrics", "30s"):
    err("servicemonitor: scrape port admin, path /metrics, every 30s")

(kz,) = load_yaml(f"{K}/kustomization.yaml")
for r in kz["resources"]:
    if not os.path.exists(os.path.join(D, K, r)):
        err(f"kustomization: missing resource {r}")
if ("deployment.yaml" in kz["resources"]) == ("statefulset.yaml" in kz["resources"]):
    err("kustomization: list exactly one of deployment.yaml and statefulset.yaml")

# ---- Dockerfile (no engine needed: read the instructions) --------------------------------------
with open(os.path.join(D, "Dockerfile")) as f:
    dockerfile = f.read()
if not dockerfile.startswith("# syntax=docker/dockerfile:1"):
    err("Dockerfile: first line must be the BuildKit syntax directive (cache mounts need it)")
instr = []
for line in re.sub(r"\\\n", " ", dockerfile).splitlines():
    line = line.strip()
    if line and not line.startswith("#"):
        op, _, rest = line.partition(" ")
        instr.append((op.upper(), rest.strip()))
args = {k: v for op, rest in instr if op == "ARG" and "=" in rest for k, v in [rest.split("=", 1)]}
froms = [rest for op, rest in instr if op == "FROM"]
final = instr[max(i for i, (op, _) in enumerate(instr) if op == "FROM"):]
if len(froms) != 2 or not re.fullmatch(r"rust:\d+\.\d+-bookworm", args.get("RUST_IMAGE", "")):
    err("Dockerfile: two stages, the builder pinned to rust:X.Y-bookworm")
if args.get("RUNTIME_IMAGE") != "gcr.io/distroless/cc-debian12:nonroot":
    err("Dockerfile: runtime must be gcr.io/distroless/cc-debian12:nonroot (glibc of bookworm)")
if not any(op == "RUN" and "cargo build --release --locked" in rest for op, rest in instr):
    err("Dockerfile: must build with cargo build --release --locked")
last = {op: rest for op, rest in final}
expect = {"USER": "65532:65532", "ENTRYPOINT": '["/usr/local/bin/passgate"]',
          "CMD": '["serve", "--config", "/etc/passgate/passgate.yaml"]', "EXPOSE": "8443 9090",
          "VOLUME": '["/var/lib/passgate"]'}
for op, want in expect.items():
    if last.get(op) != want:
        err(f"Dockerfile: final stage {op} must be {want} (is {last.get(op)})")
if any(op == "RUN" for op, _ in final):
    err("Dockerfile: the distroless stage has no shell, RUN cannot work there")
cmd = json.loads(last.get("CMD", "[]"))
if cmd[-1:] != ["/etc/passgate/passgate.yaml"]:
    err("Dockerfile: CMD must read /etc/passgate/passgate.yaml (what the Kubernetes pods mount)")

print(f"  {len(errors)} problem(s); dashboard: {len(rules)} queries, alerts: {len(names)} rules")
sys.exit(1 if errors else 0)
