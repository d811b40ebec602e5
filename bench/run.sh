#!/usr/bin/env bash
# bench/run.sh — one-command, loopback-only benchmark of passgate against the direct path and
# nginx as a plain reverse proxy, all in front of the same static fake Entra + Graph (nginx);
# plus passgate with its limits shared on a local redis-server (state.redis), the cost of sharing.
# Never starts system services; everything runs from a temp dir and is stopped on exit.
#
# Environment (all optional):
#   BENCH_DURATION   seconds per main run (default 12)
#   BENCH_CONNS      connection counts for the main runs (default "64 256")
#   BENCH_KEEP=1     keep the temp dir (configs, logs, audit file) for inspection
#   BENCH_NO_BUILD=1 skip `cargo build --release`
#   BENCH_COLD_TOKENS distinct tokens minted for the cold-token run (default 30000; its run stops
#                    short of using one twice)
#   BENCH_TMPFS      a tmpfs directory for the diagnostic rows with the audit file in memory
#                    (default /dev/shm; the rows are skipped if it is not a tmpfs)
#   BENCH_PERF=1     sample passgate with `perf record -e cpu-clock` during its first main run and
#                    print the top symbols (needs linux-perf; hardware counters are not needed)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DUR=${BENCH_DURATION:-12}
CONNS=${BENCH_CONNS:-"64 256"}
THREADS=2
HALF_DELAY_MS=10 # per-connection pause in the paced run (see recover.lua)

TENANT=cdd6998a-1fe9-48f6-915d-b7a5b7552116
HELPDESK=f3d0263f-adae-4f31-84f1-5b45713ed0b7
KIOSK=e6867e18-cfe7-4693-bec9-262eb70c4b84
DEVICE=8e3884bd-146c-4300-9ddd-59928bce1112
AAD_DEVICE=adda61ab-c44b-47bb-89eb-6cc454650a5c
DEVICE_OBJECT=14a59c06-2aa5-463c-b25a-30a422042956
ACTION_PATH=/v1.0/deviceManagement/managedDevices/$DEVICE/recoverPasscode

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
  log "ERROR: $*"
  exit 1
}

