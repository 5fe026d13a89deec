#!/usr/bin/env bash
# Side-by-side load test: poolgate vs nginx (proxy_pass + keepalive + limit_req)
# vs the upstream directly, on loopback, with the same load generator (wrk).
#
#   benches/loadtest.sh            # throughput/latency, ~7 min (3 rounds x 3 scenarios x 5 targets x 8 s)
#   benches/loadtest.sh memory     # RSS after 1,000,000 distinct client keys, and after they expire
#   SOAK=1 benches/loadtest.sh     # soak: mixed traffic, policy swaps, upstream faults, RSS (10 min)
#   benches/loadtest.sh instructions # instructions per request of poolgate (and BASELINE) under
#                                  # valgrind's callgrind: exact, so two builds compare on a noisy box;
#                                  # INSTR_REDIS=1 adds poolgate on the Redis store and redis-server's
#                                  # own instructions per request (both under callgrind)
#   benches/loadtest.sh serve      # start every target as configured here, print their ports and
#                                  # pids, and hold them (SERVE_SECS, 600) for perf/strace by hand
#
# Knobs (environment): DURATION (s per run, 8), ROUNDS (3), CONNECTIONS (64), KEYS (1000000),
# REDIS (1: also run a second poolgate whose counters live in a local redis-server; 0: skip),
# CLUSTER (1: also run a third poolgate on a local three-master Redis Cluster; 0: skip),
# BASELINE (path to another poolgate binary, e.g. a build of main: run it as target
# `pg-base` beside this build, interleaved, to compare two builds in one run; with
# REDIS=1 also as `pg-rbase` on the same redis-server, its keys under another prefix),
# POOLGATE_BIN (the binary under test; default: this tree's release build);
# soak: SOAK_SECS (600), SOAK_THREADS (8 client connections), SOAK_PORT (18380);
# instructions: INSTR_SECS (6 s per run), INSTR_CONNECTIONS (4, wrk -c).
# Targets are interleaved round by round so machine noise hits all alike.
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-throughput}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-64}
KEYS=${KEYS:-1000000}
REDIS=${REDIS:-1}
# On by default like REDIS, so docs/redis.md's Cluster figure comes from the plain
# command; it costs one more target per scenario (a fifth of the run).
CLUSTER=${CLUSTER:-1}
# PORT_BASE (18180) moves every port, so two runs on one machine do not collide.
B=${PORT_BASE:-18180}
UP=$((B + 1)) NGX=$((B + 2)) PG=$B ADMIN=$((B + 10)) RDS=$((B + 3)) PGR=$((B + 4)) ADMINR=$((B + 14)) PGB=$((B + 9)) ADMINB=$((B + 19)) PGRB=$((B + 11)) ADMINRB=$((B + 21))
# The binary cargo builds (CARGO_TARGET_DIR is honoured), or POOLGATE_BIN.
BIN=${POOLGATE_BIN:-${CARGO_TARGET_DIR:-target}/release/poolgate}
BASELINE=${BASELINE:-}
# The cluster: three masters, their cluster-bus ports, its poolgate.
CL=($((B + 5)) $((B + 6)) $((B + 7))) CLBUS=($((B + 105)) $((B + 106)) $((B + 107))) PGC=$((B + 8)) ADMINC=$((B + 18))

