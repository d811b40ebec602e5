#!/usr/bin/env bash
# Static checks for everything under deploy/: Prometheus rules (syntax + unit tests) and scrape
# config, Grafana dashboard, Kubernetes manifests, systemd unit, Dockerfile toolchain pin, and the
# example config against `passgate check`. Runs from anywhere; exits non-zero if any check fails.
#
# Installs Debian's `prometheus` package when promtool is missing (it ships promtool; the
# service is not started: a policy-rc.d forbids it during the install). Needs root for that, or
# promtool already on PATH. Optional tools are used when present and reported as SKIP otherwise:
# kubectl (kustomize build), kubernetes-validate (schema check, pip-installed into a temporary
# venv if possible), systemd-analyze (unit verify + exposure score), cargo (dependency MSRV),
# a passgate binary ($PASSGATE_BIN, or target/{release,debug}/passgate).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cd "$root" || exit 2

failures=0
tmp=$(mktemp -d)
created_policy_rc=""
cleanup() {
  rm -rf "$tmp"
  [ -n "$created_policy_rc" ] && rm -f /usr/sbin/policy-rc.d
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failures=$((failures + 1)); }
skip() { printf 'SKIP: %s\n' "$*"; }
run() { # run DESCRIPTION CMD...: prints the command's output only when it fails
  local desc=$1; shift
  if "$@" >"$tmp/out" 2>&1; then ok "$desc"; else cat "$tmp/out"; fail "$desc"; fi
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo "$@"; else return 1; fi
}

