#!/usr/bin/env bash
# Installs the Debian packages that `make test` and `make demo` need on the
# control node (a fresh Debian 12 machine, as root). Safe to run again: it only
# calls apt when something is missing.
set -euo pipefail

PACKAGES=(
  # test hosts: Docker engine and the debootstrap that builds base images offline
  docker.io debootstrap
  # the app's tests run against real servers started by the fixtures
  postgresql-15 postgresql-client-15 redis-server nginx-light
  # a real browser for the shop's pages
  chromium chromium-driver
  # the production scenario's ACME server (its binary runs in a test container)
  pebble
  # promtool and amtool: the alert rules' unit tests and config checks (tests/collection)
  prometheus prometheus-alertmanager
  # the production scenario's scans of the fleet from outside (tests/test_scans.py)
  nmap testssl.sh
  # dot: docs/architecture.svg from docs/architecture.dot (make docs, checked by make lint)
  graphviz
  # tooling (wrk: the load generator of make bench)
  make git rsync python3-venv wrk
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-system-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing packages: ${missing[*]}" >&2
  echo "install-system-deps: run as root, or install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# Debian starts services on install where an init system runs; the tests start
# their own throw-away instances, so keep the packaged ones from starting.
# A machine that already has a policy-rc.d keeps it, untouched.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
apt-get install -y -q --no-install-recommends "${missing[@]}"