soak() {
  # Mixed traffic (GET passthrough, wrong-password logins and registrations
  # from rotating IPv4/IPv6 clients via a trusted X-Forwarded-For), a policy
  # swap every second, ~2% of requests with an upstream fault (reset, close,
  # garbage, hang past request_timeout), the upstream stopped for 3 s mid-run,
  # and poolgate's RSS sampled every 5 s. Needs python3 only (benches/soak.py).
  local secs=${SOAK_SECS:-600} threads=${SOAK_THREADS:-8}
  # Its own ports, so it can run beside the throughput test.
  PG=${SOAK_PORT:-18380} UP=$(( ${SOAK_PORT:-18380} + 1 )) ADMIN=$(( ${SOAK_PORT:-18380} + 10 ))
  command -v python3 >/dev/null || { echo "the soak needs python3" >&2; exit 1; }
  for p in "$PG" "$UP" "$ADMIN"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is in use; set SOAK_PORT to another base" >&2; exit 1
    fi
  done
  work=$(mktemp -d)
  pids=()
  # shellcheck disable=SC2317 # called by the trap
  soak_cleanup() {
    set +e # some are gone already (the first upstream is stopped mid-run)
    for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null; done
    [ -f "$work/up2.pid" ] && kill "$(cat "$work/up2.pid")" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$work"
  }
  trap soak_cleanup EXIT
  echo "building poolgate (release) ..." >&2
  cargo build --release -q --bin poolgate

  python3 benches/soak.py upstream "$UP" >/dev/null 2>"$work/upstream.log" &
  up_pid=$!
  pids+=("$up_pid")
  for _ in $(seq 50); do
    curl -s -o /dev/null "http://127.0.0.1:$UP/ping" && break
    sleep 0.1
  done
  pool() { # loginFailCheck limit -> a pool document
    printf '{"code":200,"message":"ok","data":{"loginFailCheck":{"enabled":true,"limit":%d,"timeInterval":60},"loginPasswordFailCheck":{"enabled":true,"limit":5,"timeInterval":60},"frequentRegisterCheck":{"enabled":true,"limit":3,"timeInterval":60},"loginFailStrategy":"captcha","allowedOrigins":"","registerDisabled":false,"passwordStrength":1,"whitelist":{"phoneEnabled":false,"emailEnabled":false,"usernameEnabled":false}}}' "$1"
  }
  pool 3 >"$work/pool.json"
  cat >"$work/poolgate.toml" <<TOML
[server]
listen = "127.0.0.1:$PG"
admin_listen = "127.0.0.1:$ADMIN"
trusted_proxies = ["127.0.0.1/32"]
[upstream]
url = "http://127.0.0.1:$UP"
request_timeout = "2s"
[policy]
source = "file"
snapshot_path = "snapshot.json"
[policy.file]
path = "pool.json"
poll_interval = "500ms"
[guards]
sweep_interval = "2s"
[log]
level = "error"
TOML
  "$BIN" --config "$work/poolgate.toml" >"$work/poolgate.log" 2>&1 &
  pg_pid=$!
  pids+=("$pg_pid")
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "http://127.0.0.1:$ADMIN/readyz" >/dev/null || { echo "poolgate did not start:"; cat "$work/poolgate.log"; exit 1; }

  # A policy swap every second (limit 3 <-> 5), written atomically.
  ( i=0; while :; do i=$((i + 1)); pool $(( 3 + i % 2 * 2 )) >"$work/pool.next" && mv "$work/pool.next" "$work/pool.json"; sleep 1; done ) >/dev/null 2>&1 &
  pids+=("$!")
  ( while :; do echo "$(date +%s) $(awk '/VmRSS/ {print $2}' "/proc/$pg_pid/status")" >>"$work/rss.log"; sleep 5; done ) >/dev/null 2>&1 &
  pids+=("$!")
  # The upstream refuses connections for 3 s half-way through.
  ( sleep $(( secs / 2 )); kill "$up_pid"; sleep 3
    python3 benches/soak.py upstream "$UP" 2>>"$work/upstream.log" &
    echo $! >"$work/up2.pid" ) >/dev/null 2>&1 &
  pids+=("$!")

  echo "soak: ${secs}s, $threads client connections, $(nproc) cores" >&2
  python3 benches/soak.py client "$PG" "$secs" "$threads" "$work/client.json"
  metrics=$(curl -s "http://127.0.0.1:$ADMIN/metrics")
  alive=yes
  kill -0 "$pg_pid" 2>/dev/null || alive=no
  python3 - "$work/client.json" "$work/rss.log" "$work/poolgate.log" "$alive" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
rss = [int(l.split()[1]) for l in open(sys.argv[2]) if len(l.split()) == 2]
log = open(sys.argv[3], errors="replace").read()
print(f"poolgate still running: {sys.argv[4]}")
print(f"panics in the log: {log.count('panicked')}")
print(f"ERROR lines in the log: {log.count(' ERROR ')}")
print(f"requests sent: {c['sent']} ({', '.join(f'{k} {v}' for k, v in sorted(c['by_kind'].items()))})")
print(f"healthy-upstream requests answered: {c['answered']}, statuses {c['status']} "
      f"(of which answered by the upstream: {c['from_upstream']})")
print(f"requests accepted then lost (healthy upstream, no complete HTTP answer): {c['lost']}")
for e in c["lost_examples"]:
    print(f"  lost: {e}")
print(f"fault-injected requests: {c['fault_sent']}, statuses {c['fault_status']}, "
      f"passed off as the upstream's answer: {c['fault_unexpected']}, no answer: {c['fault_no_answer']}")
if rss:
    print(f"RSS kB: first {rss[0]}, last {rss[-1]}, max {max(rss)} ({len(rss)} samples)")
    print("RSS kB by minute: " + " ".join(str(r) for r in rss[::12]))
PY
  grep -E '^poolgate_(policy_reloads_total|connections_open|connections_rejected_total|connection_errors_total|rate_limit_tracked_keys|tracked_keys|inflight_requests|rejections_total)' <<<"$metrics" || true
  exit 0
}
[ "${SOAK:-0}" = 1 ] && soak

