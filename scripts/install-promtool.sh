#!/usr/bin/env bash
# Installs `promtool` (the Prometheus linter the metrics tests run) into .tools/bin/.
#
# It comes from Debian's `prometheus` package, but only the one binary is unpacked: the
# package would install a Prometheus server, a system user and a dozen JavaScript
# packages system-wide for a 48 MB static tool. Idempotent: does nothing when
# .tools/bin/promtool already runs. Needs apt-get (Debian or Ubuntu) and the package index.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools/bin"
PROMTOOL="$TOOLS/promtool"

if "$PROMTOOL" --version >/dev/null 2>&1; then
  exit 0
fi
mkdir -p "$TOOLS"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -qq >/dev/null  # a fresh machine may have no package index yet
  apt-get download prometheus >/dev/null
fi
dpkg-deb --fsys-tarfile prometheus_*.deb | tar -x ./usr/bin/promtool
install -m 0755 usr/bin/promtool "$PROMTOOL"
"$PROMTOOL" --version | head -1
