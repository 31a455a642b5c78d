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

# examples/lib.sh: require_tools, setup_run, find_pqtunnel, free_ports, start,
# wait_ready and fail, shared with the other run-local.sh.
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

require_tools --hint "redis-server and redis-cli: apt-get install redis-server redis-tools" \
  redis-server redis-cli curl python3
setup_run pqtunnel-redis # $tmp, and everything stops on exit
find_pqtunnel            # $bin

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