need() {
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2 ..." >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
  else
    echo "$1 is missing: apt-get install $2" >&2; exit 1
  fi
}
need nginx nginx
need wrk wrk
[ "$REDIS" = 1 ] && [ "$MODE" != memory ] && need redis-server redis-server && need redis-cli redis-tools
if [ "$CLUSTER" = 1 ] && [ "$MODE" != memory ]; then
  need redis-server redis-server
  need redis-cli redis-tools
  for p in "${CL[@]}" "${CLBUS[@]}" "$PGC" "$ADMINC"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is in use (the cluster's); stop what holds it or run with CLUSTER=0" >&2; exit 1
    fi
  done
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  [ -n "${redis_pid:-}" ] && kill "$redis_pid" 2>/dev/null || true
  for c in upstream reference; do
    [ -f "$work/$c.pid" ] && kill "$(cat "$work/$c.pid")" 2>/dev/null || true
  done
  sleep 0.3
  rm -rf "$work"
}
trap cleanup EXIT

if [ -z "${POOLGATE_BIN:-}" ]; then
  echo "building poolgate (release) ..." >&2
  cargo build --release -q --bin poolgate
fi

# The upstream: nginx answering like Authing, fast and constant.
cat >"$work/upstream.conf" <<EOF
worker_processes 1;
pid $work/upstream.pid;
error_log $work/upstream-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    default_type application/json;
    location = /api/v2/login/account {
      if (\$http_x_wrong) { return 200 '{"code":2333,"message":"wrong password","data":null}'; }
      return 200 '{"code":200,"message":"ok","data":{"token":"t"}}';
    }
    location / { return 200 '{"code":200,"message":"ok","data":null}'; }
  }
}
EOF

