#!/usr/bin/env bash
# Chart and manifest tests (`make chart-test`): builds tools/chart-render (a helm-template stand-in,
# since no helm binary is assumed) and a Python venv with kubernetes-validate, then runs
# tests/chart/test_chart.py. Installs what is missing, idempotently; fast when all is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tools="$root/.tools"
mkdir -p "$tools/bin"

# Go and the two libraries the renderer uses, from Debian (import paths without module versions).
gopath=/usr/share/gocode
if ! command -v go >/dev/null 2>&1 || [ ! -d "$gopath/src/github.com/Masterminds/sprig" ] \
    || [ ! -d "$gopath/src/gopkg.in/yaml.v3" ]; then
  echo "chart-test: installing golang-go, sprig and yaml.v3 (Debian packages)" >&2
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev >&2
fi

render="$tools/bin/chart-render"
if [ ! -x "$render" ] || [ tools/chart-render/main.go -nt "$render" ]; then
  echo "chart-test: building tools/chart-render" >&2
  (cd tools/chart-render && GO111MODULE=off GOPATH="$gopath" GOCACHE="$tools/go-cache" GOFLAGS= \
     go build -o "$render" .)
fi

# kubernetes-validate (bundles the Kubernetes JSON schemas, works offline; brings jsonschema, PyYAML).
venv="$tools/chart-venv"
kv_version=1.37.0
if ! "$venv/bin/python" -c "import kubernetes_validate.version as v, sys; sys.exit(v.__version__ != '$kv_version')" 2>/dev/null; then
  echo "chart-test: installing kubernetes-validate $kv_version into $venv" >&2
  if ! python3 -m venv --clear "$venv" >&2; then
    # Debian's system python3 keeps venv in a separate package.
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    python3 -m venv --clear "$venv" >&2
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$kv_version" >&2
fi

[ "${1:-}" = --build-only ] && exit 0
CHART_RENDER="$render" exec "$venv/bin/python" tests/chart/test_chart.py "$@"
