#!/usr/bin/env bash
# Installs what the tests need beyond the virtual environment: Debian's redis-server (the
# cache tests start their own on free loopback ports), openssl (TLS certificates for them)
# and Debian's chromium and chromium-driver (tests/test_browser.py drives the editor page
# with playwright pointed at /usr/bin/chromium; playwright's own browsers are never
# downloaded). Quick and silent when all are there; `make test` runs it first.
#
# As root (or with password-less sudo) it installs the Debian packages. Otherwise it
# unpacks redis-tools and its two libraries into .tools/redis (found by service/testing/redis_server.py);
# chromium cannot be unpacked that way, and the browser tests skip, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
TOOLS=.tools/redis

SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
fi
can_install() { [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; }
apt_install() {
  # another apt run (a second test setup) may hold the lock for a while: wait for it
  $SUDO apt-get -o DPkg::Lock::Timeout=300 update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1 && can_install; then
    echo "installing chromium and chromium-driver (Debian packages) for the browser tests" >&2
    apt_install chromium chromium-driver
  else
    echo "chromium is missing and cannot be installed without root: tests/test_browser.py will skip" >&2
  fi
fi

have_redis() { command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ] || [ -x "$TOOLS/bin/redis-server" ]; }
if have_redis && command -v openssl >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install redis-server (7.0 or newer) and openssl, then run the tests again" >&2
  exit 1
fi

if can_install; then
  echo "installing redis-server and openssl (Debian packages) for the tests" >&2
  apt_install redis-server openssl
  exit 0
fi

# No root: unpack the packages without installing them (redis-server is redis-check-rdb
# under another name: the binary picks its role from argv[0]).
if ! have_redis; then
  echo "unpacking redis-tools into $TOOLS for the tests" >&2
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get download -qq redis-tools libjemalloc2 liblzf1)
  mkdir -p "$TOOLS/bin"
  for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$TOOLS"; done
  ln -sf ../usr/bin/redis-check-rdb "$TOOLS/bin/redis-server"
fi
if ! command -v openssl >/dev/null 2>&1; then
  echo "openssl is missing and cannot be installed without root: install it, then run the tests again" >&2
  exit 1
fi