# The reference: what a team would otherwise deploy.
cat >"$work/reference.conf" <<EOF
worker_processes auto;
pid $work/reference.pid;
error_log $work/reference-error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  limit_req_zone \$binary_remote_addr zone=perip:10m rate=1000000r/s;
  upstream login { server 127.0.0.1:$UP; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    location / {
      limit_req zone=perip burst=1000000 nodelay;
      proxy_pass http://login;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF

# poolgate: every check on, limits high enough never to trip on the honest traffic.
cat >"$work/pool.json" <<EOF
{"code":200,"message":"ok","data":{
 "loginFailCheck":{"enabled":true,"limit":3,"timeInterval":${WINDOW:-300}},
 "loginPasswordFailCheck":{"enabled":true,"limit":3,"timeInterval":300},
 "frequentRegisterCheck":{"enabled":true,"limit":1000000000,"timeInterval":300},
 "loginFailStrategy":"captcha","allowedOrigins":"https://app.sample.com\nhttps://*.sample.com",
 "registerDisabled":false,"passwordStrength":3,
 "whitelist":{"phoneEnabled":false,"emailEnabled":false,"usernameEnabled":false}}}
EOF
cat >"$work/poolgate.toml" <<EOF
[server]
listen = "127.0.0.1:$PG"
admin_listen = "127.0.0.1:$ADMIN"
trusted_proxies = ["127.0.0.1/32"]
[upstream]
url = "http://127.0.0.1:$UP"
[policy]
source = "file"
[policy.file]
path = "pool.json"
[guards]
max_tracked_keys = 2000000
sweep_interval = "2s"
[rate_limit]
login = { per_second = 100000000, burst = 100000000 }
[log]
level = "error"
EOF

nginx -c "$work/upstream.conf" -p "$work" 2>"$work/nginx-start.log" || { cat "$work/nginx-start.log" >&2; exit 1; }
nginx -c "$work/reference.conf" -p "$work" 2>>"$work/nginx-start.log" || { cat "$work/nginx-start.log" >&2; exit 1; }
# Under callgrind for `instructions`: counts are exact whatever else runs.
RUN=()
if [ "$MODE" = instructions ]; then
  need valgrind valgrind
  RUN=(valgrind -q --tool=callgrind --callgrind-out-file="$work/callgrind.%p")
  # INSTR_REDIS=1: also poolgate on the Redis store, with redis-server under
  # callgrind too, so the server's instructions per request show.
  REDIS=${INSTR_REDIS:-0} CLUSTER=0
fi
"${RUN[@]}" "$BIN" --config "$work/poolgate.toml" >"$work/poolgate.log" 2>&1 &
pg_pid=$!
pids+=("$pg_pid")
wait_ready() { # admin port, log file
  # Slow to start under valgrind: up to a minute.
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return
    sleep 0.1
  done
  echo "poolgate did not start:"; cat "$2"; exit 1
}
wait_ready "$ADMIN" "$work/poolgate.log"

if [ "$REDIS" = 1 ] && [ "$MODE" != memory ]; then
  # The same poolgate, counters in Redis (one round trip per guarded request).
  "${RUN[@]}" redis-server --bind 127.0.0.1 --port "$RDS" --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  redis_pid=$!
  sed -e "s/127.0.0.1:$PG/127.0.0.1:$PGR/; s/127.0.0.1:$ADMIN/127.0.0.1:$ADMINR/" "$work/poolgate.toml" >"$work/poolgate-redis.toml"
  printf '[store]\nkind = "redis"\n[store.redis]\nurl = "redis://127.0.0.1:%s/0"\n' "$RDS" >>"$work/poolgate-redis.toml"
  # Both under callgrind, each call takes ~50x longer: not a timeout.
  [ "$MODE" = instructions ] && printf 'timeout = "5s"\n' >>"$work/poolgate-redis.toml"
  for _ in $(seq 300); do redis-cli -p "$RDS" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  "${RUN[@]}" "$BIN" --config "$work/poolgate-redis.toml" >"$work/poolgate-redis.log" 2>&1 &
  pgr_pid=$!
  pids+=("$pgr_pid")
  wait_ready "$ADMINR" "$work/poolgate-redis.log"
  if [ -n "$BASELINE" ] && [ "$MODE" = throughput ]; then
    # The baseline on the same Redis, counting apart (its own key prefix).
    sed -e "s/127.0.0.1:$PGR/127.0.0.1:$PGRB/; s/127.0.0.1:$ADMINR/127.0.0.1:$ADMINRB/" "$work/poolgate-redis.toml" >"$work/poolgate-rbase.toml"
    printf 'key_prefix = "pgbase"\n' >>"$work/poolgate-rbase.toml"
    "$BASELINE" --config "$work/poolgate-rbase.toml" >"$work/poolgate-rbase.log" 2>&1 &
    pgrb_pid=$!
    pids+=("$pgrb_pid")
    wait_ready "$ADMINRB" "$work/poolgate-rbase.log"
  fi
fi

if [ "$CLUSTER" = 1 ] && [ "$MODE" != memory ]; then
  # The same poolgate on a Redis Cluster of three masters (no replicas): a
  # login's two counters hash to different slots, so one script call each.
  for i in 0 1 2; do
    redis-server --bind 127.0.0.1 --port "${CL[$i]}" --save "" --appendonly no --dir "$work" \
      --cluster-enabled yes --cluster-port "${CLBUS[$i]}" --cluster-config-file "nodes-${CL[$i]}.conf" \
      >"$work/cluster-${CL[$i]}.log" 2>&1 &
    pids+=("$!")
  done
  for p in "${CL[@]}"; do
    for _ in $(seq 50); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  done
  redis-cli --cluster create "127.0.0.1:${CL[0]}" "127.0.0.1:${CL[1]}" "127.0.0.1:${CL[2]}" \
    --cluster-replicas 0 --cluster-yes >"$work/cluster-create.log" 2>&1 \
    || { echo "redis-cli --cluster create failed:" >&2; cat "$work/cluster-create.log" >&2; exit 1; }
  for p in "${CL[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" cluster info 2>/dev/null | grep -q 'cluster_state:ok' && break; sleep 0.1; done
    redis-cli -p "$p" cluster info | grep -q 'cluster_state:ok' || { echo "cluster not ok on port $p" >&2; exit 1; }
  done
  sed -e "s/127.0.0.1:$PG/127.0.0.1:$PGC/; s/127.0.0.1:$ADMIN/127.0.0.1:$ADMINC/" "$work/poolgate.toml" >"$work/poolgate-cluster.toml"
  printf '[store]\nkind = "redis"\n[store.redis]\nurl = "redis://127.0.0.1:%s/"\ncluster = true\nnodes = ["redis://127.0.0.1:%s/", "redis://127.0.0.1:%s/"]\n' \
    "${CL[0]}" "${CL[1]}" "${CL[2]}" >>"$work/poolgate-cluster.toml"
  "$BIN" --config "$work/poolgate-cluster.toml" >"$work/poolgate-cluster.log" 2>&1 &
  pids+=("$!")
  wait_ready "$ADMINC" "$work/poolgate-cluster.log"
fi

if [ -n "$BASELINE" ] && [ "$MODE" != memory ]; then
  # Another build, same config: the before of a before/after, interleaved.
  sed -e "s/127.0.0.1:$PG/127.0.0.1:$PGB/; s/127.0.0.1:$ADMIN/127.0.0.1:$ADMINB/" "$work/poolgate.toml" >"$work/poolgate-base.toml"
  "${RUN[@]}" "$BASELINE" --config "$work/poolgate-base.toml" >"$work/poolgate-base.log" 2>&1 &
  pgb_pid=$!
  pids+=("$pgb_pid")
  wait_ready "$ADMINB" "$work/poolgate-base.log"
fi

rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$pg_pid/status"; }

if [ "$MODE" = memory ]; then
  cat >"$work/keys.lua" <<EOF
local n = 0
wrk.method = "POST"
wrk.body = '{"account":"bob@example.com","password":"Secr3t!x"}'
wrk.headers["Content-Type"] = "application/json"
function request()
  if n >= $KEYS then wrk.thread:stop() end
  n = n + 1
  local ip = string.format("100.%d.%d.%d", 64 + math.floor(n / 65536) % 64, math.floor(n / 256) % 256, n % 256)
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip })
end
EOF
  base=$(rss_kb)
  echo "baseline RSS: ${base} kB"
  # wrk runs for its whole duration even after the script stops issuing requests:
  # give it enough time at ~10k req/s, the slowest rate seen here.
  wrk -t1 -c"$CONNECTIONS" -d"$(( KEYS / 10000 + 5 ))s" -s "$work/keys.lua" "http://127.0.0.1:$PG/api/v2/login/account" >"$work/keys.out"
  sleep 3
  keys=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -F' ' '/^poolgate_tracked_keys\{counter="login_ip"\}/ {print $2}')
  full=$(rss_kb)
  if [ "${keys:-0}" -gt 0 ]; then per_key=$(( (full - base) * 1024 / keys )); else per_key="?"; fi
  echo "after ${keys:-0} tracked client keys: RSS ${full} kB, ${per_key} bytes per key (all per-key state: counters and rate limiter)"
  echo "waiting for the window (${WINDOW:-300}s) to pass and the sweeper to evict ..."
  sleep $(( ${WINDOW:-300} + 5 ))
  keys_after=$(curl -s "http://127.0.0.1:$ADMIN/metrics" | awk -F' ' '/^poolgate_tracked_keys\{counter="login_ip"\}/ {print $2}')
  echo "after expiry: ${keys_after:-?} keys, RSS $(rss_kb) kB (baseline ${base} kB)"
  exit 0
