#!/usr/bin/env bash
# `make demo`: start a throwaway Consul dev agent on loopback and show lockwrap at work —
# two contenders taking turns on one lock, the JSON CLI, and lock loss.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
lockwrap="$root/target/release/lockwrap"
consul=$("$root/scripts/ensure-consul.sh")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ports=$(python3 -c 'import socket
ss=[socket.socket() for _ in range(3)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')
read -r lan wan server <<<"$ports"
work=$(mktemp -d)
"$consul" agent -dev -bind 127.0.0.1 -client 127.0.0.1 -log-level=warn -http-port "$port" \
  -dns-port -1 -grpc-port -1 -serf-lan-port "$lan" -serf-wan-port "$wan" -server-port "$server" \
  >"$work/consul.log" 2>&1 &
agent=$!
cleanup() { kill "$agent" 2>/dev/null || true; wait "$agent" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
export CONSUL_HTTP_ADDR="127.0.0.1:$port"
for _ in $(seq 100); do
  curl -sf "http://$CONSUL_HTTP_ADDR/v1/status/leader" | grep -q : && break
  sleep 0.1
done
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Two contenders, one lock: their critical sections never overlap"
for who in alpha beta; do
  "$lockwrap" run --key demo/singleton -- sh -c \
    "echo \"  $who: got the lock (fencing token \$LOCKWRAP_FENCING_TOKEN)\"; sleep 1; echo \"  $who: done\"" &
done
wait %2 %3 2>/dev/null || wait

say "consullock-compatible CLI: lock, status, non-blocking attempt, unlock"
"$lockwrap" lock --metadata '{"owner":"demo"}' demo/cli
"$lockwrap" status demo/cli
"$lockwrap" lock --non-blocking demo/cli || echo "  (exit $? = locked by someone else)"
"$lockwrap" unlock demo/cli

say "Lock loss: the session is destroyed behind lockwrap's back; the command is stopped (exit 101)"
"$lockwrap" run --key demo/loss --kill-grace 1s -- sh -c 'trap "echo \"  child: got SIGTERM\"; exit 0" TERM; echo "  child: running"; while :; do sleep 0.1; done' &
runner=$!
for _ in $(seq 100); do
  session=$(curl -s "http://$CONSUL_HTTP_ADDR/v1/kv/demo/loss" | python3 -c 'import json,sys
try: print(json.load(sys.stdin)[0].get("Session") or "")
except Exception: print("")')
  [ -n "$session" ] && break
  sleep 0.05
done
curl -s -X PUT "http://$CONSUL_HTTP_ADDR/v1/session/destroy/$session" >/dev/null
set +e; wait "$runner"; code=$?; set -e
echo "  lockwrap exited $code"

say "Sessions left in Consul: $(curl -s "http://$CONSUL_HTTP_ADDR/v1/session/list")"
