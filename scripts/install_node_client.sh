#!/usr/bin/env bash
# Installs the Node.js client the tests use (tests/node: @grpc/grpc-js and @grpc/proto-loader,
# exact versions from its package-lock.json) into .tools/node. Quick and silent when it is
# there already; needs node and npm (Node 18 or newer). `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/node
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: install Node.js 18+ to run the grpc-js test (tests/test_grpc_js.py skips without it)" >&2
  exit 0
fi
if [ -f "$TOOLS/.installed" ] && cmp -s tests/node/package-lock.json "$TOOLS/package-lock.json"; then
  exit 0
fi
mkdir -p "$TOOLS"
cp tests/node/package.json tests/node/package-lock.json "$TOOLS/"
(cd "$TOOLS" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)  # npm ci --prefix misreads the lock
touch "$TOOLS/.installed"