fi

# Honest clients rotate over 65,536 addresses and accounts: in-flight attempts
# count against the per-IP and per-account limits, so one address with more
# than `limit` logins in flight would (rightly) be asked for a captcha.
cat >"$work/login.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Origin"] = "https://app.sample.com"
local n = 0
function request()
  n = n + 1
  local ip = string.format("198.51.%d.%d", math.floor(n / 256) % 256, n % 256)
  local body = string.format('{"account":"user%d@example.com","password":"Secr3t!x"}', n % 65536)
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip }, body)
end
EOF
# The same, with one request in ten from a client poolgate has captcha-gated
# (nginx forwards it like the rest).
cat >"$work/mix.lua" <<'EOF'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
function request()
  n = n + 1
  local ip = string.format("198.51.%d.%d", math.floor(n / 256) % 256, n % 256)
  if n % 10 == 0 then ip = "203.0.113.66" end
  local body = string.format('{"account":"user%d@example.com","password":"Secr3t!x"}', n % 65536)
  return wrk.format(nil, nil, { ["X-Forwarded-For"] = ip }, body)
end
EOF
# Gate 203.0.113.66: four wrong passwords (the pool allows 3).
for port in $PG $([ -n "$BASELINE" ] && echo $PGB) $([ "$REDIS" = 1 ] && echo $PGR) $([ -n "${pgrb_pid:-}" ] && echo $PGRB) $([ "$CLUSTER" = 1 ] && echo $PGC); do
  for _ in 1 2 3 4; do
    curl -s -o /dev/null -X POST "http://127.0.0.1:$port/api/v2/login/account" -H 'content-type: application/json' \
      -H 'x-forwarded-for: 203.0.113.66' -H 'x-wrong: 1' -d '{"account":"gated@example.com","password":"x"}'
  done
done

