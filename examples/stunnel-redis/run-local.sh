#!/usr/bin/env bash
# The stunnel-redis example on one machine, on loopback only:
#
#   redis-cli ──▶ dial side (FORWARD_PORT) ══ tunnel (TUNNEL_PORT) ══▶ listen side ──▶ redis-server (REDIS_PORT)
#
# It builds pqtunnel into a temporary directory (or uses $PQTUNNEL_BIN), makes
# an identity for each side, starts redis-server, the listen side and the dial
# side on free 127.0.0.1 ports, checks PING, SET and GET through the tunnel,
# and stops everything it started on exit. Exit status 0 means it all worked.
#
# Needs: go (unless PQTUNNEL_BIN is set), redis-server, redis-cli, curl, python3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

need=(redis-server redis-cli curl python3)
[[ -n ${PQTUNNEL_BIN:-} ]] || need+=(go)
for tool in "${need[@]}"; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "run-local.sh: $tool is not installed (redis-server and redis-cli: apt-get install redis-server redis-tools)" >&2
    exit 1
  fi
done

# Only the variables set below reach pqtunnel, not any PQT_* of the caller.
for v in $(compgen -e); do
  case $v in PQT_*) unset "$v" ;; esac
done

tmp=$(mktemp -d "${TMPDIR:-/tmp}/pqtunnel-redis.XXXXXX")
pids=()
names=()

cleanup() {
  local status=$? i
  trap - EXIT INT TERM
  for i in "${!pids[@]}"; do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    # pqtunnel drains for at most PQT_DRAIN_TIMEOUT (2s here); then it is killed.
    for _ in $(seq 50); do
      kill -0 "${pids[$i]}" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "${pids[$i]}" 2>/dev/null; then
      echo "run-local.sh: ${names[$i]} did not stop on SIGTERM; killing it" >&2
      kill -KILL "${pids[$i]}" 2>/dev/null || true
    fi
    wait "${pids[$i]}" 2>/dev/null || true
  done
  if [[ $status -ne 0 ]]; then
    for i in "${!names[@]}"; do
      echo "----- ${names[$i]} log -----" >&2
      cat "$tmp/${names[$i]}.log" >&2 2>/dev/null || true
    done
  fi
  rm -rf "$tmp"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# start NAME CMD... runs CMD in the background with its output in NAME.log.
start() {
  local name=$1
  shift
  "$@" >"$tmp/$name.log" 2>&1 &
  pids+=("$!")
  names+=("$name")
}

# free_ports N prints N distinct 127.0.0.1 ports that are free on both TCP
# and UDP (a listen side uses the same port number for QUIC and TLS/TCP).
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
held, ports = [], []
while len(ports) < int(sys.argv[1]):
    t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    t.bind(("127.0.0.1", 0))
    port = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind(("127.0.0.1", port))
    except OSError:
        t.close()
        u.close()
        continue
    held += [t, u]
    ports.append(port)
print(" ".join(map(str, ports)))
PY
}

# wait_ready NAME URL waits until URL answers 200 (pqtunnel's /readyz).
wait_ready() {
  local name=$1 url=$2
  for _ in $(seq 150); do
    if curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  fail "$name did not become ready: $url"
}

if [[ -n ${PQTUNNEL_BIN:-} ]]; then
  bin=$PQTUNNEL_BIN
else
  echo "building pqtunnel into $tmp"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/pqtunnel" ./cmd/pqtunnel)
  bin=$tmp/pqtunnel
fi

read -r REDIS_PORT TUNNEL_PORT FORWARD_PORT LISTEN_METRICS_PORT DIAL_METRICS_PORT < <(free_ports 5)
echo "ports: redis $REDIS_PORT, tunnel $TUNNEL_PORT, forward $FORWARD_PORT"

# One identity per side; keygen prints the pin that the other side accepts.
LISTEN_PIN=$("$bin" keygen -o "$tmp/listen.id")
DIAL_PIN=$("$bin" keygen -o "$tmp/dial.id")

start redis-server redis-server --bind 127.0.0.1 --port "$REDIS_PORT" \
  --save '' --appendonly no --dir "$tmp" --daemonize no

# Host A in listen.env: the listen side in front of Redis.
start listen env \
  PQT_MODE=listen \
  PQT_TUNNEL="127.0.0.1:$TUNNEL_PORT" \
  PQT_TARGET="127.0.0.1:$REDIS_PORT" \
  PQT_IDENTITY="$tmp/listen.id" \
  PQT_PEERS="$DIAL_PIN" \
  PQT_METRICS="127.0.0.1:$LISTEN_METRICS_PORT" \
  PQT_DRAIN_TIMEOUT=2s \
  "$bin"

# Host B in dial.env: the dial side offering Redis on a local port.
start dial env \
  PQT_MODE=dial \
  PQT_TUNNEL="127.0.0.1:$TUNNEL_PORT" \
  PQT_FORWARD="127.0.0.1:$FORWARD_PORT" \
  PQT_IDENTITY="$tmp/dial.id" \
  PQT_PEERS="$LISTEN_PIN" \
  PQT_METRICS="127.0.0.1:$DIAL_METRICS_PORT" \
  PQT_DRAIN_TIMEOUT=2s \
  "$bin"

wait_ready listen "http://127.0.0.1:$LISTEN_METRICS_PORT/readyz"
# A dial side is ready once a tunnel connection is up.
wait_ready dial "http://127.0.0.1:$DIAL_METRICS_PORT/readyz"

# Redis may still be loading; retry PING briefly.
pong=""
for _ in $(seq 50); do
  pong=$(redis-cli -h 127.0.0.1 -p "$FORWARD_PORT" PING 2>&1 || true)
  [[ $pong == PONG ]] && break
  sleep 0.1
done
[[ $pong == PONG ]] || fail "redis-cli -p $FORWARD_PORT PING answered '$pong', want PONG"
echo "redis-cli -p $FORWARD_PORT PING: $pong"

value="post-quantum $RANDOM$RANDOM"
got=$(redis-cli -h 127.0.0.1 -p "$FORWARD_PORT" SET pqtunnel:example "$value")
[[ $got == OK ]] || fail "SET answered '$got', want OK"
got=$(redis-cli -h 127.0.0.1 -p "$FORWARD_PORT" GET pqtunnel:example)
[[ $got == "$value" ]] || fail "GET answered '$got', want '$value'"
# The value really is in the Redis behind the listen side.
got=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" GET pqtunnel:example)
[[ $got == "$value" ]] || fail "GET on Redis itself answered '$got', want '$value'"
echo "SET/GET through the tunnel: OK"

# What the tunnel negotiated, from the dial side's /readyz.
readyz=$(curl -fsS "http://127.0.0.1:$DIAL_METRICS_PORT/readyz")
grep -q '"post_quantum": true' <<<"$readyz" || fail "dial side reports no post-quantum tunnel connection: $readyz"
group=$(grep -o '"group": "[^"]*"' <<<"$readyz" | head -n 1)
transport=$(grep -o '"transport": "[^"]*"' <<<"$readyz" | head -n 1)
echo "tunnel: $transport, $group"
echo "PASS: stunnel-redis"