# ---------------------------------------------------------------- prerequisites
need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx-light)
command -v wrk >/dev/null 2>&1 || need_pkgs+=(wrk)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
command -v redis-server >/dev/null 2>&1 || need_pkgs+=(redis-server)
if ((${#need_pkgs[@]})); then
  log "installing ${need_pkgs[*]} (apt)"
  # policy-rc.d 101 keeps the package's post-install from starting a system nginx or redis.
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
fi
PASSGATE=$ROOT/target/release/passgate
[[ -x $PASSGATE ]] || die "no $PASSGATE"

T=$(mktemp -d /tmp/passgate-bench.XXXXXX)
# nginx workers run as an unprivileged user: they must be able to read the static documents.
chmod 755 "$T"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  [[ -n ${TMPFS_T:-} ]] && rm -rf "$TMPFS_T"
  if [[ -n ${BENCH_KEEP:-} ]]; then log "kept $T"; else rm -rf "$T"; fi
}
trap cleanup EXIT

PY=python3
if ! python3 -c 'import cryptography' 2>/dev/null; then
  log "creating a venv with the cryptography package"
  python3 -m venv "$T/venv"
  "$T/venv/bin/pip" install -q cryptography
  PY=$T/venv/bin/python
fi

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r GRAPH_PORT PROXY_PORT PG_PORT ADMIN_PORT PG2_PORT ADMIN2_PORT REDIS_PORT PG3_PORT ADMIN3_PORT PG4_PORT ADMIN4_PORT <<<"$(free_ports 11)"
GRAPH=http://127.0.0.1:$GRAPH_PORT

# ---------------------------------------------------------------- fake Entra + Graph (static nginx)
mkdir -p "$T/graph" "$T/proxy"
COLD_TOKENS=${BENCH_COLD_TOKENS:-30000}
"$PY" "$ROOT/bench/mint.py" "$T/graph" "$GRAPH" "$COLD_TOKENS"
TOKEN=$(cat "$T/graph/token")
cat >"$T/graph/discovery.json" <<EOF
{"issuer":"$GRAPH/$TENANT/v2.0","authorization_endpoint":"$GRAPH/$TENANT/oauth2/v2.0/authorize",
"token_endpoint":"$GRAPH/$TENANT/oauth2/v2.0/token","jwks_uri":"$GRAPH/$TENANT/discovery/v2.0/keys",
"response_types_supported":["code","id_token","code id_token","id_token token"],
"subject_types_supported":["pairwise"],"id_token_signing_alg_values_supported":["RS256"]}
EOF

nginx_common() { # $1 = prefix dir
  cat <<EOF
daemon off;
master_process on;
worker_processes 2;
pid $1/nginx.pid;
error_log $1/error.log warn;
events { worker_connections 8192; }
http {
  access_log off;
  client_body_temp_path $1/tmp-body;
  proxy_temp_path $1/tmp-proxy;
  fastcgi_temp_path $1/tmp-fastcgi;
  uwsgi_temp_path $1/tmp-uwsgi;
  scgi_temp_path $1/tmp-scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  default_type application/json;
EOF
}

{
  nginx_common "$T/graph"
  cat <<EOF
  server {
    listen 127.0.0.1:$GRAPH_PORT backlog=4096;
    location = /$TENANT/v2.0/.well-known/openid-configuration { alias $T/graph/discovery.json; }
    location = /$TENANT/discovery/v2.0/keys { alias $T/graph/jwks.json; }
    location = /$TENANT/oauth2/v2.0/token {
      return 200 '{"token_type":"Bearer","expires_in":86399,"ext_expires_in":86399,"access_token":"bench-app-token"}';
    }
    location ~ /recoverPasscode\$ {
      add_header request-id 7f3d2a1c-0000-4000-8000-000000000001;
      return 204;
    }
    location ~ /checkMemberGroups\$ { return 200 '{"value":["$KIOSK"]}'; }
    location "/v1.0/devices(deviceId=" { return 200 '{"id":"$DEVICE_OBJECT"}'; }
    location /v1.0/deviceManagement/managedDevices/ {
      return 200 '{"id":"$DEVICE","azureADDeviceId":"$AAD_DEVICE","operatingSystem":"Windows Phone","userPrincipalName":"kiosk.lobby@contoso.onmicrosoft.com","userId":"259da132-76cd-43c5-acf9-fb20fd5447b1"}';
    }
  }
}
EOF
} >"$T/graph/nginx.conf"

{
  nginx_common "$T/proxy"
  cat <<EOF
  upstream graph { server 127.0.0.1:$GRAPH_PORT; keepalive 512; }
  server {
    listen 127.0.0.1:$PROXY_PORT backlog=4096;
    location / {
      proxy_pass http://graph;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
} >"$T/proxy/nginx.conf"

"$NGINX" -t -q -p "$T/graph" -c "$T/graph/nginx.conf" 2>"$T/graph/t.log" || die "nginx config: $(cat "$T/graph/t.log")"
"$NGINX" -p "$T/graph" -c "$T/graph/nginx.conf" 2>>"$T/graph/error.log" &
PIDS+=($!)
GRAPH_PID=$!
"$NGINX" -p "$T/proxy" -c "$T/proxy/nginx.conf" 2>>"$T/proxy/error.log" &
PIDS+=($!)
PROXY_PID=$!

wait_http() { # url, expected status, [extra curl args...]
  local url=$1 want=$2 got=""
  shift 2
  for _ in $(seq 1 100); do
    got=$(curl -s -o /dev/null -w '%{http_code}' "$@" "$url" || true)
    [[ $got == "$want" ]] && return 0
    sleep 0.1
  done
  die "$url answered ${got:-nothing}, wanted $want"
}
wait_http "$GRAPH$ACTION_PATH" 204 -X POST
wait_http "http://127.0.0.1:$PROXY_PORT$ACTION_PATH" 204 -X POST

# ---------------------------------------------------------------- passgate
write_config() { # port admin_port audit_file out [redis_port]
  local state=""
  if [[ -n ${5:-} ]]; then
    state=$'state:\n  redis:\n    url: "redis://127.0.0.1:'"$5"$'/0"\n    timeout_ms: 1000'
  fi
  cat >"$4" <<EOF
server:
  listen: "127.0.0.1:$1"
  plaintext: true
  config_watch_seconds: 0
admin:
  listen: "127.0.0.1:$2"
tenant_id: "$TENANT"
endpoints:
  graph: "$GRAPH"
  authority: "$GRAPH"
  graph_scope: "https://graph.microsoft.com/.default"
operator_auth:
  audiences: ["885b1e7c-7b41-41f0-9e73-a7816b0c3fbc", "api://passgate"]
  required_scope: "RecoverPasscode.Request"
app:
  client_id: "67028afe-0440-48e7-b043-4048e31efe88"
  client_secret: "env:PASSGATE_BENCH_CLIENT_SECRET"
graph:
  # One operator drives every request: lift the per-operator device-lookup budget (hardening
  # round 2, finding 6), which would otherwise refuse all but 60 requests a minute.
  facts_lookups_per_operator: "100000000 per 1s"
audit:
  path: "$3"
policies:
  - name: bench-helpdesk
    description: "Helpdesk Tier 2 on kiosk phones, limits far above the offered load"
    operators:
      groups: ["$HELPDESK"]
    devices:
      groups: ["$KIOSK"]
      platforms: ["Windows Phone"]
    limits:
      # Short windows: exact limits keep one timestamp per admission inside the window.
      per_operator: "10000000 per 1s"
      per_device: "10000000 per 1s"
      global: "10000000 per 1s"
$state
EOF
}

export PASSGATE_BENCH_CLIENT_SECRET=bench-not-a-secret
export PASSGATE_LOG=passgate=warn
start_passgate() { # port admin_port audit_file name [redis_port] -> sets PG_PID
  write_config "$1" "$2" "$3" "$T/$4.yaml" "${5:-}"
  "$PASSGATE" check --config "$T/$4.yaml" >"$T/$4.check" 2>&1 || die "passgate check: $(cat "$T/$4.check")"
  "$PASSGATE" serve --config "$T/$4.yaml" >"$T/$4.log" 2>&1 &
  PG_PID=$!
  PIDS+=("$PG_PID")
  wait_http "http://127.0.0.1:$1$ACTION_PATH" 204 -X POST -H "Authorization: Bearer $TOKEN"
}
AUDIT1=$T/audit-main.jsonl
AUDIT2=$T/audit-c1000.jsonl
start_passgate "$PG_PORT" "$ADMIN_PORT" "$AUDIT1" pg-main
PG_MAIN_PID=$PG_PID

# The shared-state variant: a local redis-server (no persistence, loopback, temp dir), never a
# system service; stopped with everything else on exit.
mkdir -p "$T/redis"
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save '' --appendonly no --dir "$T/redis" \
  --daemonize no --logfile "$T/redis/redis.log" &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
AUDIT3=$T/audit-redis.jsonl
start_passgate "$PG3_PORT" "$ADMIN3_PORT" "$AUDIT3" pg-redis "$REDIS_PORT"
PG_REDIS_PID=$PG_PID

# ---------------------------------------------------------------- measurement helpers
pids_of() { # a pid plus its children (nginx master + workers)
  # shellcheck disable=SC2046 # word splitting wanted: one pid per word
  echo "$1" $(pgrep -P "$1" || true)
}
cpu_ticks() { # utime+stime of the given pids
  local sum=0 p f
  for p in "$@"; do
    f=$(cut -d')' -f2- "/proc/$p/stat" 2>/dev/null) || continue
    # after "comm)": state=1 ... utime=12 stime=13 (fields 14,15 of the full line)
    set -- $f
    sum=$((sum + ${12} + ${13}))
  done
  echo "$sum"
}
hwm_kb() { # sum of VmHWM over the given pids
  local sum=0 p v
  for p in "$@"; do
    v=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
TCK=$(getconf CLK_TCK)

REDIS_CPU=()
RESULTS=$T/results.tsv
: >"$RESULTS"
# run NAME PROXY_PID URL CONNS DURATION [DELAY_MS]; appends a row to RESULTS
run() {
  local name=$1 ppid=$2 url=$3 c=$4 d=$5 delay=${6:-0} pids t0 t1 out line
  pids=$(pids_of "$ppid")
  # Short warm-up so connection pools and caches are in their steady state (with the one warm
  # token: the cold run's tokens must stay unseen).
  BENCH_TOKENS_FILE= BENCH_TOKEN=$TOKEN BENCH_DELAY_MS=$delay wrk -t$THREADS -c"$c" -d2s -s "$ROOT/bench/recover.lua" "$url" >/dev/null 2>&1 || true
  local perf_pid=""
  if [[ -n ${BENCH_PERF:-} && $name == passgate && ! -e $T/perf.data ]]; then
    perf record -q -e cpu-clock -F 2000 -p "$ppid" -o "$T/perf.data" -- sleep "$d" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  t0=$(cpu_ticks $pids)
  out=$(BENCH_THREADS=$THREADS BENCH_TOKEN=$TOKEN BENCH_DELAY_MS=$delay wrk -t$THREADS -c"$c" -d"${d}s" --timeout 5s -s "$ROOT/bench/recover.lua" "$url" 2>&1) || die "wrk failed: $out"
  t1=$(cpu_ticks $pids)
  if [[ -n $perf_pid ]]; then
    wait "$perf_pid" || true
    perf report -i "$T/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -40 >"$T/perf.txt" || true
  fi
  line=$(grep '^BENCH ' <<<"$out") || die "no summary from wrk: $out"
  local kv requests duration_us status connect read write timeout p50_us p99_us p999_us
  for kv in ${line#BENCH }; do
    case $kv in mean_us=* | max_us=*) ;; *) local "${kv%%=*}=${kv#*=}" ;; esac
  done
  local errs=$((connect + read + write + timeout))
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$c" "$delay" "$requests" "$duration_us" \
    "$p50_us" "$p99_us" "$p999_us" "$((t1 - t0))" "$(hwm_kb $pids)" "$status" "$errs" >>"$RESULTS"
  log "$name c=$c: $requests requests, p99 ${p99_us}us, non-2xx $status, socket errors $errs"
}

# ---------------------------------------------------------------- the runs
for c in $CONNS; do
  run direct "$GRAPH_PID" "$GRAPH$ACTION_PATH" "$c" "$DUR"
  run nginx "$PROXY_PID" "http://127.0.0.1:$PROXY_PORT$ACTION_PATH" "$c" "$DUR"
  run passgate "$PG_MAIN_PID" "http://127.0.0.1:$PG_PORT$ACTION_PATH" "$c" "$DUR"
  # CPU and RSS columns are passgate's only; redis-server's CPU is printed below.
  redis_t0=$(cpu_ticks "$REDIS_PID")
  run passgate+redis "$PG_REDIS_PID" "http://127.0.0.1:$PG3_PORT$ACTION_PATH" "$c" "$DUR"
  REDIS_CPU+=("c=$c: $(($(cpu_ticks "$REDIS_PID") - redis_t0)) ticks")
done

# Cold tokens: every request carries a distinct valid token never seen before, so each one costs a
# full RSA signature check (the signature cache cannot help). Short enough not to wrap around the
# minted set at the warm rate; the row says how many requests it made (compare with COLD_TOKENS).
c_cold=$(echo "$CONNS" | awk '{print $1}')
export BENCH_TOKENS_FILE=$T/graph/tokens
run passgate-cold "$PG_MAIN_PID" "http://127.0.0.1:$PG_PORT$ACTION_PATH" "$c_cold" 2
unset BENCH_TOKENS_FILE

# Paced run at ~half of passgate's best closed-loop throughput, for the direct path and for
# passgate at the same offered rate. wrk is a closed loop; with a pause of ~HALF_DELAY_MS between
# a connection's requests the rate is ~ conns * 1000 / (pause + service time). The service time
# differs per path, so each path gets a 3 s calibration run and its connection count is scaled
# to hit the target; the achieved rate of the measured run is printed next to its latencies.
peak=$(awk -F'\t' '$1=="passgate" && $3==0 { r=$4/($5/1e6); if (r>m) m=r } END { printf "%d", m }' "$RESULTS")
half=$((peak / 2))
paced_conns() { # url -> connections that give ~$half req/s at HALF_DELAY_MS pause
  local url=$1 c0 out line reqs dur c
  c0=$(((half * HALF_DELAY_MS + 999) / 1000))
  ((c0 < 1)) && c0=1
  out=$(BENCH_TOKEN=$TOKEN BENCH_DELAY_MS=$HALF_DELAY_MS wrk -t$THREADS -c"$c0" -d3s -s "$ROOT/bench/recover.lua" "$url" 2>&1) || die "wrk: $out"
  line=$(grep '^BENCH ' <<<"$out")
  reqs=$(sed -n 's/.*requests=\([0-9]*\).*/\1/p' <<<"$line")
  dur=$(sed -n 's/.*duration_us=\([0-9]*\).*/\1/p' <<<"$line")
  c=$(awk -v c0="$c0" -v r="$reqs" -v d="$dur" -v t="$half" 'BEGIN { a = r / (d / 1e6); c = (a > 0) ? c0 * t / a : c0; c = int(c + 0.5); if (c < 1) c = 1; if (c > 2000) c = 2000; print c }')
  echo "$c"
}
if ((half > 0)); then
  c=$(paced_conns "$GRAPH$ACTION_PATH")
  run direct-paced "$GRAPH_PID" "$GRAPH$ACTION_PATH" "$c" "$DUR" "$HALF_DELAY_MS"
  c=$(paced_conns "http://127.0.0.1:$PG_PORT$ACTION_PATH")
  run passgate-paced "$PG_MAIN_PID" "http://127.0.0.1:$PG_PORT$ACTION_PATH" "$c" "$DUR" "$HALF_DELAY_MS"
fi

# Diagnostic: the same passgate with its audit file on a tmpfs, where fsync returns at once. Not
# a setting anyone should deploy (a record in memory is no record); it shows what the audit
# disk's fsync costs on this machine, next to the rows above: closed loop at the first
# connection count, and paced at the same target rate as passgate-paced.
TMPFS_DIR=${BENCH_TMPFS:-/dev/shm}
AUDIT4=""
if [[ $(stat -f -c %T "$TMPFS_DIR" 2>/dev/null) == tmpfs ]]; then
  TMPFS_T=$(mktemp -d "$TMPFS_DIR/passgate-bench.XXXXXX")
  AUDIT4=$TMPFS_T/audit-tmpfs.jsonl
  start_passgate "$PG4_PORT" "$ADMIN4_PORT" "$AUDIT4" pg-tmpfs
  PG_TMPFS_PID=$PG_PID
  run passgate-tmpfs "$PG_TMPFS_PID" "http://127.0.0.1:$PG4_PORT$ACTION_PATH" "$c_cold" "$DUR"
  if ((half > 0)); then
    c=$(paced_conns "http://127.0.0.1:$PG4_PORT$ACTION_PATH")
    run passgate-tmpfs-paced "$PG_TMPFS_PID" "http://127.0.0.1:$PG4_PORT$ACTION_PATH" "$c" "$DUR" "$HALF_DELAY_MS"
  fi
else
  log "$TMPFS_DIR is not a tmpfs: skipping the audit-on-tmpfs diagnostic rows"
fi

metric_sum() { # admin_port decision -> sum of passgate_requests_total for that decision
  curl -s "http://127.0.0.1:$1/metrics" |
    awk -v d="$2" '/^passgate_requests_total\{/ && $0 ~ "decision=\"" d "\"" { s += $NF } END { printf "%d", s }'
}
allow1=$(metric_sum "$ADMIN_PORT" allow)
deny1=$(metric_sum "$ADMIN_PORT" deny)
allow3=$(metric_sum "$ADMIN3_PORT" allow)
deny3=$(metric_sum "$ADMIN3_PORT" deny)
if [[ -n $AUDIT4 ]]; then
  allow4=$(metric_sum "$ADMIN4_PORT" allow)
  deny4=$(metric_sum "$ADMIN4_PORT" deny)
fi
# The smallest histogram bucket holding 99% of the admit round trips to Redis.
state_p99=$(curl -s "http://127.0.0.1:$ADMIN3_PORT/metrics" | awk '
  /^passgate_state_duration_seconds_bucket\{/ && /op="admit"/ { split($0, a, "le=\""); split(a[2], b, "\""); n[b[1]] += $NF }
  /^passgate_state_duration_seconds_count\{/ && /op="admit"/ { total += $NF }
  END { for (le in n) if (total > 0 && n[le] >= 0.99 * total && (best == "" || le + 0 < best + 0)) best = le; printf "%s", best }')

# 1,000 open connections against a fresh passgate: peak RSS from a clean start.
start_passgate "$PG2_PORT" "$ADMIN2_PORT" "$AUDIT2" pg-c1000
PG_C1000_PID=$PG_PID
run passgate-c1000 "$PG_C1000_PID" "http://127.0.0.1:$PG2_PORT$ACTION_PATH" 1000 5
allow2=$(metric_sum "$ADMIN2_PORT" allow)
deny2=$(metric_sum "$ADMIN2_PORT" deny)

# Stop passgate gracefully (SIGTERM drains and closes the audit log), then verify both files.
for p in "$PG_MAIN_PID" "$PG_C1000_PID" "$PG_REDIS_PID" ${PG_TMPFS_PID:-}; do kill -TERM "$p" 2>/dev/null || true; done
for p in "$PG_MAIN_PID" "$PG_C1000_PID" "$PG_REDIS_PID" ${PG_TMPFS_PID:-}; do wait "$p" 2>/dev/null || true; done

# ---------------------------------------------------------------- report
echo
echo "passgate benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs ($(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/^MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM"
echo "wrk -t$THREADS, ${DUR}s per run, loopback; fake Entra/Graph = nginx static responses; PASSGATE_LOG=$PASSGATE_LOG"
echo
awk -F'\t' -v tck="$TCK" '
  BEGIN {
    printf "%-20s %6s %10s %9s %9s %9s %12s %10s %8s\n", "path", "conns", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU s/10k", "peak RSS", "non-2xx"
  }
  {
    rps = $4 / ($5 / 1e6)
    cpu = ($4 > 0) ? ($9 / tck) / $4 * 10000 : 0
    printf "%-20s %6d %10.0f %9.3f %9.3f %9.3f %12.3f %7.1f MB %8d\n", $1, $2, rps, $6/1000, $7/1000, $8/1000, cpu, $10/1024, $11 + $12
    key = $1 "/" $2; R[key] = rps; P50[key] = $6; P99[key] = $7; P999[key] = $8
    if ($1 == "passgate") conns[$2] = 1
    C[key] = $2
    if ($1 == "direct-paced") pd = key
    if ($1 == "passgate-cold") { cold = rps; cold_c = $2; cold_n = $4 }
    if ($1 == "passgate-paced") pp = key
    if ($1 == "passgate-tmpfs") { tm = key; tm_c = $2 }
    if ($1 == "passgate-tmpfs-paced") tp = key
  }
  END {
    print ""
    for (c in conns) {
      printf "c=%-4s passgate/nginx throughput %.2fx; passgate - direct latency: p50 +%.3f ms, p99 +%.3f ms, p99.9 +%.3f ms\n",
        c, R["passgate/" c] / R["nginx/" c], (P50["passgate/" c] - P50["direct/" c]) / 1000,
        (P99["passgate/" c] - P99["direct/" c]) / 1000, (P999["passgate/" c] - P999["direct/" c]) / 1000
    }
    if (cold > 0) {
      printf "cold tokens (c=%d, %d distinct tokens used of %d minted): %.0f req/s = %.2fx warm\n", cold_c, cold_n, '"$COLD_TOKENS"', cold, cold / R["passgate/" cold_c]
    }
    if (pd != "" && pp != "") {
      printf "paced (~%d ms pause; target %d req/s): direct %.0f req/s on %d conns, passgate %.0f req/s on %d conns\n", '"$HALF_DELAY_MS"', '"$half"', R[pd], C[pd], R[pp], C[pp]
      printf "  passgate added latency over direct at that rate: p50 +%.3f ms, p99 +%.3f ms, p99.9 +%.3f ms\n",
        (P50[pp] - P50[pd]) / 1000, (P99[pp] - P99[pd]) / 1000, (P999[pp] - P999[pd]) / 1000
    }
    if (tm != "") {
      printf "diagnostic, audit file on tmpfs (fsync is free there; never a deployment setting): c=%d %.0f req/s = %.2fx nginx (%.2fx passgate on disk)\n",
        tm_c, R[tm], R[tm] / R["nginx/" tm_c], R[tm] / R["passgate/" tm_c]
      if (tp != "" && pd != "")
        printf "  paced at the same target: %.0f req/s; added latency over direct: p50 +%.3f ms, p99 +%.3f ms, p99.9 +%.3f ms\n",
          R[tp], (P50[tp] - P50[pd]) / 1000, (P99[tp] - P99[pd]) / 1000, (P999[tp] - P999[pd]) / 1000
    }
  }' "$RESULTS"
echo "(CPU = utime+stime of the proxy process(es) only: passgate's one process, or nginx master+workers; peak RSS = VmHWM, summed for nginx)"
echo "passgate+redis: limits in a local redis-server (one Lua script per request); redis-server CPU $(IFS=';'; echo "${REDIS_CPU[*]}") (${TCK}/s); admit round trip p99 <= ${state_p99:-?} s (histogram bucket)"

echo
ok=1
# Every request passgate answered must have its records: a decision for each, an outcome for
# each allowed one. Requests still in flight when wrk stops are cancelled by the client's close:
# their decision record is durable (it precedes the forward) but passgate never answered them,
# so they are counted separately, as is any decision whose outcome record is missing.
check_audit() { # file allow deny
  local v records dec out orphans cancelled
  if ! v=$("$PASSGATE" audit verify "$1" 2>&1); then
    echo "audit $(basename "$1"): VERIFY FAILED: $v"
    ok=0
    return
  fi
  records=$(sed -n 's/^OK: \([0-9]*\) records.*/\1/p' <<<"$v")
  dec=$(grep -c '"kind":"decision"' "$1" || true)
  out=$(grep -c '"kind":"outcome"' "$1" || true)
  orphans=$(python3 - "$1" <<'EOF2'
import json, sys
d, o = set(), set()
for line in open(sys.argv[1]):
    r = json.loads(line)
    (d if r["kind"] == "decision" else o).add(r["request_id"])
print(len(d - o), len(o - d))
EOF2
)
  read -r no_outcome no_decision <<<"$orphans"
  cancelled=$((dec - $2 - $3))
  echo "audit $(basename "$1"): chain intact, $records records = $dec decisions + $out outcomes;" \
    "passgate answered $2 allowed + $3 denied (2 x $2 + $3 = $((2 * $2 + $3)));" \
    "$cancelled more decisions from requests cancelled in flight when wrk closed its connections," \
    "$no_outcome decisions without an outcome record"
  if ((records != dec + out || cancelled < 0 || out < $2 || no_decision != 0)); then
    echo "  MISMATCH: records do not account for the answered requests"
    ok=0
  fi
}
if [[ -s $T/perf.txt ]]; then
  echo
  echo "perf (cpu-clock samples, passgate c=$(echo "$CONNS" | awk '{print $1}'), top symbols):"
  cat "$T/perf.txt"
fi
check_audit "$AUDIT1" "$allow1" "$deny1"
check_audit "$AUDIT2" "$allow2" "$deny2"
check_audit "$AUDIT3" "$allow3" "$deny3"
[[ -n $AUDIT4 ]] && check_audit "$AUDIT4" "$allow4" "$deny4"
((ok)) || exit 1