if [ "$MODE" = instructions ]; then
  # Zero the counters, send a fixed load, dump: instructions (Ir) per request
  # in poolgate's process (user space; syscalls count as one instruction).
  INSTR_SECS=${INSTR_SECS:-6}
  # Client connections (wrk -c): more share an event-loop turn, and so a
  # batched Redis call.
  INSTR_CONNECTIONS=${INSTR_CONNECTIONS:-4}
  printf '%-8s %-12s %10s %14s\n' scenario target requests "instr/request"
  for r in $(seq "$ROUNDS"); do
    for scenario in get login mix; do
      case $scenario in
        get) path=/api/ping script=() ;;
        login) path=/api/v2/login/account script=(-s "$work/login.lua") ;;
        mix) path=/api/v2/login/account script=(-s "$work/mix.lua") ;;
      esac
      for t in poolgate $([ -n "$BASELINE" ] && echo pg-base) $([ "$REDIS" = 1 ] && echo pg-redis); do
        # The processes counted: poolgate, and for pg-redis also redis-server.
        case $t in
          poolgate) counted=("$pg_pid") names=(poolgate) port=$PG ;;
          pg-base) counted=("$pgb_pid") names=(pg-base) port=$PGB ;;
          pg-redis) counted=("$pgr_pid" "$redis_pid") names=(pg-redis redis-server) port=$PGR ;;
        esac
        for pid in "${counted[@]}"; do callgrind_control -z "$pid" >/dev/null 2>&1; done
        out=$(wrk -t1 -c"$INSTR_CONNECTIONS" -d"${INSTR_SECS}s" "${script[@]}" "http://127.0.0.1:$port$path")
        n=$(awk '/requests in/ {print $1}' <<<"$out")
        for i in "${!counted[@]}"; do
          pid=${counted[$i]}
          rm -f "$work/callgrind.$pid".*
          callgrind_control -d "$pid" >/dev/null 2>&1
          # KEEP=dir keeps each dump for callgrind_annotate.
          if [ -n "${KEEP:-}" ]; then
            mkdir -p "$KEEP" && cp "$work/callgrind.$pid".* "$KEEP/$scenario-${names[$i]}-round$r.callgrind"
          fi
          ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/callgrind.$pid".* 2>/dev/null)
          printf '%-8s %-12s %10s %14.0f\n' "$scenario" "${names[$i]}" "$n" "$(awk -v i="${ir:-0}" -v n="$n" 'BEGIN { print (n > 0) ? i / n : 0 }')"
        done
      done
    done
  done
  exit 0
fi

if [ "$MODE" = serve ]; then
  # Everything above is running and 203.0.113.66 is gated: hold it for a
  # profiler, bounded in time like every other mode.
  trap 'exit 0' INT TERM
  echo "upstream (nginx) 127.0.0.1:$UP, nginx 127.0.0.1:$NGX (master pid $(cat "$work/reference.pid")),"
  echo "poolgate 127.0.0.1:$PG (pid $pg_pid, admin $ADMIN)$([ -n "$BASELINE" ] && echo ", pg-base 127.0.0.1:$PGB (pid $pgb_pid)")"
  echo "wrk scripts: $work/login.lua $work/mix.lua; holding for ${SERVE_SECS:-600}s (Ctrl-C stops)"
  sleep "${SERVE_SECS:-600}" & wait $!
  exit 0
fi

