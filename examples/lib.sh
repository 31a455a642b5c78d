# shellcheck shell=bash
# What the run-local.sh scripts of the examples share. A script sources it,
# after 'set -euo pipefail', with
#
#   . "$(dirname "$0")/../lib.sh"
#
# It only defines these functions; the script calls them in this order:
#
#   require_tools [--hint TEXT] TOOL...  exit unless every TOOL is installed
#                                        (and go, unless PQTUNNEL_BIN is set)
#   setup_run PREFIX     drop the caller's PQT_* variables, make the temporary
#                        directory $tmp, and stop everything on exit
#   find_pqtunnel        set $bin: $PQTUNNEL_BIN, or pqtunnel built into $tmp
#   free_ports N         print N free 127.0.0.1 ports
#   start NAME CMD...    run CMD in the background, output in $tmp/NAME.log
#   wait_ready NAME URL [TEXT]  wait until URL answers 200 (containing TEXT)
#   fail MESSAGE         print FAIL: MESSAGE and exit 1
#
# On exit, success or not, every process that 'start' started is stopped and
# waited for, and $tmp is removed. On failure, every log is printed first.
# Everything here binds or connects to 127.0.0.1 only.

# The repository root, two levels above this file's directory.
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# require_tools [--hint TEXT] TOOL... exits unless every TOOL is installed,
# and go too unless PQTUNNEL_BIN is set. TEXT says how to install them.
require_tools() {
  local hint="" tool
  if [[ ${1:-} == --hint ]]; then
    hint=" ($2)"
    shift 2
  fi
  local need=("$@")
  [[ -n ${PQTUNNEL_BIN:-} ]] || need+=(go)
  for tool in "${need[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "run-local.sh: $tool is not installed$hint" >&2
      exit 1
    fi
  done
}

# setup_run PREFIX unsets the caller's PQT_* variables, so that only those the
# script sets reach pqtunnel; makes the temporary directory $tmp (named after
# PREFIX); and sets the trap that stops everything on exit.
setup_run() {
  local v
  for v in $(compgen -e); do
    case $v in PQT_*) unset "$v" ;; esac
  done

  tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  # What 'start' started: process ids and names, in the same order.
  pids=()
  names=()

  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# cleanup is the EXIT trap: it stops every started process (SIGTERM, then
# SIGKILL after 5 s) and waits for it, prints every log if the script is
# failing, removes $tmp and exits with the script's status.
cleanup() {
  local status=$? i
  trap - EXIT INT TERM
  for i in "${!pids[@]}"; do
    kill -TERM "${pids[$i]}" 2>/dev/null || true
  done
  for i in "${!pids[@]}"; do
    # pqtunnel drains for at most PQT_DRAIN_TIMEOUT (the scripts set 2s);
    # then it is killed.
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

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# find_pqtunnel sets bin to $PQTUNNEL_BIN if that is set, or else builds
# pqtunnel into $tmp the way the Dockerfile does.
# shellcheck disable=SC2034 # bin is for the script that sources this file.
find_pqtunnel() {
  if [[ -n ${PQTUNNEL_BIN:-} ]]; then
    bin=$PQTUNNEL_BIN
  else
    echo "building pqtunnel into $tmp"
    (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o "$tmp/pqtunnel" ./cmd/pqtunnel)
    bin=$tmp/pqtunnel
  fi
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

# wait_ready NAME URL [TEXT] waits until URL (pqtunnel's /readyz) answers 200
# and, if TEXT is given, with a body that contains TEXT.
wait_ready() {
  local name=$1 url=$2 text=${3:-} body
  for _ in $(seq 150); do
    if body=$(curl -fsS --max-time 1 "$url" 2>/dev/null) &&
      { [[ -z $text ]] || grep -q -- "$text" <<<"$body"; }; then
      return 0
    fi
    sleep 0.1
  done
  fail "$name did not become ready: $url"
}
