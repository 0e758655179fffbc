#!/usr/bin/env bash
# Chart and manifest tests (`make chart-test`): real helm 3 and helm 4 (scripts/ensure-helm.sh) and a
# Python venv with kubernetes-validate, then tests/chart/test_chart.py, which runs every chart test
# with both helms. Installs what is missing, idempotently; fast when all is there.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
tools="$root/.tools"
mkdir -p "$tools/bin"

# Space-separated helm binaries the tests run with; each is tested in full.
helms=$(scripts/ensure-helm.sh | tr '\n' ' ')

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

[ "${1:-}" = --install-only ] && exit 0
CHART_HELMS="$helms" exec "$venv/bin/python" -m tests.chart.test_chart "$@"
