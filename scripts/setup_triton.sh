#!/usr/bin/env bash
# Installs a CPU tritonserver for tests, benchmarks and local runs into .tools/triton/:
#   venv/            its own Python environment (numpy 1, onnxruntime): the Python-backend
#                    stub runs models in the first python3 on the server's PATH
#   venv/.../pytriton/tritonserver/bin/tritonserver   Triton 2.51 from the nvidia-pytriton wheel
# Idempotent: a stamp holds the hash of this script and the pins, so a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TOOLS=.tools/triton
VENV=$TOOLS/venv
STAMP=$TOOLS/.installed
PINS=requirements/triton-tools.txt
want=$(cat "$0" "$PINS" | sha256sum | cut -d' ' -f1)
if [[ -f $STAMP && $(cat "$STAMP") == "$want" ]]; then
  touch "$STAMP"  # newer than its inputs, so make does not ask again
  exit 0
fi

echo "setting up the CPU Triton server in $TOOLS" >&2
rm -rf "$TOOLS"
mkdir -p "$TOOLS"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --no-deps -r "$PINS"
version=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
server=$site/pytriton/tritonserver
stub=$server/python_backend_stubs/$version/triton_python_backend_stub
if [[ ! -f $stub ]]; then
  echo "no Python-backend stub for Python $version in nvidia-pytriton (it has: $(ls "$server/python_backend_stubs"))" >&2
  exit 1
fi
# The stub's rpath finds the wheel's bundled libraries from either folder (same depth).
cp "$stub" "$server/backends/python/"

# Shared libraries the wheel does not bundle: the stub embeds the system's libpython.
missing_libs() {
  ldd "$server/bin/tritonserver" "$server/backends/python/triton_python_backend_stub" \
    "$server/backends/python/libtriton_python.so" | awk '/not found/ {print $1}' | sort -u
}
missing=$(missing_libs)
if [[ -n $missing ]]; then
  packages=()
  for lib in $missing; do
    case $lib in
      libpython*) packages+=("lib$(echo "$lib" | sed -E 's/^lib(python[0-9]+\.[0-9]+).*/\1/')") ;;
      libexpat*) packages+=(libexpat1) ;;
      libz.so*) packages+=(zlib1g) ;;
      libnuma*) packages+=(libnuma1) ;;
      *) echo "tritonserver needs $lib and this script does not know its package" >&2; exit 1 ;;
    esac
  done
  echo "installing ${packages[*]} for tritonserver" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  missing=$(missing_libs)
  if [[ -n $missing ]]; then
    echo "tritonserver still lacks: $missing" >&2
    exit 1
  fi
fi
echo "$want" > "$STAMP"
