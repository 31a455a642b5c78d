#!/usr/bin/env bash
# The reverse-web example on one machine, on loopback only:
#
#   curl ──▶ relay (listen side, FORWARD_PORT) ◀══ tunnel (TUNNEL_PORT) ══ origin's dial side ──▶ python3 http.server (WEB_PORT)
#
# The origin's side dials out to the relay; the relay exposes the web server.
# It builds pqtunnel into a temporary directory (or uses $PQTUNNEL_BIN), makes
# an identity for each side, starts the web server, the relay and the origin's
# dial side on free 127.0.0.1 ports, fetches pages through the relay, and
# stops everything it started on exit. Exit status 0 means it all worked.
#
# Needs: go (unless PQTUNNEL_BIN is set), python3, curl.
set -euo pipefail

# examples/lib.sh: require_tools, setup_run, find_pqtunnel, free_ports, start,
# wait_ready and fail, shared with the other run-local.sh.
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

require_tools python3 curl
setup_run pqtunnel-web # $tmp, and everything stops on exit
find_pqtunnel          # $bin

read -r WEB_PORT TUNNEL_PORT FORWARD_PORT RELAY_METRICS_PORT ORIGIN_METRICS_PORT < <(free_ports 5)
echo "ports: web $WEB_PORT, tunnel $TUNNEL_PORT, relay forward $FORWARD_PORT"

# The origin: a small site served by python3 on loopback only.
mkdir "$tmp/www"
echo "hello from the origin behind pqtunnel" >"$tmp/www/index.html"
head -c 1048576 /dev/urandom >"$tmp/www/blob.bin"
start web python3 -m http.server --bind 127.0.0.1 --directory "$tmp/www" "$WEB_PORT"

# One identity per side; keygen prints the pin that the other side accepts.
RELAY_PIN=$("$bin" keygen -o "$tmp/relay.id")
ORIGIN_PIN=$("$bin" keygen -o "$tmp/origin.id")

# The relay in relay.env: listens for the origin's tunnel, exposes the site.
start relay env \
  PQT_MODE=listen \
  PQT_TUNNEL="127.0.0.1:$TUNNEL_PORT" \
  PQT_FORWARD="127.0.0.1:$FORWARD_PORT" \
  PQT_IDENTITY="$tmp/relay.id" \
  PQT_PEERS="$ORIGIN_PIN" \
  PQT_METRICS="127.0.0.1:$RELAY_METRICS_PORT" \
  PQT_DRAIN_TIMEOUT=2s \
  "$bin"

# The relay listens as soon as it starts. With no tunnel connection up yet,
# a visitor is refused at once, not left hanging.
wait_ready relay "http://127.0.0.1:$RELAY_METRICS_PORT/readyz" '"ready": true'
rc=0
curl -sS --max-time 5 -o /dev/null "http://127.0.0.1:$FORWARD_PORT/" 2>/dev/null || rc=$?
[[ $rc -ne 0 ]] || fail "the relay answered a visitor before the origin's tunnel was up"
[[ $rc -ne 28 ]] || fail "the relay left a visitor hanging while no tunnel was up"
echo "before the origin connects: the relay refuses visitors at once (curl exit $rc)"

# The origin's side in origin.env: dials out, delivers to the web server.
start origin env \
  PQT_MODE=dial \
  PQT_TUNNEL="127.0.0.1:$TUNNEL_PORT" \
  PQT_TARGET="127.0.0.1:$WEB_PORT" \
  PQT_IDENTITY="$tmp/origin.id" \
  PQT_PEERS="$RELAY_PIN" \
  PQT_CONNECTIONS=2 \
  PQT_METRICS="127.0.0.1:$ORIGIN_METRICS_PORT" \
  PQT_DRAIN_TIMEOUT=2s \
  "$bin"

# The origin's side is ready once its tunnel is up; the relay was ready as
# soon as it listened, so also wait until its /readyz lists the tunnel.
wait_ready origin "http://127.0.0.1:$ORIGIN_METRICS_PORT/readyz" '"ready": true'
wait_ready relay "http://127.0.0.1:$RELAY_METRICS_PORT/readyz" '"post_quantum": true'

# The web server may still be starting; retry the first request briefly.
page=""
for _ in $(seq 50); do
  page=$(curl -fsS --max-time 5 "http://127.0.0.1:$FORWARD_PORT/" 2>/dev/null || true)
  [[ -n $page ]] && break
  sleep 0.1
done
[[ $page == "hello from the origin behind pqtunnel" ]] ||
  fail "GET / through the relay answered '$page', want the origin's index.html"
echo "GET / through the relay: $page"

curl -fsS --max-time 20 -o "$tmp/blob.got" "http://127.0.0.1:$FORWARD_PORT/blob.bin" ||
  fail "GET /blob.bin through the relay failed"
cmp -s "$tmp/www/blob.bin" "$tmp/blob.got" || fail "GET /blob.bin: the 1 MiB body differs from the origin's file"
echo "GET /blob.bin through the relay: 1 MiB, byte for byte"

# Ten requests at once, each on its own stream.
gets=()
for i in $(seq 10); do
  curl -fsS --max-time 20 -o "$tmp/par.$i" "http://127.0.0.1:$FORWARD_PORT/blob.bin" &
  gets+=("$!")
done
for pid in "${gets[@]}"; do
  wait "$pid" || fail "a concurrent GET through the relay failed"
done
for i in $(seq 10); do
  cmp -s "$tmp/www/blob.bin" "$tmp/par.$i" || fail "concurrent GET $i: body differs"
done
echo "10 concurrent GETs through the relay: OK"

readyz=$(curl -fsS "http://127.0.0.1:$RELAY_METRICS_PORT/readyz")
group=$(grep -o '"group": "[^"]*"' <<<"$readyz" | head -n 1)
transport=$(grep -o '"transport": "[^"]*"' <<<"$readyz" | head -n 1)
echo "tunnel: $transport, $group"
echo "PASS: reverse-web"
