#!/usr/bin/env bash
# Make a real `consul` binary available for the tests and the demo.
# Order: a `consul` already on PATH, then .tools/bin/consul, else Consul from the Debian
# "bullseye" suite of the mirror this machine's apt is already configured with. The system's
# apt configuration is never modified: a private sources list and private state dirs are used.
# Prints the path of the consul binary on stdout.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"

if command -v consul >/dev/null 2>&1; then
  command -v consul
  exit 0
fi
if [ -x "$tools/bin/consul" ]; then
  echo "$tools/bin/consul"
  exit 0
fi

mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk '/^URIs:/ {print $2; exit}' "$f")
  case "$uri" in *security*) continue ;; esac
  if [ -n "$uri" ]; then mirror=$uri; break; fi
done
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
  echo "ensure-consul: no Debian mirror found in the apt sources" >&2
  exit 1
fi

apt_dir="$tools/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/deb" "$tools/bin"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bullseye main" > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
      -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
echo "ensure-consul: fetching consul from the bullseye suite" >&2
apt-get "${opts[@]}" update >&2
(cd "$apt_dir/deb" && apt-get "${opts[@]}" download consul >&2)
deb=$(ls "$apt_dir"/deb/consul_*.deb | head -n 1)
extract="$apt_dir/extract"
rm -rf "$extract"
dpkg-deb -x "$deb" "$extract"
install -m 0755 "$extract/usr/bin/consul" "$tools/bin/consul"
"$tools/bin/consul" version >&2
echo "$tools/bin/consul"