apt_install() { # apt_install PKG...: never starts services
  command -v apt-get >/dev/null 2>&1 || return 1
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null || return 1
    as_root chmod 0755 /usr/sbin/policy-rc.d
    created_policy_rc=yes
  fi
  as_root apt-get update -qq &&
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# ---------------------------------------------------------------------------------------------
step "tools"
if ! command -v promtool >/dev/null 2>&1; then
  echo "promtool missing: installing Debian's prometheus package (service not started)"
  apt_install prometheus >"$tmp/apt.log" 2>&1 || { tail -20 "$tmp/apt.log"; }
fi
if command -v promtool >/dev/null 2>&1; then
  ok "$(promtool --version 2>&1 | head -1)"
else
  fail "promtool unavailable (install the prometheus package, or put promtool on PATH)"
fi

PY=python3
if ! "$PY" -c 'import yaml' 2>/dev/null; then
  echo "PyYAML missing: trying pip, then Debian's python3-yaml"
  "$PY" -m pip install --quiet pyyaml >/dev/null 2>&1 ||
    { apt_install python3-yaml >"$tmp/apt-yaml.log" 2>&1 && PY=/usr/bin/python3; }
fi
if "$PY" -c 'import yaml' 2>/dev/null; then ok "PyYAML ($PY)"; else fail "PyYAML unavailable"; fi

# ---------------------------------------------------------------------------------------------
step "Prometheus"
if command -v promtool >/dev/null 2>&1; then
  run "promtool check rules deploy/prometheus/passgate-alerts.yaml" \
    promtool check rules deploy/prometheus/passgate-alerts.yaml
  run "promtool test rules deploy/prometheus/passgate-alerts.test.yaml" \
    promtool test rules deploy/prometheus/passgate-alerts.test.yaml
  run "promtool check config deploy/prometheus/prometheus.yml" \
    promtool check config deploy/prometheus/prometheus.yml
fi

# ---------------------------------------------------------------------------------------------
step "YAML/JSON structure and cross-file consistency"
# Writes the dashboard's PromQL as a rule file (variables substituted) for promtool to parse,
# and the ConfigMap's passgate.yaml for `passgate check`.
if "$PY" "$here/check_structure.py" "$root" "$tmp"; then
  ok "structure"
else
  fail "structure (see messages above)"
fi
if command -v promtool >/dev/null 2>&1 && [ -s "$tmp/dashboard-queries.rules.yaml" ]; then
  run "dashboard PromQL parses (promtool check rules)" promtool check rules "$tmp/dashboard-queries.rules.yaml"
fi

# ---------------------------------------------------------------------------------------------
step "Kubernetes"
if command -v kubectl >/dev/null 2>&1; then
  if kubectl kustomize deploy/kubernetes >"$tmp/kustomized.yaml" 2>"$tmp/kustomize.err"; then
    ok "kubectl kustomize deploy/kubernetes ($(grep -c '^kind:' "$tmp/kustomized.yaml") objects)"
  else
    cat "$tmp/kustomize.err"; fail "kubectl kustomize deploy/kubernetes"
  fi
else
  skip "kubectl not installed: kustomize build not checked"
fi
kv=$(command -v kubernetes-validate || true)
if [ -z "$kv" ] && "$PY" -m venv "$tmp/venv" >/dev/null 2>&1 &&
  "$tmp/venv/bin/pip" install --quiet kubernetes-validate >/dev/null 2>&1; then
  kv="$tmp/venv/bin/kubernetes-validate"
fi
if [ -n "$kv" ]; then
  # Strict: unknown fields are errors. The ServiceMonitor CRD has no bundled schema (warning).
  files=(deploy/kubernetes/deployment.yaml deploy/kubernetes/secret.yaml)
  if [ -s "$tmp/kustomized.yaml" ]; then
    files+=("$tmp/kustomized.yaml")
  else
    files+=(deploy/kubernetes/{configmap,statefulset,service,pdb,networkpolicy}.yaml)
  fi
  run "kubernetes-validate --strict (API schemas)" "$kv" --strict --quiet "${files[@]}"
else
  skip "kubernetes-validate unavailable (pip install kubernetes-validate)"
fi

# ---------------------------------------------------------------------------------------------
step "systemd"
if command -v systemd-analyze >/dev/null 2>&1; then
  # verify insists that ExecStart= exists; check a copy pointing at /bin/true instead.
  sed 's#^ExecStart=/usr/local/bin/passgate#ExecStart=/bin/true#' deploy/systemd/passgate.service \
    >"$tmp/passgate.service"
  run "systemd-analyze verify passgate.service" systemd-analyze verify --man=no "$tmp/passgate.service"
  if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
    # Threshold is on the 0–100 scale: 20 = an exposure of 2.0 ("OK").
    run "systemd-analyze security: exposure ≤ 2.0" \
      systemd-analyze security --offline=true --threshold=20 "$tmp/passgate.service"
    printf '   %s\n' "$(systemd-analyze security --offline=true "$tmp/passgate.service" 2>/dev/null | tail -1)"
  else
    skip "systemd-analyze security --offline needs systemd ≥ 250"
  fi
else
  skip "systemd-analyze not installed"
fi

# ---------------------------------------------------------------------------------------------
step "Dockerfile toolchain pin"
img=$(sed -n 's/^ARG RUST_IMAGE=rust:\([0-9][0-9.]*\)-.*/\1/p' deploy/Dockerfile)
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
if [ -z "$img" ]; then
  fail "cannot read ARG RUST_IMAGE=rust:X.Y-… from deploy/Dockerfile"
else
  msrv=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' Cargo.toml)
  if [ -n "$msrv" ]; then
    if ver_ge "$img" "$msrv"; then ok "rust image $img ≥ Cargo.toml rust-version $msrv"; else fail "rust image $img < Cargo.toml rust-version $msrv"; fi
  fi
  # The image must also build the *locked* dependencies: their own rust-version counts.
  if command -v cargo >/dev/null 2>&1 &&
    cargo tree --locked --offline --target x86_64-unknown-linux-gnu -e normal,build --prefix none \
      >"$tmp/tree.txt" 2>/dev/null; then
    need=$("$PY" - "$tmp/tree.txt" <<'PYEOF'
import glob, os, re, sys
try:
    import tomllib
except ImportError:
    sys.exit(0)
best = ((0,), "")
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) v(\S+)", line)
    if not m:
        continue
    for path in glob.glob(os.path.expanduser(f"~/.cargo/registry/src/*/{m[1]}-{m[2]}/Cargo.toml")):
        rv = tomllib.load(open(path, "rb")).get("package", {}).get("rust-version")
        if isinstance(rv, str):
            v = tuple(int(x) for x in rv.split("."))
            if v > best[0]:
                best = (v, f"{'.'.join(map(str, v))} ({m[1]} {m[2]})")
print(best[1])
PYEOF
    )
    if [ -z "$need" ]; then
      skip "dependency rust-versions unknown (no local registry sources or no tomllib)"
    elif ver_ge "$img" "${need%% *}"; then
      ok "rust image $img ≥ highest locked dependency rust-version $need"
    else
      fail "rust image $img < locked dependency rust-version $need: bump RUST_IMAGE in deploy/Dockerfile"
    fi
  else
    skip "cargo tree --offline unavailable: locked dependencies' rust-version not checked"
  fi
fi

# ---------------------------------------------------------------------------------------------
step "passgate check on the Kubernetes config"
bin=${PASSGATE_BIN:-}
if [ -z "$bin" ]; then
  # The newer of the release and debug builds (a stale one may lack newer commands).
  bin=$(ls -t target/release/passgate target/debug/passgate 2>/dev/null | head -n 1)
fi
if [ -n "$bin" ] && [ -s "$tmp/configmap-passgate.yaml" ]; then
  run "passgate check --config <configmap passgate.yaml> ($bin)" "$bin" check --config "$tmp/configmap-passgate.yaml"
else
  skip "no passgate binary (cargo build, or set PASSGATE_BIN): configmap.yaml not checked by passgate itself"
fi

step "passgate policy test on the sandbox policies"
if [ -n "$bin" ]; then
  run "passgate policy test --config config/dev.yaml config/policy-tests/sandbox.yaml" "$bin" policy test --config config/dev.yaml config/policy-tests/sandbox.yaml
else
  skip "no passgate binary: config/policy-tests/sandbox.yaml not run"
fi

echo
if [ "$failures" -gt 0 ]; then
  echo "deploy/check.sh: $failures check(s) FAILED"
  exit 1
fi
echo "deploy/check.sh: all checks passed"