to_ms() { # wrk latency like 812.00us / 1.23ms / 1.01s -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

declare -A RPS P50 P99 CPU USR RCPU
targets=(direct nginx poolgate)
[ -n "$BASELINE" ] && targets+=(pg-base)
[ "$REDIS" = 1 ] && targets+=(pg-redis)
[ -n "${pgrb_pid:-}" ] && targets+=(pg-rbase)
[ "$CLUSTER" = 1 ] && targets+=(pg-cluster)
port_of() { case $1 in direct) echo $UP ;; nginx) echo $NGX ;; poolgate) echo $PG ;; pg-base) echo $PGB ;; pg-redis) echo $PGR ;; pg-rbase) echo $PGRB ;; pg-cluster) echo $PGC ;; esac; }
# The processes serving a target, for its CPU time: nginx's master and workers.
pids_of() {
  case $1 in
    nginx) local m; m=$(cat "$work/reference.pid"); echo "$m" $(ps -o pid= --ppid "$m") ;;
    poolgate) echo "$pg_pid" ;;
    pg-base) echo "$pgb_pid" ;;
    pg-redis) echo "$pgr_pid" ;;
    pg-rbase) echo "$pgrb_pid" ;;
    *) echo "" ;;
  esac
}
# user+system and user clock ticks of the given processes, all threads, from
# one read of each: "total user". The user share is kept apart because the
# kernel's (socket calls, wake-ups) is about the same for every proxy, so the
# user share shows what poolgate's own code costs.
ticks() {
  local t=0 u=0 p f
  for p in "$@"; do
    read -r -a f < <(awk '{print $14 + $15, $14}' "/proc/$p/stat")
    t=$(( t + f[0] )) u=$(( u + f[1] ))
  done
  echo "$t $u"
}
# user+system clock ticks alone.
cpu_ticks() { local t u; read -r t u < <(ticks "$@"); echo "$t"; }
# CPU µs per request: clock ticks (1/CLK_TCK s) over the run, requests.
us_per_request() { awk -v d="$1" -v hz="$(getconf CLK_TCK)" -v n="$2" 'BEGIN { printf "%.1f", d * 1e6 / hz / n }'; }
run() { # scenario target
  local scenario=$1 target=$2 url script=()
  url="http://127.0.0.1:$(port_of "$target")"
  case $scenario in
    get) url="$url/api/ping" ;;
    login) url="$url/api/v2/login/account"; script=(-s "$work/login.lua") ;;
    mix) url="$url/api/v2/login/account"; script=(-s "$work/mix.lua") ;;
  esac
  local out procs t0 t1 u0 u1 n apart="" r0=0
  procs=$(pids_of "$target")
  # pg-redis and pg-rbase: redis-server's CPU is counted apart (RCPU), so the
  # table shows where a shared-store login spends its time.
  [ "$target" = pg-redis ] || [ "$target" = pg-rbase ] && apart=$redis_pid
  # shellcheck disable=SC2086 # a list of pids
  read -r t0 u0 < <(ticks $procs)
  [ -n "$apart" ] && r0=$(cpu_ticks "$apart")
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "${script[@]}" "$url")
  # shellcheck disable=SC2086
  read -r t1 u1 < <(ticks $procs)
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  [ -n "$apart" ] && RCPU[$scenario.$target]+="$(us_per_request $(( $(cpu_ticks "$apart") - r0 )) "$n") "
  [ -n "$procs" ] && CPU[$scenario.$target]+="$(us_per_request $(( t1 - t0 )) "$n") "
  [ -n "$procs" ] && USR[$scenario.$target]+="$(us_per_request $(( u1 - u0 )) "$n") "
  RPS[$scenario.$target]+="$(awk '/Requests\/sec/ {print $2}' <<<"$out") "
  P50[$scenario.$target]+="$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")") "
  P99[$scenario.$target]+="$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")") "
}
median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

