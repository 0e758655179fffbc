#!/usr/bin/env bash
# Container tests (`make container-test`): build the lockwrap image from the host's static binary
# and run it in a private Docker daemon against a Consul agent on 127.0.0.1.
#
# Setup, all undone at exit (also on failure): Debian's docker.io is installed if missing; a private
# dockerd runs with its own --data-root (.tools/docker, kept as a cache of image layers), --exec-root,
# --pidfile and unix socket (a /tmp directory), no bridge and no iptables rules (the tests use
# --network host only, so nothing but 127.0.0.0/8 is used); it is stopped by its PID.
# Where Docker cannot run (no root, no apt, dockerd does not come up), the tests are skipped with the
# reason; LOCKWRAP_REQUIRE_DOCKER=1 makes that a failure instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tools="$root/.tools"
docker=/usr/bin/docker  # Debian's CLI: it builds with BuildKit (a newer CLI may lack buildx)
dockerd=/usr/sbin/dockerd

skip() {
  echo "container-test: SKIPPED: $*" >&2
  [ "${LOCKWRAP_REQUIRE_DOCKER:-0}" = 1 ] && exit 1
  exit 0
}

[ "$(uname -s)" = Linux ] || skip "needs Linux"
[ "$(id -u)" = 0 ] || skip "needs root to start a private dockerd"
if [ ! -x "$docker" ] || [ ! -x "$dockerd" ] || [ ! -x /bin/busybox ]; then
  command -v apt-get >/dev/null 2>&1 || skip "docker.io and busybox-static are not installed and there is no apt-get"
  echo "container-test: installing docker.io and busybox-static (Debian packages)" >&2
  apt-get update -qq >&2 || skip "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker.io busybox-static >&2 \
    || skip "apt-get install docker.io busybox-static failed"
fi

consul=$(scripts/ensure-consul.sh)
[ -x "target/image/lockwrap" ] || { echo "container-test: run 'make image-context' first" >&2; exit 1; }

run=$(mktemp -d /tmp/lockwrap-dockerd.XXXXXX)
pidfile="$run/dockerd.pid"
dockerd_pid=""
stop_dockerd() {
  local pid=${dockerd_pid:-$(cat "$pidfile" 2>/dev/null || true)}
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  # dockerd leaves its default network namespace mounted under the exec-root.
  awk -v run="$run/" 'index($2, run) == 1 {print $2}' /proc/mounts | sort -r | while read -r m; do
    umount "$m" || umount -l "$m" || true
  done
  rm -rf "$run"
}
trap stop_dockerd EXIT

mkdir -p "$tools/docker"
"$dockerd" --data-root "$tools/docker" --exec-root "$run/exec" --pidfile "$pidfile" \
  --host "unix://$run/docker.sock" --bridge none --iptables=false --ip-masq=false \
  >"$run/dockerd.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST="unix://$run/docker.sock"
up=0
for _ in $(seq 300); do
  if "$docker" version >/dev/null 2>&1; then up=1; break; fi
  kill -0 "$dockerd_pid" 2>/dev/null || break
  sleep 0.1
done
if [ $up = 0 ]; then
  tail -n 20 "$run/dockerd.log" >&2 || true
  skip "the private dockerd did not start (log above)"
fi
echo "container-test: private dockerd pid $dockerd_pid, $("$docker" version --format '{{.Server.Version}}'), storage $("$docker" info --format '{{.Driver}}')" >&2

DOCKER="$docker" CONSUL_BIN="$consul" python3 -m tests.container.test_container "$@"