echo "rounds=$ROUNDS duration=${DURATION}s connections=$CONNECTIONS threads=2 ($(nproc) cores)"
for r in $(seq "$ROUNDS"); do
  for scenario in get login mix; do
    # Rotate the order each round.
    k=$(( r % ${#targets[@]} ))
    order=("${targets[@]:$k}" "${targets[@]:0:$k}")
    for t in "${order[@]}"; do run "$scenario" "$t"; done
  done
  echo "round $r done" >&2
done

printf '\n%-8s %-10s %12s %10s %10s %12s %12s\n' scenario target "req/s" "p50 ms" "p99 ms" "CPU us/req" "user us/req"
for scenario in get login mix; do
  for t in "${targets[@]}"; do
    cpu="" usr=""
    [ -n "${CPU[$scenario.$t]:-}" ] && cpu=$(median "${CPU[$scenario.$t]}")
    [ -n "${USR[$scenario.$t]:-}" ] && usr=$(median "${USR[$scenario.$t]}")
    printf '%-8s %-10s %12.0f %10.3f %10.3f %12s %12s\n' "$scenario" "$t" \
      "$(median "${RPS[$scenario.$t]}")" "$(median "${P50[$scenario.$t]}")" "$(median "${P99[$scenario.$t]}")" "${cpu:--}" "${usr:--}"
  done
  awk -v a="$(median "${CPU[$scenario.poolgate]}")" -v b="$(median "${CPU[$scenario.nginx]}")" \
    -v ua="$(median "${USR[$scenario.poolgate]}")" -v ub="$(median "${USR[$scenario.nginx]}")" -v s="$scenario" \
    'BEGIN { printf "%-8s CPU per request: poolgate/nginx %.2f (user %.2f, system %.2f)\n", s, a/b, (ub > 0 ? ua/ub : 0), (b > ub ? (a-ua)/(b-ub) : 0) }'
  if [ -n "$BASELINE" ]; then
    awk -v r="$(median "${RPS[$scenario.pg-base]}")" -v ng="$(median "${RPS[$scenario.nginx]}")" \
      -v p99="$(median "${P99[$scenario.pg-base]}")" -v p99ng="$(median "${P99[$scenario.nginx]}")" \
      -v c="$(median "${CPU[$scenario.pg-base]}")" -v cn="$(median "${CPU[$scenario.nginx]}")" -v s="$scenario" \
      'BEGIN { printf "%-8s baseline: pg-base/nginx req/s %.2f, p99 %.2f, CPU/req %.2f\n", s, r/ng, p99/p99ng, c/cn }'
  fi
  pg=$(median "${RPS[$scenario.poolgate]}"); ng=$(median "${RPS[$scenario.nginx]}"); di=$(median "${RPS[$scenario.direct]}")
  awk -v pg="$pg" -v ng="$ng" -v di="$di" -v p99pg="$(median "${P99[$scenario.poolgate]}")" -v p99ng="$(median "${P99[$scenario.nginx]}")" -v s="$scenario" \
    'BEGIN { printf "%-8s ratios: poolgate/nginx req/s %.2f, p99 %.2f; poolgate/direct req/s %.2f\n", s, pg/ng, p99pg/p99ng, pg/di }'
  if [ "$REDIS" = 1 ]; then
    awk -v r="$(median "${RPS[$scenario.pg-redis]}")" -v pg="$pg" -v ng="$ng" \
      -v p99r="$(median "${P99[$scenario.pg-redis]}")" -v p99pg="$(median "${P99[$scenario.poolgate]}")" -v s="$scenario" \
      'BEGIN { printf "%-8s redis store: req/s %.2f of the memory store, p99 %.2f of it; pg-redis/nginx req/s %.2f\n", s, r/pg, p99r/p99pg, r/ng }'
    awk -v c="$(median "${CPU[$scenario.pg-redis]}")" -v rc="$(median "${RCPU[$scenario.pg-redis]}")" -v m="$(median "${CPU[$scenario.poolgate]}")" -v s="$scenario" \
      'BEGIN { printf "%-8s redis store CPU us/req: poolgate %.1f + redis-server %.1f = %.2f of the memory store'"'"'s poolgate\n", s, c, rc, (c+rc)/m }'
    if [ -n "${pgrb_pid:-}" ]; then
      # The baseline on Redis against the baseline in memory: the before of the ratio above.
      awk -v r="$(median "${RPS[$scenario.pg-rbase]}")" -v b="$(median "${RPS[$scenario.pg-base]}")" \
        -v p99r="$(median "${P99[$scenario.pg-rbase]}")" -v p99b="$(median "${P99[$scenario.pg-base]}")" \
        -v c="$(median "${CPU[$scenario.pg-rbase]}")" -v rc="$(median "${RCPU[$scenario.pg-rbase]}")" -v s="$scenario" \
        'BEGIN { printf "%-8s baseline redis store: req/s %.2f of its memory store, p99 %.2f of it; CPU us/req poolgate %.1f + redis-server %.1f\n", s, r/b, p99r/p99b, c, rc }'
    fi
  fi
  if [ "$CLUSTER" = 1 ]; then
    awk -v r="$(median "${RPS[$scenario.pg-cluster]}")" -v pg="$pg" -v ng="$ng" \
      -v p99r="$(median "${P99[$scenario.pg-cluster]}")" -v p99pg="$(median "${P99[$scenario.poolgate]}")" -v s="$scenario" \
      'BEGIN { printf "%-8s cluster store: req/s %.2f of the memory store, p99 %.2f of it; pg-cluster/nginx req/s %.2f\n", s, r/pg, p99r/p99pg, r/ng }'
  fi
done
# A Redis figure only counts if Redis answered: a store that failed falls back
# to local counters and would look fast.
store_health() { # label admin-port
  curl -s "http://127.0.0.1:$2/metrics" | awk -v l="$1" '
    /^poolgate_store_errors_total/ { e += $NF } /^poolgate_store_fallbacks_total/ { f += $NF }
    END { printf "%s: store errors %d, fallbacks %d", l, e, f }'
}
if [ "$REDIS" = 1 ]; then echo; store_health pg-redis "$ADMINR"; echo; fi
if [ -n "${pgrb_pid:-}" ]; then store_health pg-rbase "$ADMINRB"; echo; fi
if [ "$CLUSTER" = 1 ]; then
  store_health pg-cluster "$ADMINC"
  printf '; keys per master:'
  for p in "${CL[@]}"; do printf ' %s' "$(redis-cli -p "$p" dbsize)"; done
  echo
fi
